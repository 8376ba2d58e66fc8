"""Near-duplicate listings: groups of products whose photos are near-identical, with their price spread.

This is the report the project was started for: a customer bought an expensive item and then found the same
item, cheaper, elsewhere in the same shop. The SQL function ``imgsearch_near_duplicates`` finds the pairs of
products within a cosine distance of each other (each photo asks the HNSW index for its nearest photos, so the
cost grows with the catalogue rather than its square); here the pairs are joined into groups (connected
components: a and b alike, b and c alike make one group) and sorted by how much their prices differ.

Two photos are near-identical when their VGG16 distance is at most :data:`DEFAULT_MAX_DISTANCE` *and* their
colours (:mod:`imgsearch.colour`) are at most :data:`DEFAULT_MAX_COLOUR_DISTANCE` apart: VGG16 sees shape
more than colour. Both defaults were chosen on planted duplicates (re-encoded, resized, cropped, mirrored,
re-backgrounded copies of real catalogue photos among the other photos of the same types): see
docs/quality.md. Photos stored before colour signatures existed are compared by VGG16 alone, with the
stricter :data:`DISTANCE_WITHOUT_COLOUR`, until the next ingest computes their colours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from imgsearch.catalogue import SHOP_FIELDS_SQL, Bind, Listing
from imgsearch.db import transaction, translate_error
from imgsearch.errors import InvalidQueryError
from imgsearch.validation import price_limit

#: VGG16 cosine distance under which two photos may be the same product (docs/quality.md, "Duplicate listings").
DEFAULT_MAX_DISTANCE = 0.125
#: Largest distance between two photos' colour signatures (L2) for them to be the same product.
DEFAULT_MAX_COLOUR_DISTANCE = 0.125
#: VGG16 distance alone, for photos without a colour signature: the best threshold without the colour check.
DISTANCE_WITHOUT_COLOUR = 0.0575
#: How many nearest photos each photo looks at.
DEFAULT_NEIGHBOURS = 10


@dataclass(frozen=True)
class DuplicatePair:
    """Two products with near-identical photos: the closest pair of their photos, its VGG16 distance and the
    distance of their colours (``None`` when a photo has no colour signature yet)."""

    sku_a: str
    sku_b: str
    distance: float
    colour_distance: float | None
    image_a: str | None
    image_b: str | None


@dataclass(frozen=True)
class DuplicateGroup:
    """Products that look like one another, cheapest first; ``spread`` is the highest price minus the lowest
    (``None`` when fewer than two have a price), ``max_distance`` the largest distance of the pairs that join
    them."""

    listings: tuple[Listing, ...]
    spread: Decimal | None
    max_distance: float


def near_duplicate_pairs(
    bind: Bind,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    *,
    max_colour_distance: float = DEFAULT_MAX_COLOUR_DISTANCE,
    categories: Iterable[str] | None = None,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> list[DuplicatePair]:
    """The pairs of products (within one category) whose photos are near-identical, closest first.

    Raises:
        InvalidQueryError: a distance outside 0..2 or ``neighbours`` outside 1..100.
    """
    for name, value in (("max_distance", max_distance), ("max_colour_distance", max_colour_distance)):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidQueryError(f"{name} must be a number, got {value!r}")
    try:
        with transaction(bind) as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT * FROM imgsearch_near_duplicates(:d, CAST(:categories AS text[]), :neighbours, :c, :alone)"
                ),
                {
                    "d": float(max_distance),
                    "categories": None if categories is None else list(categories),
                    "neighbours": neighbours,
                    "c": float(max_colour_distance),
                    "alone": min(DISTANCE_WITHOUT_COLOUR, float(max_distance)),
                },
            ).all()
    except DBAPIError as exc:
        raise translate_error(exc) from None
    return [DuplicatePair(*row) for row in rows]


def find_duplicate_groups(
    bind: Bind,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    *,
    max_colour_distance: float = DEFAULT_MAX_COLOUR_DISTANCE,
    categories: Iterable[str] | None = None,
    min_price_gap: Decimal | float | str | None = None,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> list[DuplicateGroup]:
    """Groups of near-identical products, the biggest price spread first (in stock and sold out alike).

    ``min_price_gap`` keeps only groups whose spread is at least that much.
    """
    gap = price_limit(min_price_gap, "min_price_gap")
    pairs = near_duplicate_pairs(
        bind, max_distance, max_colour_distance=max_colour_distance, categories=categories, neighbours=neighbours
    )
    components = _components(pairs)
    if not components:
        return []
    group_of = {sku: n for n, members in enumerate(components) for sku in members}
    widest = [0.0] * len(components)
    for pair in pairs:
        n = group_of[pair.sku_a]
        widest[n] = max(widest[n], pair.distance)
    skus = sorted({sku for members in components for sku in members})
    with transaction(bind) as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT p.sku, p.name, p.category, p.price, p.in_stock, {SHOP_FIELDS_SQL} FROM products p "
                "WHERE p.sku = ANY(:skus)"
            ),
            {"skus": skus},
        ).all()
    products = {row.sku: row for row in rows}
    images: dict[str, str | None] = {}
    for pair in pairs:
        images.setdefault(pair.sku_a, pair.image_a)
        images.setdefault(pair.sku_b, pair.image_b)
    groups = []
    for n, members in enumerate(components):
        listings = tuple(
            sorted(
                (
                    Listing(
                        sku,
                        products[sku].name,
                        products[sku].category,
                        products[sku].price,
                        products[sku].in_stock,
                        images.get(sku),
                        shop_product_id=products[sku].shop_product_id,
                        page_url=products[sku].page_url,
                        attributes=products[sku].attributes,
                    )
                    for sku in members
                    if sku in products  # removed since the pairs were found
                ),
                key=lambda item: (item.price is None, item.price or 0, item.sku),
            )
        )
        if len(listings) < 2:
            continue
        prices = [item.price for item in listings if item.price is not None]
        spread = max(prices) - min(prices) if len(prices) >= 2 else None
        if gap is not None and (spread is None or spread < gap):
            continue
        groups.append(DuplicateGroup(listings, spread, widest[n]))
    groups.sort(key=lambda g: (-(g.spread if g.spread is not None else Decimal(-1)), g.listings[0].sku))
    return groups


def _components(pairs: list[DuplicatePair]) -> list[set[str]]:
    """Connected components of the pairs' graph (union-find)."""
    parent: dict[str, str] = {}

    def root(sku: str) -> str:
        parent.setdefault(sku, sku)
        while parent[sku] != sku:
            parent[sku] = parent[parent[sku]]
            sku = parent[sku]
        return sku

    for pair in pairs:
        a, b = root(pair.sku_a), root(pair.sku_b)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[str, set[str]] = {}
    for sku in parent:
        groups.setdefault(root(sku), set()).add(sku)
    return list(groups.values())
