"""Checks that every value from outside (CSV files, folder names, API and SQL callers) passes before the database
sees it, so that a bad value is one precise error about that value, never a database traceback or a silent
change of meaning.

The limits mirror the schema (:mod:`imgsearch.tables`); the database enforces them too, as a last line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

from imgsearch.errors import InvalidProductError, InvalidQueryError
from imgsearch.tables import (
    CATEGORY_MAX_LENGTH,
    DESCRIPTION_MAX_LENGTH,
    DIMENSION,
    IMAGE_MAX_LENGTH,
    MAX_PRICE,
    NAME_MAX_LENGTH,
    PAGE_URL_MAX_LENGTH,
    SHOP_PRODUCT_ID_MAX_LENGTH,
    SKU_MAX_LENGTH,
)

_TRUE = {"true", "t", "yes", "y", "1", "in", "in stock", "in_stock"}
_FALSE = {"false", "f", "no", "n", "0", "out", "out of stock", "out_of_stock", "sold out"}
_CENT = Decimal("0.01")


def parse_bool(value: str) -> bool:
    """Read an in-stock flag as shops write them (true/false, yes/no, 1/0, in/out of stock)."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"in_stock must be true or false, got {_shorten(value)!r}")


#: A price as a feed writes it: ASCII digits, optionally a point and decimals (no sign, exponent, grouping or
#: full-width digits: "1_000", "1,000", "1e3" and "\uff11\uff12" are refused rather than read as something else).
_PRICE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)  # a minus: refused by the range check


def parse_price(value: str) -> Decimal | None:
    """Read a price: empty means unknown; otherwise a number from 0 to :data:`MAX_PRICE` with at most 2 decimals,
    written with ASCII digits and a decimal point (``12``, ``12.5``, ``12.50``).

    More decimals are refused rather than rounded: 0.005 is not a price the shop can charge.
    """
    text = value.strip()
    if not text:
        return None
    if not _PRICE.fullmatch(text):
        raise ValueError(f"price must be a number like 12.50 (digits and a decimal point), got {_shorten(value)!r}")
    try:
        price = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"price must be a number, got {_shorten(value)!r}") from None
    if not price.is_finite() or price < 0 or price > MAX_PRICE:
        raise ValueError(f"price must be between 0 and {MAX_PRICE}, got {_shorten(value)!r}")
    if price != price.quantize(_CENT, rounding="ROUND_DOWN"):
        raise ValueError(f"price must have at most 2 decimals, got {_shorten(value)!r}")
    return price.quantize(_CENT)


def price_limit(value: object, what: str) -> Decimal | None:
    """A price filter (``max_price``, ``below_price``): ``None``, or a finite number >= 0.

    A limit above every storable price means no limit, so it is capped at :data:`MAX_PRICE` (the answer is the
    same, and the database never sees an out-of-range number).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidQueryError(f"{what} must be a number, got {value!r}")
    try:
        limit = Decimal(str(value).strip())
    except (ArithmeticError, ValueError):
        raise InvalidQueryError(f"{what} must be a number, got {_shorten(str(value))!r}") from None
    if not limit.is_finite() or limit < 0:
        raise InvalidQueryError(f"{what} must be a non-negative number, got {_shorten(str(value))!r}")
    return min(limit, MAX_PRICE)


def text_problem(value: str) -> str | None:
    """Why PostgreSQL cannot take ``value`` as text (a NUL character; lone surrogates: bytes that were not UTF-8
    read with ``surrogateescape``), or ``None``."""
    if "\x00" in value:
        return "contains a NUL character"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return "is not valid UTF-8"
    return None


def check_text(value: object, what: str, max_length: int, *, required: bool) -> str | None:
    """``value`` as the database will store it, or :class:`InvalidProductError` saying what is wrong with it."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidProductError(f"missing {what}")
        return None
    if not isinstance(value, str):
        raise InvalidProductError(f"{what} must be text, got {type(value).__name__}")
    if problem := text_problem(value):
        raise InvalidProductError(f"{what} {problem}")
    if len(value) > max_length:
        raise InvalidProductError(f"{what} is {len(value)} characters long, the limit is {max_length}")
    return value


_PAGE_URL = re.compile(r"^https?://\S+$")


def check_shop_fields(shop_product_id: object, page_url: object) -> tuple[str | None, str | None]:
    """The shop's own product id and page address as a write takes them: ``None`` (keep the stored value), ``""``
    (blank: clear it) or the checked value; or :class:`InvalidProductError`."""
    product_id = check_text(shop_product_id, "shop_product_id", SHOP_PRODUCT_ID_MAX_LENGTH, required=False)
    url = check_text(page_url, "page_url", PAGE_URL_MAX_LENGTH, required=False)
    if url is not None and not _PAGE_URL.match(url):
        raise InvalidProductError(f"page_url must be an http:// or https:// address, got {url[:60]!r}")
    return (
        "" if shop_product_id is not None and product_id is None else product_id,
        "" if page_url is not None and url is None else url,
    )


def check_description(description: object) -> str | None:
    """A product's description as a write takes it: ``None`` (keep the stored one), ``""`` (clear it) or the
    checked text; or :class:`InvalidProductError`."""
    text = check_text(description, "description", DESCRIPTION_MAX_LENGTH, required=False)
    return "" if description is not None and text is None else text


def check_product_fields(
    sku: object, category: object, name: object = None, image: object = None, price: object = None
) -> None:
    """Raise :class:`InvalidProductError` unless these product fields can be stored as they are."""
    check_text(sku, "sku", SKU_MAX_LENGTH, required=True)
    check_text(category, "category", CATEGORY_MAX_LENGTH, required=True)
    check_text(name, "name", NAME_MAX_LENGTH, required=False)
    check_text(image, "image", IMAGE_MAX_LENGTH, required=False)
    if price is not None:
        if not isinstance(price, Decimal | int | float) or isinstance(price, bool):
            raise InvalidProductError(f"price must be a number, got {price!r}")
        try:
            # In fixed-point notation: Decimal("1E+2") and 1e2 are the price 100.
            parse_price(format(Decimal(str(price)), "f"))
        except (ValueError, ArithmeticError) as exc:
            raise InvalidProductError(str(exc)) from None


def unit_vector(vector: Sequence[float] | np.ndarray, what: str = "the query vector") -> np.ndarray:
    """``vector`` scaled to length 1, as float32: what cosine distance sees, computed without overflow.

    Cosine distance ignores length, so scaling changes no answer; it keeps vectors such as ``[1e38] * 512`` or
    ``[1e-45, 0, ...]`` (whose squared length overflows or underflows float32) from turning into NaN distances.

    Raises:
        InvalidQueryError: not 512 finite numbers, or no direction (all zeros).
    """
    try:
        array = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidQueryError(f"{what} must be a sequence of numbers") from None
    if array.shape != (DIMENSION,):
        raise InvalidQueryError(f"{what} must have shape ({DIMENSION},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InvalidQueryError(f"{what} contains NaN or infinite values")
    # float64 cannot overflow on finite float32 input; scale first so that tiny values do not underflow.
    scale = np.max(np.abs(array))
    if scale == 0 or not np.isfinite(scale):
        raise InvalidQueryError(f"{what} is all zeros (no direction)")
    scaled = array / scale
    unit = scaled / np.linalg.norm(scaled)
    result = unit.astype(np.float32)
    if not np.any(result):
        raise InvalidQueryError(f"{what} is all zeros (no direction)")
    return result


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
