"""The HTTP search service (``imgsearch serve``): search by photo, vector or SKU for a backend in any language,
and a web page to try it. Needs the optional extra ``imgsearch[serve]`` (FastAPI, uvicorn, python-multipart).

Read-only: it never writes the catalogue, so it runs as a reader role (the embedded server's
``imgsearch_reader`` by default) and can point at a read replica. Every endpoint is a thin face of the
library (:mod:`imgsearch.query`, :mod:`imgsearch.embedding`), and results are the CLI's ``--format json``
records (:func:`imgsearch.output.result_dicts`).

Limits, all settable (:class:`ServiceLimits`): the size of an upload (413 beyond it), the pixel limit of
ingestion (decompression bombs are a 400), one forward pass of the network at a time per worker with a bounded
queue (503 when it is full or a request waited longer than the request timeout), and a statement timeout on the
database. Bad input is a 4xx with a one-line JSON ``{"error": ...}``; an unreachable database a 503; nothing
ever answers a traceback.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgsearch import __version__, catalogue, db, feedback, keys, output, query
from imgsearch import http_models as bodies
from imgsearch import schema as imgsearch_schema
from imgsearch.access import Gatekeeper
from imgsearch.api import Catalogue
from imgsearch.config import Settings, env_float
from imgsearch.errors import (
    BusyError,
    ConfigurationError,
    DatabaseUnavailableError,
    EmbeddingSpaceMismatchError,
    ImageError,
    ImgsearchError,
    InvalidQueryError,
    PermissionDeniedError,
    SchemaError,
    UnknownSkuError,
)
from imgsearch.fetch import Fetcher, is_url
from imgsearch.images import Crop, has_supported_extension, parse_crop
from imgsearch.metrics import Metrics
from imgsearch.urls import mask_password

log = logging.getLogger("imgsearch.service")
#: One JSON line per request (request id, key, route, status, milliseconds): ``imgsearch serve`` writes it to stderr.
access_log = logging.getLogger("imgsearch.access")
#: An X-Request-ID a client may pass (else one is made): printable, at most 128 characters.
_REQUEST_ID_MAX = 128

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Library errors and the HTTP status each one answers.
_STATUS: tuple[tuple[type[ImgsearchError], int], ...] = (
    (UnknownSkuError, 404),
    (InvalidQueryError, 400),
    (ImageError, 400),
    (EmbeddingSpaceMismatchError, 503),
    (DatabaseUnavailableError, 503),
    (SchemaError, 503),
    (PermissionDeniedError, 503),
    (BusyError, 503),
)


@dataclass(frozen=True)
class ServiceLimits:
    """What the service accepts and how long it waits (environment variables in parentheses)."""

    max_upload_bytes: int = 20 * 2**20  # IMGSEARCH_MAX_UPLOAD_BYTES
    request_timeout: float = 30.0  # IMGSEARCH_REQUEST_TIMEOUT (seconds): model queue wait and database statements
    model_queue: int = 16  # IMGSEARCH_MODEL_QUEUE: photo requests waiting for the network beyond which it is 503
    image_roots: tuple[Path, ...] = field(default_factory=tuple)  # IMGSEARCH_SERVE_IMAGE_ROOTS (os.pathsep list)
    # IMGSEARCH_CORS_ORIGINS (space-separated): web pages of these origins may call the API from the browser.
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    rate_limit: int = 0  # IMGSEARCH_RATE_LIMIT: requests a minute per API key (0: no limit)
    public: bool = False  # IMGSEARCH_SERVE_PUBLIC: listening beyond loopback, so an API key is always needed
    key_cache_seconds: float = 5.0  # IMGSEARCH_KEY_CACHE_SECONDS: how long a key check is trusted
    private_urls: bool = False  # IMGSEARCH_ALLOW_PRIVATE_URLS: image_url may point into the service's own network

    def __post_init__(self) -> None:
        for origin in self.cors_origins:
            check_origin(origin)

    @classmethod
    def from_env(cls) -> ServiceLimits:
        """The limits from the environment (what ``imgsearch serve`` passes its workers)."""
        roots = os.environ.get("IMGSEARCH_SERVE_IMAGE_ROOTS", "")
        return cls(
            max_upload_bytes=int(env_float("IMGSEARCH_MAX_UPLOAD_BYTES", cls.max_upload_bytes)),
            request_timeout=env_float("IMGSEARCH_REQUEST_TIMEOUT", cls.request_timeout),
            model_queue=int(env_float("IMGSEARCH_MODEL_QUEUE", cls.model_queue)),
            image_roots=tuple(Path(r) for r in roots.split(os.pathsep) if r),
            cors_origins=tuple(os.environ.get("IMGSEARCH_CORS_ORIGINS", "").split()),
            rate_limit=int(env_float("IMGSEARCH_RATE_LIMIT", 0)),
            public=os.environ.get("IMGSEARCH_SERVE_PUBLIC", "") == "1",
            key_cache_seconds=env_float("IMGSEARCH_KEY_CACHE_SECONDS", cls.key_cache_seconds),
            private_urls=os.environ.get("IMGSEARCH_ALLOW_PRIVATE_URLS", "") == "1",
        )


def check_origin(origin: str) -> str:
    """Return ``origin`` if it is a web origin a browser sends (``https://shop.example``, a port allowed), else
    raise :class:`ConfigurationError`: a path, a wildcard or a typo would allow nothing or too much."""
    from urllib.parse import urlsplit

    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or origin != f"{parts.scheme}://{parts.netloc}":
        raise ConfigurationError(
            f"not a web origin: {origin!r} (scheme://host[:port], nothing after it, e.g. https://shop.example)"
        )
    return origin


class ModelGate:
    """One forward pass of the network at a time, with a bounded queue of requests waiting for it.

    Decoding happens before the gate, in the request's own thread; only the network is serialised (it uses
    every core by itself, so two passes at once would only make both slower).
    """

    def __init__(self, featurizer: Any, queue: int, timeout: float) -> None:
        self.featurizer = featurizer
        self.queue = queue
        self.timeout = timeout
        self._model = threading.Lock()
        self._count = threading.Lock()
        self._waiting = 0

    @property
    def space(self) -> Any:
        """The network's embedding space (a gate stands in for the featurizer: :class:`imgsearch.Catalogue`)."""
        return self.featurizer.space

    @property
    def pipeline(self) -> Any:
        """The network's pipeline."""
        return self.featurizer.pipeline

    def embed(self, data: bytes, name: str = "upload", crop: Crop | None = None) -> np.ndarray:
        """The vector of an uploaded photo: :meth:`embed_image`."""
        return self.embed_image(_named(data, name), crop)

    def embed_image(self, source: Any, crop: Crop | None = None) -> np.ndarray:
        """The photo's vector (of its ``crop`` box, if given). Raises ImageError (bad photo or crop) or BusyError
        (queue full or waited too long)."""
        pixels = self.featurizer.pipeline.preprocessing.decode(source, crop=crop)
        with self._count:
            if self._waiting >= self.queue:
                raise BusyError(f"the service is busy ({self._waiting} photos waiting for the model); try again")
            self._waiting += 1
        try:
            if not self._model.acquire(timeout=self.timeout):
                raise BusyError(f"the model stayed busy for {self.timeout:g} s; try again")
            try:
                return self.featurizer.embed_arrays(pixels[np.newaxis])[0]
            finally:
                self._model.release()
        finally:
            with self._count:
                self._waiting -= 1


