"""k-nearest-neighbour product search: what the website backend calls."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class SearchResult:
    """One product returned by a search, best first.

    ``distance`` is the cosine distance (0 = same direction, 2 = opposite); smaller is closer.
    """

    sku: str
    name: str | None
    category: str
    price: Decimal | None
    in_stock: bool
    image: str | None
    distance: float
