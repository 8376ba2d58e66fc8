"""Liveness, readiness and metrics: what a load balancer, an orchestrator and a monitoring system ask."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.exc import DBAPIError

from imgsearch import catalogue, db, http_models
from imgsearch import schema as imgsearch_schema
from imgsearch.errors import ImgsearchError
from imgsearch.routes.openapi import readiness_responses
from imgsearch.routes.runtime import Runtime, runtime
from imgsearch.urls import mask_password

router = APIRouter()

State = Annotated[Runtime, Depends(runtime)]


def _unavailable(reason: str) -> dict[str, str]:
    """The body of a failed readiness check: one line, whatever the library's message looked like."""
    return {"status": "unavailable", "reason": " ".join(reason.split())}


def readiness(state: Runtime) -> tuple[int, dict[str, Any]]:
    """Whether this worker can answer searches: the model loaded, the database reachable, the schema at this
    package's revision and the catalogue's embedding space the model's. The first check that fails is the
    one-line reason of a 503, so a load balancer sends it no traffic and an operator reads what to fix."""
    if state.gate is None:  # first: until the model is loaded there is no engine either
        return 503, _unavailable("the model is not loaded yet")
    try:
        db.check_connection(state.engine)
        imgsearch_schema.require_schema(state.engine)
        catalogue.check_space(state.engine, state.gate.space)
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
    # Async and without the database: it answers while the thread pool is busy or the database is down, so a
    # liveness probe restarts the process only when the process itself has stopped answering.
    return JSONResponse({"status": "ok"})


def readyz(state: State) -> JSONResponse:
    status, body = readiness(state)
    return JSONResponse(body, status_code=status)


def healthz(state: State) -> JSONResponse:
    status, body = readiness(state)
    if "reason" in body:  # the key /healthz gave the reason before /readyz (this release's page reads it)
        body["error"] = body["reason"]
    return JSONResponse(body, status_code=status)


def _probe(path: str, endpoint: Callable[..., Any], **options: Any) -> None:
    """A probe answers GET and HEAD (what load balancers and Docker send). Registered as one route per method, so
    that each method is its own OpenAPI operation with its own operationId (``livez``, ``livez_head``)."""
    name = path.strip("/")
    router.add_api_route(path, endpoint, methods=["GET"], operation_id=name, **options)
    router.add_api_route(path, endpoint, methods=["HEAD"], operation_id=f"{name}_head", **options)


_READINESS = readiness_responses(imgsearch_schema.head_revision())
_probe(
    "/livez",
    livez,
    summary="Liveness: 200 whenever the process answers (no database call).",
    response_description="the process answers",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
    response_model=http_models.Liveness,
)
_probe(
    "/readyz",
    readyz,
    summary="Readiness: database reachable, schema at this version's revision, embedding space the model's, "
    "model loaded; 503 with the reason otherwise.",
    response_description="ready to answer searches",
    responses=_READINESS,
    response_model=http_models.Readiness,
)
_probe(
    "/healthz",
    healthz,
    summary="Deprecated (use /readyz; removed in the next release): the same checks and status as /readyz, "
    'with the reason also as "error".',
    response_description="ready to answer searches",
    responses=_READINESS,
    response_model=http_models.Readiness,
    deprecated=True,
)


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Requests, latency and errors in Prometheus' text format.",
    response_description="the metrics of this worker (each worker reports its own)",
    response_class=PlainTextResponse,
)
def prometheus(state: State) -> PlainTextResponse:
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")