class _BodyLimit:
    """Refuses a request body over the limit with 413, whether or not it declares its length."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit, send)
            return
        received = 0
        started = False

        async def counted_receive() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracked_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _too_large(self.limit, send)


class _TooLarge(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    body = json.dumps({"error": f"the request is larger than the {limit} bytes this service accepts"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _status(exc: ImgsearchError) -> int:
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), 400)


def create_app(
    settings: Settings | None = None,
    *,
    limits: ServiceLimits | None = None,
    featurizer: Any = None,
) -> FastAPI:
    """The service's ASGI application. The engine and the network are made when it starts (or given)."""
    settings = settings or Settings.from_env()
    limits = limits or ServiceLimits.from_env()
    metrics = Metrics()
    state: dict[str, Any] = {"featurizer": featurizer, "categories": (0.0, [])}
    roots = [r.resolve() for r in (*limits.image_roots, *([settings.image_root] if settings.image_root else []))]

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        timeout_ms = int(limits.request_timeout * 1000)
        url = db.resolve_url(settings, "reader")
        # A statement that runs past the request timeout is cancelled by the server itself.
        state["engine"] = db.create_engine(
            url, schema=settings.schema, connect_args={"options": f"-c statement_timeout={timeout_ms}"}
        )
        if state["featurizer"] is None:
            from imgsearch.embedding import Featurizer

            state["featurizer"] = await run_in_threadpool(Featurizer.from_settings, settings)
        await run_in_threadpool(state["featurizer"].warm_up)
        state["gate"] = ModelGate(state["featurizer"], limits.model_queue, limits.request_timeout)
        # Shoppers' events are written to the primary even when searches read a replica (as the reader role
        # there: imgsearch_record_events is SECURITY DEFINER).
        primary = state["engine"]
        if settings.read_url:
            primary = db.create_engine(
                db.resolve_url(replace(settings, read_url=None), "reader"),
                schema=settings.schema,
                connect_args={"options": f"-c statement_timeout={timeout_ms}"},
            )
        # The library's handle, searching through the engine above and the network behind the gate.
        state["catalogue"] = Catalogue(primary, read=state["engine"], settings=settings, featurizer=state["gate"])
        yield
        state["engine"].dispose()
        primary.dispose()

    app = FastAPI(
        title="imgsearch",
        version=__version__,
        summary="Visual product search: products that look like a photo, a vector or a catalogue product.",
        lifespan=lifespan,
        dependencies=[Depends(_known_query_parameters)],
        docs_url=None,  # served below from the package's own copies: they work without internet
        redoc_url=None,
    )

    gatekeeper = Gatekeeper(
        lambda key: keys.check(state["engine"], key),
        public=limits.public,
        rate_limit=limits.rate_limit,
        cache_seconds=limits.key_cache_seconds,
    )

    @app.middleware("http")
    async def authorize(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            decision = await run_in_threadpool(
                gatekeeper.decide, request.method, request.url.path, request.headers.get("authorization")
            )
        except ImgsearchError as exc:
            return _error(_status(exc), str(exc))
        request.scope["imgsearch.key"] = decision.key
        if decision.status:
            response = _error(decision.status, decision.error)
            if decision.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            if decision.retry_after is not None:
                response.headers["Retry-After"] = str(decision.retry_after)
            return response
        return await call_next(request)

    if limits.cors_origins:
        # The shop's own pages on these origins may call the API from the browser (the preflight is answered here,
        # before the key check: a browser sends no key with it); every other origin gets no CORS header, so
        # browsers withhold the response from its pages. Inside the measuring below, so that refused preflights are
        # logged and counted too; the headers a page may want to read are exposed.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(limits.cors_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "Deprecation", "Link"],
            max_age=600,
        )

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        given = request.headers.get("x-request-id", "")
        request_id = given if 0 < len(given) <= _REQUEST_ID_MAX and given.isprintable() else uuid.uuid4().hex
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        seconds = time.perf_counter() - started
        metrics.observe(request.method, path, response.status_code, seconds)
        response.headers["X-Request-ID"] = request_id
        replacement = successor(path)
        if replacement is not None:
            response.headers["Deprecation"] = "true"
            sku = request.path_params.get("sku")
            # Percent-encoded: a SKU may hold anything a header may not (a NUL is refused later, but still answered).
            target = replacement.replace("{sku:path}", quote(sku, safe="/")) if sku is not None else replacement
            response.headers["Link"] = f'<{target}>; rel="successor-version"'
        if access_log.isEnabledFor(logging.INFO):
            entry = {
                "time": round(time.time(), 3),
                "request_id": request_id,
                "key": request.scope.get("imgsearch.key"),
                "method": request.method,
                "route": path,
                "path": request.url.path,
                "status": response.status_code,
                "ms": round(seconds * 1000, 2),
            }
            access_log.info(json.dumps(entry))
        return response

    @app.exception_handler(ImgsearchError)
    async def library_error(request: Request, exc: ImgsearchError) -> JSONResponse:
        metrics.error(getattr(request.scope.get("route"), "path", "unmatched"), type(exc).__name__)
        return _error(_status(exc), str(exc))

    @app.exception_handler(_TooLarge)
    async def too_large(_request: Request, _exc: _TooLarge) -> JSONResponse:
        return _error(413, f"the request is larger than the {limits.max_upload_bytes} bytes this service accepts")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        metrics.error(getattr(request.scope.get("route"), "path", "unmatched"), "RequestValidationError")
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        metrics.error(getattr(request.scope.get("route"), "path", "unmatched"), "internal")
        return _error(500, "internal error (logged by the service)")

    def engine() -> Any:
        return state["engine"]

    def shop() -> Catalogue:
        return state["catalogue"]

    async def upload(request: Request, most: int = 1) -> tuple[list[tuple[bytes, str]], Any]:
        """The photos of a multipart request (field ``image``, up to ``most`` of them) and the form."""
        try:
            form = await request.form(max_files=most, max_fields=64, max_part_size=limits.max_upload_bytes)
        except Exception as exc:
            if _caused_by(exc, _TooLarge):  # the body limit, met while the form was being read
                raise _TooLarge from None
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

    async def embed(data: bytes, name: str, crop: Crop | None = None) -> np.ndarray:
        return await run_in_threadpool(state["gate"].embed, data, name, crop)

    async def search_photo(photos: list[tuple[bytes, str]], form: Any) -> list[query.SearchResult]:
        """A search by one photo or several of one thing (Catalogue.search_image or search_images, the network
        behind the gate)."""
        options = _filters(
            k=form.get("k"),
            categories=form.getlist("category"),
            in_stock_only=form.get("in_stock_only"),
            max_price=form.get("max_price"),
            exclude_skus=form.getlist("exclude_sku"),
            max_distance=form.get("max_distance"),
        )
        crop = _crop(form.get("crop"))
        verify = _flag(form.get("verify"), "verify", default=True)
        if len(photos) > 1:
            if crop is not None:
                raise InvalidQueryError("crop is a box of one photo: send one photo with it")
            named = [_named(data, name) for data, name in photos]
            return await run_in_threadpool(functools.partial(shop().search_images, named, verify=verify, **options))
        ((data, name),) = photos
        search = functools.partial(shop().search_image, _named(data, name), crop=crop, verify=verify, **options)
        return await run_in_threadpool(search)

    @app.post(
        "/search",
        operation_id="search",
        response_description="the results, best first: the records of the CLI's `--format json`",
        summary="Products that look like a photo (multipart) or a vector (JSON), best first.",
        openapi_extra={"requestBody": _SEARCH_BODY},
        responses=_ERRORS,
        response_model=list[bodies.SearchResult],
    )
    async def search(request: Request) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            photos, form = await upload(request, most=query.MAX_QUERY_PHOTOS)
            return JSONResponse(output.result_dicts(await search_photo(photos, form)))
        if kind == "application/json":
            hint = 'send a JSON object with a "vector" of 512 numbers or an "image_url"'
            body = await json_object(request, "", hint)
            if "vector" not in body and "image_url" not in body:
                raise InvalidQueryError(hint)
            by_url = "vector" not in body
            _known_fields(body, bodies.UrlSearch if by_url else bodies.VectorSearch)
            options = _json_filters(body)
            if by_url:
                data = await run_in_threadpool(fetch_photo, body["image_url"])
                crop = _crop(body.get("crop"))
                verify = _flag(body.get("verify"), "verify", default=True)
                search = functools.partial(
                    shop().search_image, _named(data, "image_url"), crop=crop, verify=verify, **options
                )
                return JSONResponse(output.result_dicts(await run_in_threadpool(search)))
            vector = body["vector"]
        else:
            return _error(415, "send multipart/form-data with a photo in 'image', or application/json with 'vector'")
        results = await run_in_threadpool(shop().search, vector, **options)
        return JSONResponse(output.result_dicts(results))

    @app.post(
        "/search/many",
        operation_id="search_many",
        response_description="one list of results per vector, in the order of the vectors",
        summary="One search per vector (JSON), all answered in one database round trip.",
        openapi_extra={"requestBody": _SEARCH_MANY_BODY},
        responses=_ERRORS,
        response_model=list[list[bodies.SearchResult]],
    )
    async def search_many(request: Request) -> JSONResponse:
        body = await json_object(
            request, "vectors", f'send a JSON object with "vectors": 1 to {query.MAX_SEARCHES} lists of 512 numbers'
        )
        _known_fields(body, bodies.ManySearch)
        if not isinstance(body["vectors"], list):
            raise InvalidQueryError(f'"vectors" must be a list of 1 to {query.MAX_SEARCHES} lists of 512 numbers')
        answers = await run_in_threadpool(shop().search_many, body["vectors"], **_json_filters(body))
        return JSONResponse([output.result_dicts(results) for results in answers])

    @app.post(
        "/events",
        operation_id="record_events",
        response_description='{"stored": n, "duplicates": m}: events new, and events whose event_id was stored before',
        summary="Shoppers' impressions, clicks, carts and purchases (JSON), stored once per event_id.",
        openapi_extra={"requestBody": _EVENTS_BODY},
        responses=_ERRORS,
        response_model=bodies.Stored,
    )
    async def record_events(request: Request) -> JSONResponse:
        body = await json_object(
            request, "events", f'send a JSON object with "events": a list of 1 to {feedback.MAX_EVENTS} event objects'
        )
        _known_fields(body, bodies.EventBatch)
        if not isinstance(body["events"], list) or not body["events"]:
            raise InvalidQueryError(f'"events" must be a list of 1 to {feedback.MAX_EVENTS} event objects')
        if len(body["events"]) > feedback.MAX_EVENTS:
            raise InvalidQueryError(f"at most {feedback.MAX_EVENTS} events at once, got {len(body['events'])}")
        recorded = await run_in_threadpool(shop().record_events, body["events"])
        return JSONResponse({"stored": recorded.stored, "duplicates": recorded.duplicates})

    def fetch_photo(url: Any) -> bytes:
        """The photo at a URL a client gave: http(s) only, bounded in size and time, and (unless the operator
        allowed it) only from public addresses, so that the service cannot be made to reach its own network."""
        if not isinstance(url, str) or not is_url(url) or len(url) > 2048:
            raise InvalidQueryError("image_url must be an http:// or https:// address (at most 2048 characters)")
        timeout = min(limits.request_timeout, 10.0)
        with Fetcher(
            workers=1,
            timeout=timeout,
            retries=1,
            max_bytes=limits.max_upload_bytes,
            public_only=not limits.private_urls,
        ) as fetcher:
            fetched = fetcher.fetch(url)
        if fetched.data is None:
            raise InvalidQueryError(fetched.error or f"{url}: nothing downloaded")
        return fetched.data

    async def json_object(request: Request, required: str, hint: str) -> dict[str, Any]:
        """The JSON object of a request's body, which must hold ``required`` (else ``hint`` is the error)."""
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise InvalidQueryError("the body is not valid JSON") from None
        except RecursionError:
            raise InvalidQueryError("the JSON body is nested too deeply") from None
        if not isinstance(body, dict) or (required and required not in body):
            raise InvalidQueryError(hint)
        return body

    @app.get(
        "/products/{sku:path}/similar",
        operation_id="similar",
        response_description="the results, best first: the records of the CLI's `--format json`",
        summary="Products that look like a catalogue product.",
        responses=_ERRORS,
        response_model=list[bodies.SearchResult],
    )
    def similar(
        sku: str,
        k: Annotated[int, Query(ge=1, le=query.MAX_K)] = 8,
        category: Annotated[list[str] | None, Query()] = None,
        in_stock_only: bool = True,
        max_price: float | None = None,
        exclude_sku: Annotated[list[str] | None, Query()] = None,
        max_distance: Annotated[float | None, Query(ge=0, le=2)] = None,
    ) -> JSONResponse:
        options: dict[str, Any] = {"exclude_skus": exclude_sku} if exclude_sku else {}
        if max_distance is not None:
            options["max_distance"] = max_distance
        results = shop().similar(
            sku, k, categories=category, in_stock_only=in_stock_only, max_price=max_price, **options
        )
        return JSONResponse(output.result_dicts(results))

    @app.get(
        "/products/{sku:path}/cheaper",
        operation_id="cheaper",
        response_description="the results, best first: the records of the CLI's `--format json`",
        summary="Visually similar products, in stock and strictly cheaper (same category unless any_category).",
        responses=_ERRORS,
        response_model=list[bodies.SearchResult],
    )
    def cheaper(
        sku: str, k: Annotated[int, Query(ge=1, le=query.MAX_K)] = 8, any_category: bool = False
    ) -> JSONResponse:
        results = shop().cheaper(sku, k, same_category=not any_category)
        return JSONResponse(output.result_dicts(results))

    @app.post(
        "/embed",
        operation_id="embed",
        response_description="the vector and the embedding space it belongs to",
        summary="A photo's 512-d vector, to cache or to pass to the SQL functions.",
        openapi_extra={"requestBody": _EMBED_BODY},
        responses=_ERRORS,
        response_model=bodies.Embedding,
    )
    async def embed_photo(request: Request) -> JSONResponse:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
            return _error(415, "send multipart/form-data with a photo in 'image'")
        ((data, name),), _ = await upload(request)
        vector = await embed(data, name)
        space = state["featurizer"].space
        return JSONResponse(
            {
                "vector": [round(float(x), 8) for x in vector],
                "dimension": len(vector),
                "model": space.model_name,
                "weights_id": space.weights_id,
                "preprocessing": space.preprocessing_version,
            }
        )

    def readiness() -> tuple[int, dict[str, Any]]:
        """Whether this worker can answer searches: the model loaded, the database reachable, the schema at this
        package's revision and the catalogue's embedding space the model's. The first check that fails is the
        one-line reason of a 503, so a load balancer sends it no traffic and an operator reads what to fix."""
        gate = state.get("gate")
        if gate is None:  # first: until the model is loaded there is no engine either
            return 503, _unavailable("the model is not loaded yet")
        try:
            db.check_connection(engine())
            imgsearch_schema.require_schema(engine())
            catalogue.check_space(engine(), gate.space)
        except ImgsearchError as exc:
            return 503, _unavailable(str(exc))
        except DBAPIError as exc:  # e.g. the statement timeout: not ready either, and still one line
            translated = db.translate_error(exc)
            if translated is not exc:
                return 503, _unavailable(str(translated))
            first_line = str(exc.orig or exc).strip().partition("\n")[0]
            return 503, _unavailable(mask_password(f"database error: {first_line}"))
        return 200, {"status": "ok", "database": "ok", "schema": imgsearch_schema.head_revision(), "model": "loaded"}

    async def livez() -> JSONResponse:
        # Async and without the database: it answers while the thread pool is busy or the database is down, so
        # a liveness probe restarts the process only when the process itself has stopped answering.
        return JSONResponse({"status": "ok"})

    def readyz() -> JSONResponse:
        status, body = readiness()
        return JSONResponse(body, status_code=status)

    def healthz() -> JSONResponse:
        status, body = readiness()
        if "reason" in body:  # the key /healthz gave the reason before /readyz (this release's page reads it)
            body["error"] = body["reason"]
        return JSONResponse(body, status_code=status)

    readiness_responses = _readiness_responses(imgsearch_schema.head_revision())
    _probe(
        app,
        "/livez",
        livez,
        summary="Liveness: 200 whenever the process answers (no database call).",
        response_description="the process answers",
        responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
        response_model=bodies.Liveness,
    )
    _probe(
        app,
        "/readyz",
        readyz,
        summary="Readiness: database reachable, schema at this version's revision, embedding space the model's, "
        "model loaded; 503 with the reason otherwise.",
        response_description="ready to answer searches",
        responses=readiness_responses,
        response_model=bodies.Readiness,
    )
    _probe(
        app,
        "/healthz",
        healthz,
        summary="Deprecated (use /readyz; removed in the next release): the same checks and status as /readyz, "
        'with the reason also as "error".',
        response_description="ready to answer searches",
        responses=readiness_responses,
        response_model=bodies.Readiness,
        deprecated=True,
    )

    @app.get(
        "/metrics",
        operation_id="metrics",
        summary="Requests, latency and errors in Prometheus' text format.",
        response_description="the metrics of this worker (each worker reports its own)",
        response_class=PlainTextResponse,
    )
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get(
        "/categories",
        operation_id="categories",
        summary="The catalogue's categories and their product counts (for the page).",
        response_description="each category and how many products it has (refreshed at most once a minute)",
        responses={
            200: {"content": {"application/json": {"example": [{"category": "shoes", "products": 12}]}}},
            503: {**_ERRORS[503], "description": "database unreachable or schema not migrated"},
        },
        response_model=list[bodies.CategoryCount],
    )
    def categories() -> JSONResponse:
        cached_at, cached = state["categories"]
        if time.monotonic() - cached_at > 60:
            cached = [{"category": c, "products": n} for c, (n, _) in shop().stats().by_category.items()]
            state["categories"] = (time.monotonic(), cached)
        return JSONResponse(cached)

    @app.get(
        "/photos",
        operation_id="photo",
        summary="A catalogue photo stored as a file under the service's image roots.",
        response_description="the photo file",
        responses={404: {**_ERRORS[404], "description": "no such photo under the service's image roots"}},
    )
    def photo(ref: str) -> FileResponse:
        found = _inside_roots(ref, roots)
        if found is None or not has_supported_extension(found):  # photos only, not every file under a root
            raise StarletteHTTPException(404, "no such photo under the service's image roots")
        return FileResponse(found)

    web = files("imgsearch.web")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((web / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        suffix = Path(name).suffix
        if "/" in name or suffix not in kinds or not (web / name).is_file():
            raise StarletteHTTPException(404, "not found")
        return Response((web / name).read_bytes(), media_type=kinds[suffix])

    _offline_docs(app)
    _version_routes(app)
    wrapped = _BodyLimit(app, limits.max_upload_bytes + 64 * 1024)  # room for the form around the photo
    wrapped.fastapi = app  # type: ignore[attr-defined]  (tests and tools reach the app through it)
    return wrapped  # type: ignore[return-value]


#: The files of the interactive API documentation (Swagger UI and ReDoc, from the ``fastapi-offline`` package).
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
#: The documentation pages may load nothing from anywhere else (ReDoc's footer logo and Swagger UI's validator
#: badge would come from their makers' sites): scripts, styles and pictures are the service's own.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'"
)


def _offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their scripts served by the service itself: FastAPI's own pages
    load them from a CDN, which leaves them blank on a network without internet and sends every visitor's address
    to a third party."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    assets = files("fastapi_offline") / "static"

    def base(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}/docs/assets"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{base(request)}/swagger-ui-bundle.js",
            swagger_css_url=f"{base(request)}/swagger-ui.css",
            swagger_favicon_url=f"{base(request)}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} API",
            redoc_js_url=f"{base(request)}/redoc.standalone.js",
            redoc_favicon_url=f"{base(request)}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        if name not in DOCS_ASSETS:
            raise StarletteHTTPException(404, "not found")
        headers = {"Cache-Control": "public, max-age=86400"}
        return Response((assets / name).read_bytes(), media_type=DOCS_ASSETS[name], headers=headers)


def _unavailable(reason: str) -> dict[str, str]:
    """The body of a failed readiness check: one line, whatever the library's message looked like."""
    return {"status": "unavailable", "reason": " ".join(reason.split())}


def _probe(app: FastAPI, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
    """A probe answers GET and HEAD (what load balancers and Docker send). Registered as one route per method, so
    that each method is its own OpenAPI operation with its own operationId (``livez``, ``livez_head``)."""
    name = path.strip("/")
    app.add_api_route(path, endpoint, methods=["GET"], operation_id=name, **options)
    app.add_api_route(path, endpoint, methods=["HEAD"], operation_id=f"{name}_head", **options)


def _named(data: bytes, name: str) -> io.BytesIO:
    stream = io.BytesIO(data)
    stream.name = name  # type: ignore[attr-defined]  (error messages name the upload)
    return stream


def _crop(value: Any) -> Crop | None:
    """A form's ``crop`` field, ``left,top,right,bottom`` in pixels of the photo."""
    return None if value in (None, "") else parse_crop(value)


def _flag(value: Any, name: str, default: bool) -> bool:
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes", "on"):
        return True
    if str(value).lower() in ("false", "0", "no", "off"):
        return False
    raise InvalidQueryError(f"{name} must be true or false, got {str(value)[:20]!r}")


def _filters(
    *, k: Any, categories: Any, in_stock_only: Any, max_price: Any, exclude_skus: Any = None, max_distance: Any = None
) -> dict[str, Any]:
    """Search options from form fields or JSON values, checked like the library checks them."""
    options: dict[str, Any] = {}
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
        options["in_stock_only"] = _flag(in_stock_only, "in_stock_only", default=True)
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


def _known_fields(body: dict[str, Any], model: type[Any]) -> None:
    """Refuse (422) a JSON field the endpoint does not take (``in_stock`` for ``in_stock_only``): ignored, it
    would answer another question than the one asked. The fields are the request model's
    (:mod:`imgsearch.http_models`)."""
    known = bodies.request_fields(model)
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestValidationError(
            [{"loc": ("body", unknown[0]), "msg": f"unknown field (this request takes: {', '.join(sorted(known))})"}]
        )


def _json_filters(body: dict[str, Any]) -> dict[str, Any]:
    """Search options from a JSON body (``category`` or ``categories``: a text or a list of texts)."""
    categories = body.get("category", body.get("categories"))
    return _filters(
        k=body.get("k"),
        categories=[categories] if isinstance(categories, str) else categories,
        in_stock_only=body.get("in_stock_only"),
        max_price=body.get("max_price"),
        exclude_skus=body.get("exclude_skus"),
        max_distance=body.get("max_distance"),
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
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


def _inside_roots(ref: str, roots: list[Path]) -> Path | None:
    """The file ``ref`` names if it lies inside one of ``roots`` (after resolving links and ``..``), else None."""
    if not ref or "\0" in ref:
        return None
    candidate = Path(ref)
    for root in roots:
        path = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if path.is_relative_to(root) and path.is_file():
            return path
    return None


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "model": bodies.Error,
        "content": {"application/json": {"example": {"error": "one line saying what is wrong"}}},
    }
    for status, description in (
        (400, "bad input: a bad vector, photo, k or price"),
        (404, "unknown SKU"),
        (413, "upload too large"),
        (415, "wrong content type"),
        (422, "a parameter of the wrong type"),
        (503, "database unreachable, schema not migrated, or the model busy"),
    )
}


def _readiness_responses(revision: str) -> dict[int | str, dict[str, Any]]:
    """The documented answers of /readyz and /healthz (the example names this package's schema revision)."""
    ready = {"status": "ok", "database": "ok", "schema": revision, "model": "loaded"}
    unready = {
        "status": "unavailable",
        "reason": "the database has no imgsearch schema yet: run `imgsearch db upgrade`",
    }
    return {
        200: {"content": {"application/json": {"example": ready}}},
        503: {
            "description": "not ready: the model not loaded, the database unreachable, the schema not at this "
            "version's revision, or the catalogue built with another embedding space",
            "model": bodies.Readiness,
            "content": {"application/json": {"example": unready}},
        },
    }


_FILTER_PROPERTIES = {
    "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 8},
    "category": {"type": "array", "items": {"type": "string"}, "description": "only these categories"},
    "in_stock_only": {"type": "boolean", "default": True},
    "max_price": {"type": "number", "minimum": 0, "description": "price ceiling, inclusive"},
}
_SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "minItems": 1,
                        "maxItems": query.MAX_QUERY_PHOTOS,
                        "description": "the photo, or up to 5 photos of one thing (the field repeated)",
                    },
                    **_FILTER_PROPERTIES,
                    "exclude_sku": {"type": "array", "items": {"type": "string"}, "description": "SKUs never returned"},
                    "max_distance": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 2,
                        "description": "only results this close (cosine distance); verified matches always kept",
                    },
                    "crop": {
                        "type": "string",
                        "description": "Search only this box of the photo: left,top,right,bottom in its pixels.",
                        "example": "120,80,900,1100",
                    },
                    "verify": {
                        "type": "boolean",
                        "default": True,
                        "description": "Check the nearest products with local features: the ones the photo shows "
                        'come first with match "exact"; false ranks by the global vector only.',
                    },
                },
            }
        },
        "application/json": {
            "schema": {"oneOf": [bodies.json_schema(bodies.VectorSearch), bodies.json_schema(bodies.UrlSearch)]}
        },
    },
}
_SEARCH_MANY_BODY = {
    "required": True,
    "content": {"application/json": {"schema": bodies.json_schema(bodies.ManySearch)}},
}
_EVENTS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": bodies.json_schema(bodies.EventBatch),
            "example": {
                "events": [
                    {"event_id": "e1", "kind": "impression", "search_id": "s1", "sku": "shoes-1", "rank": 1},
                    {"event_id": "e2", "kind": "click", "search_id": "s1", "sku": "shoes-1", "rank": 1},
                ]
            },
        }
    },
}
_EMBED_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"}},
            }
        }
    },
}


