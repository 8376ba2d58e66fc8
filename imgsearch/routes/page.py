"""The web page and its files, the catalogue's photos and categories it shows, and the API's documentation pages
(Swagger UI and ReDoc served from the package, so that they work without internet)."""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgsearch import http_models
from imgsearch.api import Catalogue
from imgsearch.images import has_supported_extension
from imgsearch.routes.openapi import ERRORS
from imgsearch.routes.runtime import Runtime, runtime, shop

router = APIRouter()

State = Annotated[Runtime, Depends(runtime)]
_WEB = files("imgsearch.web")
_WEB_KINDS = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

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


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse((_WEB / "index.html").read_text(encoding="utf-8"))


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    suffix = Path(name).suffix
    if "/" in name or suffix not in _WEB_KINDS or not (_WEB / name).is_file():
        raise StarletteHTTPException(404, "not found")
    return Response((_WEB / name).read_bytes(), media_type=_WEB_KINDS[suffix])


def inside_roots(ref: str, roots: list[Path]) -> Path | None:
    """The file ``ref`` names if it lies inside one of ``roots`` (after resolving links and ``..``), else None."""
    if not ref or "\0" in ref:
        return None
    candidate = Path(ref)
    for root in roots:
        path = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if path.is_relative_to(root) and path.is_file():
            return path
    return None


@router.get(
    "/photos",
    operation_id="photo",
    summary="A catalogue photo stored as a file under the service's image roots.",
    response_description="the photo file",
    responses={404: {**ERRORS[404], "description": "no such photo under the service's image roots"}},
)
def photo(ref: str, state: State) -> FileResponse:
    found = inside_roots(ref, state.roots)
    if found is None or not has_supported_extension(found):  # photos only, not every file under a root
        raise StarletteHTTPException(404, "no such photo under the service's image roots")
    return FileResponse(found)


@router.get(
    "/categories",
    operation_id="categories",
    summary="The catalogue's categories and their product counts (for the page).",
    response_description="each category and how many products it has (refreshed at most once a minute)",
    responses={
        200: {"content": {"application/json": {"example": [{"category": "shoes", "products": 12}]}}},
        503: {**ERRORS[503], "description": "database unreachable or schema not migrated"},
    },
    response_model=list[http_models.CategoryCount],
)
def categories(state: State, catalogue: Annotated[Catalogue, Depends(shop)]) -> JSONResponse:
    cached_at, cached = state.categories
    if time.monotonic() - cached_at > 60:
        cached = [{"category": c, "products": n} for c, (n, _) in catalogue.stats().by_category.items()]
        state.categories = (time.monotonic(), cached)
    return JSONResponse(cached)


def _assets(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}/docs/assets"


def _description(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs", include_in_schema=False)
def swagger_ui(request: Request) -> HTMLResponse:
    from fastapi.openapi.docs import get_swagger_ui_html

    html = get_swagger_ui_html(
        openapi_url=_description(request),
        title=f"{request.app.title} API",
        swagger_js_url=f"{_assets(request)}/swagger-ui-bundle.js",
        swagger_css_url=f"{_assets(request)}/swagger-ui.css",
        swagger_favicon_url=f"{_assets(request)}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
    )
    html.headers["Content-Security-Policy"] = DOCS_POLICY
    return html


@router.get("/redoc", include_in_schema=False)
def redoc(request: Request) -> HTMLResponse:
    from fastapi.openapi.docs import get_redoc_html

    html = get_redoc_html(
        openapi_url=_description(request),
        title=f"{request.app.title} API",
        redoc_js_url=f"{_assets(request)}/redoc.standalone.js",
        redoc_favicon_url=f"{_assets(request)}/favicon.png",
        with_google_fonts=False,
    )
    html.headers["Content-Security-Policy"] = DOCS_POLICY
    return html


@router.get("/docs/assets/{name}", include_in_schema=False)
def docs_asset(name: str) -> Response:
    if name not in DOCS_ASSETS:
        raise StarletteHTTPException(404, "not found")
    data = (files("fastapi_offline") / "static" / name).read_bytes()
    return Response(data, media_type=DOCS_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
