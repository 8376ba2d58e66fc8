"""The shapes of the HTTP API's JSON bodies (Pydantic models), for its OpenAPI description and its checks.

Requests are read by the service itself (bounded size and depth, NUL and non-finite numbers refused) and their
values checked by the library, which gives the same one-line errors as the CLI; these models say what each
endpoint takes and answers, so that a client can be generated from the description, and which fields exist, so
that a misspelt one is refused (422) instead of silently ignored. A test keeps the result model and the CLI's
JSON records (:func:`imgsearch.output.result_dicts`) the same.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imgsearch import feedback, query


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(_Request):
    """What every search may narrow its results by."""

    k: int = Field(8, ge=1, le=query.MAX_K, description="how many products")
    category: str | list[str] | None = Field(None, description="only these categories (one or a list)")
    categories: list[str] | None = Field(None, description="the same as `category`")
    in_stock_only: bool = True
    max_price: float | None = Field(None, ge=0, description="price ceiling, inclusive")
    exclude_skus: list[str] | None = Field(None, description="SKUs never returned")
    max_distance: float | None = Field(
        None, ge=0, le=2, description="only results this close (cosine distance); verified matches always kept"
    )
    search_space: Literal["active", "raw"] | None = Field(
        None, description='"raw": the raw VGG16 vectors while a tuned space is active (an A/B test of tune)'
    )
    where: dict[str, Any] | list[str] | None = Field(
        None,
        description="only products whose attributes match, all conditions at once: "
        '{"brand": "Acme"} equal, {"brand": ["Acme", "Zenith"]} any of, {"rating": {">=": 4, "<": 5}} a range, '
        '{"size": {"has": true}} has it; or the CLI\'s conditions: ["brand=Acme|Zenith", "rating>=4"]',
        examples=[{"brand": ["Acme", "Zenith"], "rating": {">=": 4}}],
    )


class Page(_Request):
    """Which page of the ranking: after ``offset`` results, or after the result a ``cursor`` came from."""

    offset: int = Field(0, ge=0, lt=query.MAX_K, description="results skipped first (offset + k at most 1000)")
    cursor: str | None = Field(
        None, description="a result's `cursor`: the results after it, even if the catalogue changed since"
    )


class Words(_Request):
    """Words that rank with the photo or vector (fused), filter (`text_filter`), or search alone."""

    text: str | None = Field(
        None,
        max_length=1000,
        description='words matched against names, categories, text attributes and descriptions ("slim fit" a '
        "phrase, -red without); alone (no vector, no image_url), a search by words only",
    )
    text_filter: bool = Field(False, description="only products matching the words, instead of ranking by them")
    text_weight: float | None = Field(
        None, ge=0, le=1, description="the words' share of the fused ranking (default 0.5, by measurement)"
    )


class VectorSearch(Filters, Page, Words):
    """A search by a vector (for example one from `POST /v1/embed`, or kept from an earlier search)."""

    vector: list[float] = Field(..., min_length=1, description="512 numbers (or a photo's vectors: see the docs)")


class WordsSearch(Filters, Page, Words):
    """A search by words alone."""

    text: str = Field(..., min_length=1, max_length=1000, description="the words to search for")  # type: ignore[assignment]


class UrlSearch(Filters, Page, Words):
    """A search by the photo at a web address, fetched by the service."""

    image_url: str = Field(..., description="http(s) address of a photo; private addresses refused by default")
    crop: str | list[float] | None = Field(
        None, description="search only this box: left,top,right,bottom in the photo's pixels"
    )
    verify: bool = Field(True, description="local features put the photographed product first")


class ManySearch(Filters):
    """Several searches by vector in one round trip."""

    offset: int = Field(0, ge=0, lt=query.MAX_K, description="results skipped first in every search")

    vectors: list[list[float]] = Field(..., min_length=1, max_length=query.MAX_SEARCHES)


class Event(_Request):
    """One thing a shopper did with a search's results."""

    event_id: str = Field(..., max_length=200, description="unique per event: a batch sent twice is stored once")
    kind: str = Field(..., description="what the shopper did", json_schema_extra={"enum": list(feedback.KINDS)})
    search_id: str = Field(..., max_length=200)
    occurred_at: str | None = Field(None, description="ISO 8601 with a time zone; default now")
    shopper: str | None = Field(None, max_length=200)
    sku: str | None = Field(None, max_length=200)
    rank: int | None = Field(None, ge=1, le=10_000)
    category: str | None = Field(None, max_length=200)
    variant: str | None = Field(None, max_length=100)
    value: float | None = Field(None, ge=0)


class EventBatch(_Request):
    """Events as the website sends them, in batches."""

    events: list[Event] = Field(..., min_length=1, max_length=feedback.MAX_EVENTS)


class SearchResult(BaseModel):
    """One product found, best first: the record of the CLI's `--format json`."""

    rank: int = Field(..., ge=1)
    sku: str
    name: str | None
    category: str | None
    price: float | None
    in_stock: bool
    distance: float | None = Field(
        ..., description="cosine distance to the query: 0 same direction, 2 opposite; null for words alone"
    )
    image: str | None = Field(..., description="the product's photo (a path or address)")
    match: Literal["exact", "similar"] | None = Field(
        ..., description='"exact": local features proved the photo shows this product; null when not verified'
    )
    inliers: int | None = Field(..., description="keypoints agreeing with one homography (verified searches)")
    box: list[float] | None = Field(..., description="where the product lies in the photo: left, top, right, bottom")
    cursor: str | None = Field(..., description="send it as `cursor` with the same search for the results after this")
    shop_product_id: str | None = Field(..., description="the shop's own id of the product, when the catalogue has it")
    page_url: str | None = Field(..., description="the product's page on the shop's site, when the catalogue has it")
    attributes: dict[str, Any] = Field(..., description="the shop's attributes of the product (brand, size...)")


class Error(BaseModel):
    """Every refusal: one line saying what is wrong."""

    error: str


class Stored(BaseModel):
    """What became of a batch of events."""

    stored: int = Field(..., description="events new to the catalogue")
    duplicates: int = Field(..., description="events whose event_id was stored before")


class Embedding(BaseModel):
    """A photo's vector and the embedding space it belongs to."""

    vector: list[float]
    dimension: int
    model: str
    weights_id: str
    preprocessing: str


class CategoryCount(BaseModel):
    """A category and how many products it has."""

    category: str
    products: int


class Liveness(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether this worker can answer searches, and if not why."""

    status: Literal["ok", "unavailable"]
    reason: str | None = None
    database: str | None = None
    schema_revision: str | None = Field(None, alias="schema")
    model: str | None = None


def request_fields(model: type[BaseModel]) -> frozenset[str]:
    """The JSON fields a request model takes."""
    return frozenset(model.model_fields)


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models written in place (an OpenAPI request body cannot refer to
    Pydantic's own ``$defs``)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                return inline(definitions[reference.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)
