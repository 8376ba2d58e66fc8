"""Searches by photo, by vector and by SKU, and a photo's vector: thin faces of :class:`imgsearch.Catalogue`
whose answers are the CLI's ``--format json`` records."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgsearch import http_models, output, query
from imgsearch.api import Catalogue
from imgsearch.errors import InvalidQueryError
from imgsearch.routes import requests
from imgsearch.routes.openapi import EMBED_BODY, ERRORS, SEARCH_BODY, SEARCH_MANY_BODY
from imgsearch.routes.runtime import Runtime, fetch_photo, runtime, shop

router = APIRouter()

State = Annotated[Runtime, Depends(runtime)]
Shop = Annotated[Catalogue, Depends(shop)]
#: Attribute filters in a URL's query: the CLI's --where conditions, the parameter repeated.
Where = Annotated[
    list[str] | None,
    Query(
        max_length=32,
        description="only products whose attributes say so, all at once: brand=Acme, brand=Acme|Zenith (any of), "
        "rating>=4, rating<5, size (has it), !size (has it not)",
    ),
]


def _results(results: list[query.SearchResult]) -> JSONResponse:
    return JSONResponse(output.result_dicts(results))


def _unsupported(message: str) -> StarletteHTTPException:
    """A 415, answered by the service's error handler like every other refusal."""
    return StarletteHTTPException(415, message)


async def _search_photos(catalogue: Catalogue, photos: list[tuple[bytes, str]], form: Any) -> JSONResponse:
    """A search by one photo or several of one thing (the network behind the gate)."""
    options = requests.form_filters(form)
    options.update(requests.text_options(form.get("text"), form.get("text_filter"), form.get("text_weight")))
    crop = requests.crop_field(form.get("crop"))
    verify = requests.flag(form.get("verify"), "verify", default=True)
    if len(photos) > 1:
        if crop is not None:
            raise InvalidQueryError("crop is a box of one photo: send one photo with it")
        named = [requests.named(data, name) for data, name in photos]
        search = functools.partial(catalogue.search_images, named, verify=verify, **options)
    else:
        ((data, name),) = photos
        search = functools.partial(
            catalogue.search_image, requests.named(data, name), crop=crop, verify=verify, **options
        )
    return _results(await run_in_threadpool(search))


@router.post(
    "/search",
    operation_id="search",
    response_description="the results, best first: the records of the CLI's `--format json`",
    summary="Products that look like a photo (multipart) or a vector (JSON), best first.",
    openapi_extra={"requestBody": SEARCH_BODY},
    responses=ERRORS,
    response_model=list[http_models.SearchResult],
)
async def search(request: Request, state: State, catalogue: Shop) -> JSONResponse:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        photos, form = await requests.upload(request, state.limits.max_upload_bytes, most=query.MAX_QUERY_PHOTOS)
        return await _search_photos(catalogue, photos, form)
    if kind != "application/json":
        raise _unsupported("send multipart/form-data with a photo in 'image', or application/json with 'vector'")
    hint = 'send a JSON object with a "vector" of 512 numbers, an "image_url" or words in "text"'
    body = await requests.json_object(request, "", hint)
    if "vector" not in body and "image_url" not in body and "text" not in body:
        raise InvalidQueryError(hint)
    if "vector" not in body and "image_url" not in body:
        # Words alone.
        requests.known_fields(body, http_models.WordsSearch)
        options = requests.json_filters(body)
        words = requests.text_options(body.get("text"), body.get("text_filter"), body.get("text_weight"))
        if "text" not in words:
            raise InvalidQueryError(hint)
        options.pop("search_space", None)
        if options.pop("max_distance", None) is not None:
            raise InvalidQueryError("max_distance needs a vector or a photo")
        return _results(await run_in_threadpool(catalogue.search_words, words["text"], **options))
    by_url = "vector" not in body
    requests.known_fields(body, http_models.UrlSearch if by_url else http_models.VectorSearch)
    options = requests.json_filters(body)
    options.update(requests.text_options(body.get("text"), body.get("text_filter"), body.get("text_weight")))
    if not by_url:
        return _results(await run_in_threadpool(catalogue.search, body["vector"], **options))
    data = await run_in_threadpool(fetch_photo, state, body["image_url"])
    crop = requests.crop_field(body.get("crop"))
    verify = requests.flag(body.get("verify"), "verify", default=True)
    named = requests.named(data, "image_url")
    return _results(
        await run_in_threadpool(functools.partial(catalogue.search_image, named, crop=crop, verify=verify, **options))
    )