#: The API's stable prefix: every search endpoint answers under it; its old path answers for one release more.
API_PREFIX = "/v1"
#: Endpoints of the API proper (not the probes, metrics or the page's helpers), by their unversioned path.
VERSIONED = (
    "/search",
    "/search/many",
    "/events",
    "/embed",
    "/products/{sku:path}/similar",
    "/products/{sku:path}/cheaper",
)


def _version_routes(app: FastAPI) -> None:
    """Serve each API endpoint under :data:`API_PREFIX` too; the old path stays for one release, marked deprecated
    in the API description and answered with ``Deprecation`` and ``Link`` headers (added by the service)."""
    for route in list(app.routes):
        if isinstance(route, APIRoute) and route.path in VERSIONED:
            app.add_api_route(
                API_PREFIX + route.path,
                route.endpoint,
                methods=sorted(route.methods or ()),
                operation_id=route.operation_id,
                summary=route.summary,
                response_description=route.response_description,
                responses=route.responses,
                openapi_extra=route.openapi_extra,
                response_model=route.response_model,
            )
            route.operation_id = f"{route.operation_id}_unversioned"
            route.deprecated = True
            route.summary = f"Deprecated (use {API_PREFIX}{route.path.replace(':path', '')}): {route.summary}"


def successor(route_path: str) -> str | None:
    """The versioned path that replaces a deprecated one (``None``: not deprecated)."""
    return API_PREFIX + route_path if route_path in VERSIONED else None


def _known_query_parameters(request: Request) -> None:
    """Refuse (422) a query parameter the endpoint does not take: a typo (``?in_stock=false`` for
    ``in_stock_only``) would otherwise be ignored and answer a different question than the one asked. The page and
    its files take anything (links carry tracking parameters)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not getattr(route, "include_in_schema", True) or getattr(route, "path", "") == "/":
        return
    known = {param.alias for param in dependant.query_params}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [{"loc": ("query", unknown[0]), "msg": f"unknown parameter (this endpoint takes: {accepted})"}]
        )


def app_from_env() -> Any:
    """The application configured by the environment: the factory ``imgsearch serve`` gives uvicorn (with the
    access log on stderr, one JSON line per request, unless IMGSEARCH_ACCESS_LOG=0)."""
    if os.environ.get("IMGSEARCH_ACCESS_LOG", "1") != "0" and not access_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
    return create_app()
