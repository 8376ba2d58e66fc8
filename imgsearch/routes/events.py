"""What shoppers did with the results (impressions, clicks, carts, purchases), sent by the shop's website:
:meth:`imgsearch.Catalogue.record_events`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from imgsearch import feedback, http_models
from imgsearch.api import Catalogue
from imgsearch.errors import InvalidQueryError
from imgsearch.routes import requests
from imgsearch.routes.openapi import ERRORS, EVENTS_BODY
from imgsearch.routes.runtime import shop

router = APIRouter()


@router.post(
    "/events",
    operation_id="record_events",
    response_description='{"stored": n, "duplicates": m}: events new, and events whose event_id was stored before',
    summary="Shoppers' impressions, clicks, carts and purchases (JSON), stored once per event_id.",
    openapi_extra={"requestBody": EVENTS_BODY},
    responses=ERRORS,
    response_model=http_models.Stored,
)
async def record_events(request: Request, catalogue: Annotated[Catalogue, Depends(shop)]) -> JSONResponse:
    body = await requests.json_object(
        request, "events", f'send a JSON object with "events": a list of 1 to {feedback.MAX_EVENTS} event objects'
    )
    requests.known_fields(body, http_models.EventBatch)
    if not isinstance(body["events"], list) or not body["events"]:
        raise InvalidQueryError(f'"events" must be a list of 1 to {feedback.MAX_EVENTS} event objects')
    if len(body["events"]) > feedback.MAX_EVENTS:
        raise InvalidQueryError(f"at most {feedback.MAX_EVENTS} events at once, got {len(body['events'])}")
    recorded = await run_in_threadpool(catalogue.record_events, body["events"])
    return JSONResponse({"stored": recorded.stored, "duplicates": recorded.duplicates})
