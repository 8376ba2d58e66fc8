"""The HTTP search service (``imgsearch serve``): search by photo, vector or SKU for a backend in any language,
and a web page to try it. Needs the optional extra ``imgsearch[serve]`` (FastAPI, uvicorn, python-multipart).

Read-only: it never writes the catalogue, so it runs as a reader role (the embedded server's
``imgsearch_reader`` by default) and can point at a read replica. Every endpoint is a thin face of the
library (:class:`imgsearch.Catalogue`), and results are the CLI's ``--format json`` records
(:func:`imgsearch.output.result_dicts`). The endpoints live in :mod:`imgsearch.routes`, one router per job; this
module assembles them with what every request goes through: the API keys and budgets, CORS, the access log and
metrics, the body limit, and the answer to every error.

Limits, all settable (:class:`ServiceLimits`): the size of an upload (413 beyond it), the pixel limit of
ingestion (decompression bombs are a 400), one forward pass of the network at a time per worker with a bounded
queue (503 when it is full or a request waited longer than the request timeout), and a statement timeout on the
database. Bad input is a 4xx with a one-line JSON ``{"error": ...}``; an unreachable database a 503; nothing
ever answers a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgsearch import __version__, catalogue, db, keys
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
from imgsearch.images import Crop
from imgsearch.routes import events, page, probes, search
from imgsearch.routes.requests import TooLarge, TooSlow, named
from imgsearch.routes.runtime import Runtime

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
        return self.embed_image(named(data, name), crop)

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
    """Refuses a request body over the limit with 413, whether or not it declares its length, and one that has not
    all arrived ``deadline`` seconds after its headers with 408."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int, deadline: float) -> None:
        self.app = app
        self.limit = limit
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _refuse(send, 413, f"the request is larger than the {self.limit} bytes this service accepts")
            return
        received = 0
        started = False
        complete = False
        loop = asyncio.get_running_loop()
        until = loop.time() + self.deadline

        async def counted_receive() -> MutableMapping[str, Any]:
            nonlocal received, complete
            if complete:  # the body is in: what follows is the wait for a disconnect, not bounded here
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(until - loop.time(), 0.0))
            except TimeoutError:
                raise TooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise TooLarge
                complete = not message.get("more_body", False)
            return message

        async def tracked_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except TooLarge:
            if not started:
                await _refuse(send, 413, f"the request is larger than the {self.limit} bytes this service accepts")
        except TooSlow:
            if not started:
                await _refuse(send, 408, _too_slow(self.deadline))


def _too_slow(deadline: float) -> str:
    return f"the request body did not arrive within {deadline:g} s"


async def _refuse(send: Send, status: int, message: str) -> None:
    """Answer a request refused before the application saw it (a JSON error line, the connection closed)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
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
    roots = [r.resolve() for r in (*limits.image_roots, *([settings.image_root] if settings.image_root else []))]
    state = Runtime(settings=settings, limits=limits, roots=roots, featurizer=featurizer)
    metrics = state.metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        timeout_ms = int(limits.request_timeout * 1000)
        url = db.resolve_url(settings, "reader")
        # A statement that runs past the request timeout is cancelled by the server itself.
        state.engine = db.create_engine(
            url, schema=settings.schema, connect_args={"options": f"-c statement_timeout={timeout_ms}"}
        )
        if state.featurizer is None:
            from imgsearch.embedding import Featurizer

            try:  # the catalogue's own pipeline (imgsearch reembed may have moved it from the settings')
                pipeline = await run_in_threadpool(catalogue.pipeline_in_use, state.engine, settings.pipeline)
            except ImgsearchError:  # not reachable yet: the readiness probe says so, and the space check per search
                pipeline = settings.pipeline
            state.featurizer = await run_in_threadpool(Featurizer.from_settings, settings, pipeline)
        await run_in_threadpool(state.featurizer.warm_up)
        state.gate = ModelGate(state.featurizer, limits.model_queue, limits.request_timeout)
        # Shoppers' events are written to the primary even when searches read a replica (as the reader role
        # there: imgsearch_record_events is SECURITY DEFINER).
        primary = state.engine
        if settings.read_url:
            primary = db.create_engine(
                db.resolve_url(replace(settings, read_url=None), "reader"),
                schema=settings.schema,
                connect_args={"options": f"-c statement_timeout={timeout_ms}"},
            )
        # The library's handle, searching through the engine above and the network behind the gate.
        state.catalogue = Catalogue(primary, read=state.engine, settings=settings, featurizer=state.gate)
        yield
        state.engine.dispose()
        primary.dispose()

    app = FastAPI(
        title="imgsearch",
        version=__version__,
        summary="Visual product search: products that look like a photo, a vector or a catalogue product.",
        lifespan=lifespan,
        dependencies=[Depends(_known_query_parameters)],
        docs_url=None,  # served by routes.page from the package's own copies: they work without internet
        redoc_url=None,
    )
    app.state.runtime = state

    gatekeeper = Gatekeeper(
        lambda key: keys.check(state.engine, key),
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

    @app.exception_handler(TooLarge)
    async def too_large(_request: Request, _exc: TooLarge) -> JSONResponse:
        return _error(413, f"the request is larger than the {limits.max_upload_bytes} bytes this service accepts")

    @app.exception_handler(TooSlow)
    async def too_slow(_request: Request, _exc: TooSlow) -> JSONResponse:
        response = _error(408, _too_slow(limits.request_timeout))
        response.headers["Connection"] = "close"
        return response

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

    for router in (search.router, events.router):
        _include_versioned(app, router)
    for router in (probes.router, page.router):
        app.include_router(router)
    # Room for the form around the photo; the body within the request timeout of its headers.
    wrapped = _BodyLimit(app, limits.max_upload_bytes + 64 * 1024, limits.request_timeout)
    wrapped.fastapi = app  # type: ignore[attr-defined]  (tests and tools reach the app through it)
    return wrapped  # type: ignore[return-value]


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


def _include_versioned(app: FastAPI, router: APIRouter) -> None:
    """Serve a router's endpoints (the API proper) under :data:`API_PREFIX`; each old path stays for one release,
    marked deprecated in the API description (its operationId ``..._unversioned``) and answered with
    ``Deprecation`` and ``Link`` headers (added by the service)."""
    current, legacy = APIRouter(), APIRouter()
    for route in router.routes:
        if not isinstance(route, APIRoute) or route.path not in VERSIONED:
            raise ValueError(f"{getattr(route, 'path', route)} is not one of the API's versioned endpoints")
        options: dict[str, Any] = {
            "methods": sorted(route.methods or ()),
            "response_description": route.response_description,
            "responses": route.responses,
            "openapi_extra": route.openapi_extra,
            "response_model": route.response_model,
        }
        current.add_api_route(
            API_PREFIX + route.path, route.endpoint, operation_id=route.operation_id, summary=route.summary, **options
        )
        legacy.add_api_route(
            route.path,
            route.endpoint,
            operation_id=f"{route.operation_id}_unversioned",
            summary=f"Deprecated (use {API_PREFIX}{route.path.replace(':path', '')}): {route.summary}",
            deprecated=True,
            **options,
        )
    app.include_router(current)
    app.include_router(legacy)


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
