"""The parts of the API description FastAPI cannot infer from the endpoints: the documented errors, and the
request bodies the service reads itself (multipart forms, and JSON read with bounded depth)."""

from __future__ import annotations

from typing import Any

from imgsearch import http_models, query

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "model": http_models.Error,
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


def readiness_responses(revision: str) -> dict[int | str, dict[str, Any]]:
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
            "model": http_models.Readiness,
            "content": {"application/json": {"example": unready}},
        },
    }


FILTER_PROPERTIES = {
    "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 8},
    "category": {"type": "array", "items": {"type": "string"}, "description": "only these categories"},
    "in_stock_only": {"type": "boolean", "default": True},
    "max_price": {"type": "number", "minimum": 0, "description": "price ceiling, inclusive"},
}
#: The attribute filters of a form: the CLI's --where conditions, the field repeated.
WHERE_PROPERTY = {
    "type": "array",
    "items": {"type": "string"},
    "maxItems": 32,
    "description": "only products whose attributes say so, all at once: brand=Acme, brand=Acme|Zenith (any of), "
    "rating>=4, rating<5, size (has it), !size (has it not)",
}
SEARCH_BODY = {
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
                    **FILTER_PROPERTIES,
                    "exclude_sku": {"type": "array", "items": {"type": "string"}, "description": "SKUs never returned"},
                    "max_distance": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 2,
                        "description": "only results this close (cosine distance); verified matches always kept",
                    },
                    "search_space": {
                        "type": "string",
                        "enum": ["active", "raw"],
                        "description": "raw: the raw VGG16 vectors while a tuned space is active (an A/B test of tune)",
                    },
                    "offset": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": query.MAX_K - 1,
                        "default": 0,
                        "description": "results skipped first (offset + k at most 1000)",
                    },
                    "cursor": {
                        "type": "string",
                        "description": "a result's cursor: the results after it, even if the catalogue changed since",
                    },
                    "where": WHERE_PROPERTY,
                    "text": {"type": "string", "maxLength": 1000, "description": "words ranked with the photo"},
                    "text_filter": {"type": "boolean", "default": False, "description": "the words filter instead"},
                    "text_weight": {"type": "number", "minimum": 0, "maximum": 1, "description": "the words' share"},
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
            "schema": {
                "oneOf": [
                    http_models.json_schema(http_models.VectorSearch),
                    http_models.json_schema(http_models.UrlSearch),
                    http_models.json_schema(http_models.WordsSearch),
                ]
            }
        },
    },
}
SEARCH_MANY_BODY = {
    "required": True,
    "content": {"application/json": {"schema": http_models.json_schema(http_models.ManySearch)}},
}
EVENTS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": http_models.json_schema(http_models.EventBatch),
            "example": {
                "events": [
                    {"event_id": "e1", "kind": "impression", "search_id": "s1", "sku": "shoes-1", "rank": 1},
                    {"event_id": "e2", "kind": "click", "search_id": "s1", "sku": "shoes-1", "rank": 1},
                ]
            },
        }
    },
}
EMBED_BODY = {
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