@router.post(
    "/search/many",
    operation_id="search_many",
    response_description="one list of results per vector, in the order of the vectors",
    summary="One search per vector (JSON), all answered in one database round trip.",
    openapi_extra={"requestBody": SEARCH_MANY_BODY},
    responses=ERRORS,
    response_model=list[list[http_models.SearchResult]],
)
async def search_many(request: Request, catalogue: Shop) -> JSONResponse:
    body = await requests.json_object(
        request, "vectors", f'send a JSON object with "vectors": 1 to {query.MAX_SEARCHES} lists of 512 numbers'
    )
    requests.known_fields(body, http_models.ManySearch)
    if not isinstance(body["vectors"], list):
        raise InvalidQueryError(f'"vectors" must be a list of 1 to {query.MAX_SEARCHES} lists of 512 numbers')
    answers = await run_in_threadpool(catalogue.search_many, body["vectors"], **requests.json_filters(body))
    return JSONResponse([output.result_dicts(results) for results in answers])


@router.get(
    "/products/{sku:path}/similar",
    operation_id="similar",
    response_description="the results, best first: the records of the CLI's `--format json`",
    summary="Products that look like a catalogue product.",
    responses=ERRORS,
    response_model=list[http_models.SearchResult],
)
def similar(
    catalogue: Shop,
    sku: str,
    k: Annotated[int, Query(ge=1, le=query.MAX_K)] = 8,
    category: Annotated[list[str] | None, Query()] = None,
    in_stock_only: bool = True,
    max_price: float | None = None,
    exclude_sku: Annotated[list[str] | None, Query()] = None,
    max_distance: Annotated[float | None, Query(ge=0, le=2)] = None,
    offset: Annotated[int, Query(ge=0, lt=query.MAX_K)] = 0,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
    search_space: Literal["active", "raw"] | None = None,
    where: Where = None,
) -> JSONResponse:
    options: dict[str, Any] = {"exclude_skus": exclude_sku} if exclude_sku else {}
    if where:
        options["filters"] = requests.where_filters(where)
    if max_distance is not None:
        options["max_distance"] = max_distance
    return _results(
        catalogue.similar(
            sku,
            k,
            categories=category,
            in_stock_only=in_stock_only,
            max_price=max_price,
            offset=offset,
            cursor=cursor,
            search_space=search_space,
            **options,
        )
    )


@router.get(
    "/products/{sku:path}/cheaper",
    operation_id="cheaper",
    response_description="the results, best first: the records of the CLI's `--format json`",
    summary="Visually similar products, in stock and strictly cheaper (same category unless any_category).",
    responses=ERRORS,
    response_model=list[http_models.SearchResult],
)
def cheaper(
    catalogue: Shop,
    sku: str,
    k: Annotated[int, Query(ge=1, le=query.MAX_K)] = 8,
    any_category: bool = False,
    offset: Annotated[int, Query(ge=0, lt=query.MAX_K)] = 0,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
    search_space: Literal["active", "raw"] | None = None,
    where: Where = None,
) -> JSONResponse:
    answer = catalogue.cheaper(
        sku,
        k,
        same_category=not any_category,
        offset=offset,
        cursor=cursor,
        search_space=search_space,
        filters=requests.where_filters(where) if where else None,
    )
    return _results(answer)


@router.post(
    "/embed",
    operation_id="embed",
    response_description="the vector and the embedding space it belongs to",
    summary="A photo's 512-d vector, to cache or to pass to the SQL functions.",
    openapi_extra={"requestBody": EMBED_BODY},
    responses=ERRORS,
    response_model=http_models.Embedding,
)
async def embed(request: Request, state: State) -> JSONResponse:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        raise _unsupported("send multipart/form-data with a photo in 'image'")
    ((data, name),), _ = await requests.upload(request, state.limits.max_upload_bytes)
    assert state.gate is not None
    vector = await run_in_threadpool(state.gate.embed, data, name)
    space = state.featurizer.space
    return JSONResponse(
        {
            "vector": [round(float(x), 8) for x in vector],
            "dimension": len(vector),
            "model": space.model_name,
            "weights_id": space.weights_id,
            "preprocessing": space.preprocessing_version,
        }
    )
