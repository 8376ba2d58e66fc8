"""Reading a request: its JSON object, its uploaded photos, its search options, checked the way the library
checks them, with one-line errors (:class:`~imgsearch.errors.InvalidQueryError` is a 400)."""

from __future__ import annotations

import io
import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgsearch import attributes, http_models, query
from imgsearch.errors import InvalidQueryError
from imgsearch.images import Crop, parse_crop


class TooLarge(Exception):
    """A request body over the service's limit (answered 413)."""


class TooSlow(Exception):
    """A request body that did not arrive within the request timeout (answered 408): a client trickling its
    upload would otherwise hold a connection and its form parser for as long as it likes."""


async def json_object(request: Request, required: str, hint: str) -> dict[str, Any]:
    """The JSON object of a request's body, which must hold ``required`` (else ``hint`` is the error)."""
    try:
        raw = await request.body()
    except Exception as exc:
        _reraise_limit(exc)
        raise
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidQueryError("the body is not valid JSON") from None
    except RecursionError:
        raise InvalidQueryError("the JSON body is nested too deeply") from None
    if not isinstance(body, dict) or (required and required not in body):
        raise InvalidQueryError(hint)
    return body


async def upload(request: Request, max_bytes: int, most: int = 1) -> tuple[list[tuple[bytes, str]], Any]:
    """The photos of a multipart request (field ``image``, up to ``most`` of them, each at most ``max_bytes``) and
    the form."""
    try:
        form = await request.form(max_files=most, max_fields=64, max_part_size=max_bytes)
    except Exception as exc:
        _reraise_limit(exc)
        detail = exc.detail if isinstance(exc, StarletteHTTPException) else exc
        raise InvalidQueryError(f"cannot read the form: {detail}") from None
    images = form.getlist("image")
    if not images or not all(isinstance(image, UploadFile) for image in images):
        raise InvalidQueryError("send the photo as a file in the multipart field 'image'")
    photos = []
    for image in images:
        data = await image.read()
        if not data:
            raise InvalidQueryError("the photo is empty")
        photos.append((data, image.filename or "upload"))
    return photos, form


def _reraise_limit(exc: BaseException) -> None:
    """Raise the body's limit (:class:`TooLarge`, :class:`TooSlow`) that ``exc`` wraps, if any: met while the
    body was being read, it may come back inside the middleware's exception groups."""
    for limit in (TooLarge, TooSlow):
        if caused_by(exc, limit):
            raise limit from None


def named(data: bytes, name: str) -> io.BytesIO:
    """Uploaded bytes as a file object whose name error messages can give."""
    stream = io.BytesIO(data)
    stream.name = name  # type: ignore[attr-defined]
    return stream


def crop_field(value: Any) -> Crop | None:
    """A ``crop`` field, ``left,top,right,bottom`` in pixels of the photo."""
    return None if value in (None, "") else parse_crop(value)


def flag(value: Any, name: str, default: bool) -> bool:
    """A true/false field of a form or a JSON body."""
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes", "on"):
        return True
    if str(value).lower() in ("false", "0", "no", "off"):
        return False
    raise InvalidQueryError(f"{name} must be true or false, got {str(value)[:20]!r}")


def filters(
    *,
    k: Any,
    categories: Any,
    in_stock_only: Any,
    max_price: Any,
    exclude_skus: Any = None,
    max_distance: Any = None,
    offset: Any = None,
    cursor: Any = None,
    search_space: Any = None,
    where: Any = None,
) -> dict[str, Any]:
    """Search options from form fields or JSON values, checked like the library checks them."""
    options: dict[str, Any] = {}
    if where not in (None, "", [], [""]):
        options["filters"] = where_filters(where)
    if offset not in (None, ""):
        try:
            options["offset"] = offset if isinstance(offset, int) else int(str(offset))
        except ValueError:
            raise InvalidQueryError(f"offset must be an integer from 0 to {query.MAX_K - 1}") from None
    if cursor not in (None, ""):
        options["cursor"] = cursor
    if search_space not in (None, ""):
        options["search_space"] = search_space
    if exclude_skus:
        if not isinstance(exclude_skus, list) or not all(isinstance(e, str) for e in exclude_skus):
            raise InvalidQueryError("exclude_skus must be a list of SKUs")
        options["exclude_skus"] = exclude_skus
    if k not in (None, ""):
        try:
            options["k"] = int(str(k))
        except ValueError:
            raise InvalidQueryError(f"k must be an integer between 1 and {query.MAX_K}, got {str(k)[:20]!r}") from None
    if categories:
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise InvalidQueryError("category must be text, or a list of texts")
        options["categories"] = categories
    if in_stock_only not in (None, ""):
        options["in_stock_only"] = flag(in_stock_only, "in_stock_only", default=True)
    if max_price not in (None, ""):
        options["max_price"] = max_price
    if max_distance not in (None, ""):
        if isinstance(max_distance, str):  # a form field
            try:
                max_distance = float(max_distance)
            except ValueError:
                message = f"max_distance must be a number from 0 to 2, got {max_distance[:20]!r}"
                raise InvalidQueryError(message) from None
        options["max_distance"] = max_distance
    return options


def where_filters(where: Any) -> dict[str, Any] | None:
    """``where``: attribute filters as a JSON object (:mod:`imgsearch.attributes`), or conditions as the CLI's
    ``--where`` writes them (a list of texts: form fields and query parameters repeated)."""
    if isinstance(where, dict):
        return where
    conditions = [where] if isinstance(where, str) else where
    if isinstance(conditions, list):
        conditions = [c for c in conditions if c != ""]  # an empty form field says nothing, as elsewhere
    if not isinstance(conditions, list) or not all(isinstance(c, str) for c in conditions):
        raise InvalidQueryError(
            'where must be a JSON object such as {"brand": "Acme", "rating": {">=": 4}}, or conditions such as '
            '"brand=Acme"'
        )
    return attributes.parse_where(conditions)


def text_options(text: Any, text_filter: Any, text_weight: Any) -> dict[str, Any]:
    """A search's words (``text``), whether they filter instead of ranking, and their weight in the ranking, from
    form fields or JSON values."""
    if text in (None, ""):
        return {}
    if not isinstance(text, str):
        raise InvalidQueryError("text must be the words to search for")
    options: dict[str, Any] = {"text": text, "text_filter": flag(text_filter, "text_filter", default=False)}
    if text_weight not in (None, ""):
        try:
            options["text_weight"] = text_weight if isinstance(text_weight, int | float) else float(str(text_weight))
        except ValueError:
            raise InvalidQueryError(
                f"text_weight must be a number from 0 to 1, got {str(text_weight)[:20]!r}"
            ) from None
    return options


def form_filters(form: Any) -> dict[str, Any]:
    """Search options from a multipart form (``category`` and ``exclude_sku`` repeated)."""
    return filters(
        k=form.get("k"),
        categories=form.getlist("category"),
        in_stock_only=form.get("in_stock_only"),
        max_price=form.get("max_price"),
        exclude_skus=form.getlist("exclude_sku"),
        max_distance=form.get("max_distance"),
        offset=form.get("offset"),
        cursor=form.get("cursor"),
        search_space=form.get("search_space"),
        where=form.getlist("where"),
    )


def json_filters(body: dict[str, Any]) -> dict[str, Any]:
    """Search options from a JSON body (``category`` or ``categories``: a text or a list of texts)."""
    categories = body.get("category", body.get("categories"))
    return filters(
        k=body.get("k"),
        categories=[categories] if isinstance(categories, str) else categories,
        in_stock_only=body.get("in_stock_only"),
        max_price=body.get("max_price"),
        exclude_skus=body.get("exclude_skus"),
        max_distance=body.get("max_distance"),
        offset=body.get("offset"),
        cursor=body.get("cursor"),
        search_space=body.get("search_space"),
        where=body.get("where"),
    )


def known_fields(body: dict[str, Any], model: type[Any]) -> None:
    """Refuse (422) a JSON field the endpoint does not take (``in_stock`` for ``in_stock_only``): ignored, it
    would answer another question than the one asked. The fields are the request model's
    (:mod:`imgsearch.http_models`)."""
    known = http_models.request_fields(model)
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestValidationError(
            [{"loc": ("body", unknown[0]), "msg": f"unknown field (this request takes: {', '.join(sorted(known))})"}]
        )


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` is, wraps (exception groups of task groups) or was caused by a ``kind``."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False
