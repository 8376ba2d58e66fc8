"""What shoppers did with the results, and what that says about the search's quality.

A shop's website reports events: an ``impression`` for each result shown, a ``click`` when one is opened, then
``add_to_cart`` and ``purchase``. Each carries the website's own ``event_id`` (a batch sent twice is stored
once), the ``search_id`` of the list of results it belongs to, the result's ``sku`` and ``rank`` (1 = first), and
the ``variant`` of the search that served the list (a search space or an A/B arm: see :func:`variant_for`).

:func:`report` turns a time window of events into the measures an online shop reads: click-through rate by rank,
mean reciprocal rank of the clicks, add-to-cart and conversion rates per search, by category and by variant,
and for two variants the difference with a 95% confidence interval, so that a shop can see whether ``tune``
pays. The sums are made in PostgreSQL (``imgsearch_event_report``); the rates and intervals here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from imgsearch.db import run_transaction, translate_error
from imgsearch.errors import InvalidQueryError

#: What a website may report.
KINDS = ("impression", "click", "add_to_cart", "purchase")
#: Events in one call (``imgsearch_record_events`` refuses more): a website batches them.
MAX_EVENTS = 1000
#: Positions the click-through table shows.
REPORT_RANKS = 20
_MAX_ID = 200
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Event:
    """One thing a shopper did with a list of results (see the module's documentation for the fields)."""

    event_id: str
    kind: str
    search_id: str
    occurred_at: datetime | None = None
    shopper: str | None = None
    sku: str | None = None
    rank: int | None = None
    category: str | None = None
    variant: str = ""
    value: Decimal | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """An event from JSON-like data (an HTTP body, a log line), checked field by field.

        Raises:
            InvalidQueryError: an unknown field, a missing or malformed one; the message names it.
        """
        if not isinstance(data, Mapping):
            raise InvalidQueryError("an event must be an object")
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise InvalidQueryError(f"unknown event field(s): {', '.join(sorted(map(str, unknown)))}")
        values = dict(data)
        for name in ("event_id", "kind", "search_id"):
            if values.get(name) is None:
                raise InvalidQueryError(f"an event needs {name}")
        if values.get("variant") is None:
            values.pop("variant", None)
        when = values.get("occurred_at")
        if isinstance(when, str):
            try:
                values["occurred_at"] = datetime.fromisoformat(when.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidQueryError(f"occurred_at is not an ISO 8601 time: {when!r}") from None
        value = values.get("value")
        if value is not None and not isinstance(value, bool) and isinstance(value, int | float | str):
            try:
                values["value"] = Decimal(str(value))
            except InvalidOperation:
                raise InvalidQueryError(f"value is not a number: {value!r}") from None
        return check(cls(**values))


def _text(name: str, value: object, *, required: bool, limit: int = _MAX_ID) -> None:
    if value is None:
        if required:
            raise InvalidQueryError(f"an event needs {name}")
        return
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        raise InvalidQueryError(f"{name} must be text of {'1' if required else '0'} to {limit} characters")
    if "\x00" in value:
        raise InvalidQueryError(f"{name} contains a NUL character")


def check(event: Event) -> Event:
    """Return ``event`` if PostgreSQL will store it, else raise :class:`InvalidQueryError` saying why (before
    the database refuses the whole batch)."""
    _text("event_id", event.event_id, required=True)
    _text("search_id", event.search_id, required=True)
    if event.kind not in KINDS:
        raise InvalidQueryError(f"kind must be one of {', '.join(KINDS)}, got {event.kind!r}")
    for name in ("shopper", "sku", "category"):
        _text(name, getattr(event, name), required=False)
    if not isinstance(event.variant, str):
        raise InvalidQueryError('variant must be text ("" when the search has no variants)')
    _text("variant", event.variant, required=False, limit=100)
    if event.rank is not None and (isinstance(event.rank, bool) or not isinstance(event.rank, int)):
        raise InvalidQueryError(f"rank must be a whole number, got {event.rank!r}")
    if event.rank is not None and not 1 <= event.rank <= 10_000:
        raise InvalidQueryError(f"rank must be between 1 and 10000 (1 = first result), got {event.rank}")
    if event.occurred_at is not None:
        if not isinstance(event.occurred_at, datetime):
            raise InvalidQueryError("occurred_at must be a time")
        if event.occurred_at.tzinfo is None:
            raise InvalidQueryError("occurred_at needs a time zone (e.g. 2026-12-07T10:00:00Z)")
    if event.value is not None:
        if not isinstance(event.value, Decimal) or not event.value.is_finite() or event.value < 0:
            raise InvalidQueryError(f"value must be a number >= 0, got {event.value!r}")
        if event.value >= Decimal("1e12"):
            raise InvalidQueryError(f"value is too large: {event.value}")
    return event


@dataclass(frozen=True)
class Recorded:
    """What :func:`record` did: events stored, and events skipped because their ``event_id`` was stored before."""

    stored: int
    duplicates: int


_RECORD = sa.text("SELECT imgsearch_record_events(CAST(:events AS jsonb))")
_FORGET = sa.text("SELECT imgsearch_forget_events(:days)")
_REPORT = sa.text("SELECT * FROM imgsearch_event_report(:since, :until, :ranks)")


def _json(event: Event) -> dict[str, Any]:
    row = {k: v for k, v in asdict(event).items() if v is not None}
    if event.occurred_at is not None:
        row["occurred_at"] = event.occurred_at.isoformat()
    if event.value is not None:
        row["value"] = str(event.value)
    return row


def record(engine: Engine, events: Iterable[Event | Mapping[str, Any]]) -> Recorded:
    """Store up to :data:`MAX_EVENTS` events in one transaction, each ``event_id`` once (a batch sent again
    after a timeout stores nothing twice); any bad event refuses the batch with :class:`InvalidQueryError`.
    Works with the website's reader role (the SQL function is SECURITY DEFINER)."""
    import json

    batch: list[Event] = []
    for item in events:
        batch.append(check(item) if isinstance(item, Event) else Event.from_dict(item))
        if len(batch) > MAX_EVENTS:
            raise InvalidQueryError(f"at most {MAX_EVENTS} events at once")
    if not batch:
        return Recorded(0, 0)
    if len({e.event_id for e in batch}) != len(batch):
        raise InvalidQueryError("an event_id appears twice in the batch")
    payload = json.dumps([_json(e) for e in batch])
    try:
        # A deadlock with another program's locks is retried (the batch is idempotent).
        stored = int(run_transaction(engine, lambda conn: conn.execute(_RECORD, {"events": payload}).scalar_one()))
    except DBAPIError as exc:
        raise translate_error(exc) from None
    return Recorded(stored, len(batch) - stored)


def forget(engine: Engine, days: int) -> int:
    """Delete the events that occurred more than ``days`` days ago (the retention); returns how many."""
    try:
        with engine.begin() as conn:
            return int(conn.execute(_FORGET, {"days": days}).scalar_one())
    except DBAPIError as exc:
        raise translate_error(exc) from None


def variant_for(shopper: str, variants: Sequence[str], weights: Sequence[float] | None = None) -> str:
    """The variant (A/B arm) a shopper sees: a stable hash of the shopper id, so that every search of one shopper
    goes to the same arm and the split holds across servers and restarts. ``weights`` (default equal) are the
    arms' shares of traffic."""
    if not variants:
        raise InvalidQueryError("give at least one variant")
    shares = list(weights) if weights is not None else [1.0] * len(variants)
    if len(shares) != len(variants) or any(not (w >= 0) or math.isinf(w) for w in shares) or sum(shares) <= 0:
        raise InvalidQueryError("weights must be one number >= 0 per variant, not all 0")
    digest = hashlib.sha256(shopper.encode("utf-8", "surrogatepass")).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(shares)
    for name, share in zip(variants, shares, strict=True):
        if point < share:
            return name
        point -= share
    return variants[-1]


# --- the report ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% confidence interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class VariantMeasures:
    """Per-search and per-event measures of one variant (or of all: ``variant`` None)."""

    variant: str | None
    searches: int
    impressions: int
    clicks: int
    carts: int
    purchases: int
    revenue: Decimal
    click_through: float
    """Clicks per impression."""
    searches_clicked: float
    """Share of searches with at least one click."""
    mean_reciprocal_rank: float
    """Mean over searches of 1/rank of the best-placed click (0 without a click)."""
    add_to_cart_rate: float
    """Add-to-cart events per search."""
    conversion: float
    """Share of searches followed by a purchase."""
    mrr_variance: float = field(repr=False, default=0.0)


@dataclass(frozen=True)
class Comparison:
    """Variant ``b`` against variant ``a``: differences (b - a) with 95% intervals (normal approximation)."""

    a: str
    b: str
    searches_clicked: Interval
    mean_reciprocal_rank: Interval
    conversion: Interval


@dataclass(frozen=True)
class Report:
    """The measures of a time window (``since`` inclusive, ``until`` exclusive)."""

    since: datetime
    until: datetime
    total: VariantMeasures
    variants: list[VariantMeasures]
    by_rank: list[tuple[int, int, int, float]]
    """(rank, impressions, clicks, click-through rate) for ranks 1..20 that were shown."""
    by_category: list[tuple[str, int, int, float, int]]
    """(category, impressions, clicks, click-through rate, purchases), most shown first."""
    comparisons: list[Comparison]

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        data = asdict(self)
        data["since"], data["until"] = self.since.isoformat(), self.until.isoformat()
        data["by_rank"] = [
            dict(zip(("rank", "impressions", "clicks", "click_through"), r, strict=True)) for r in self.by_rank
        ]
        data["by_category"] = [
            dict(zip(("category", "impressions", "clicks", "click_through", "purchases"), r, strict=True))
            for r in self.by_category
        ]
        for measures in [data["total"], *data["variants"]]:
            measures["revenue"] = str(measures["revenue"])
            measures.pop("mrr_variance", None)
        return data


def _rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _measures(row: Any) -> VariantMeasures:
    searches = int(row.searches or 0)
    mrr = _rate(row.reciprocal_rank_sum or 0.0, searches)
    variance = max(_rate(row.reciprocal_rank_squares or 0.0, searches) - mrr * mrr, 0.0)
    return VariantMeasures(
        variant=row.variant,
        searches=searches,
        impressions=int(row.impressions),
        clicks=int(row.clicks),
        carts=int(row.carts),
        purchases=int(row.purchases),
        revenue=Decimal(row.revenue),
        click_through=_rate(row.clicks, row.impressions),
        searches_clicked=_rate(row.searches_clicked or 0, searches),
        mean_reciprocal_rank=mrr,
        add_to_cart_rate=_rate(row.carts, searches),
        conversion=_rate(row.searches_bought or 0, searches),
        mrr_variance=variance,
    )


def _difference(pa: float, va: float, na: int, pb: float, vb: float, nb: int) -> Interval:
    spread = _Z95 * math.sqrt((va / na if na else 0.0) + (vb / nb if nb else 0.0))
    return Interval(pb - pa, pb - pa - spread, pb - pa + spread)


def compare(a: VariantMeasures, b: VariantMeasures) -> Comparison:
    """``b`` against ``a`` per search: each search is one trial (its shopper saw one arm's list)."""

    def proportion(p: float) -> float:
        return p * (1 - p)

    na, nb = a.searches, b.searches
    return Comparison(
        a=a.variant or "",
        b=b.variant or "",
        searches_clicked=_difference(
            a.searches_clicked,
            proportion(a.searches_clicked),
            na,
            b.searches_clicked,
            proportion(b.searches_clicked),
            nb,
        ),
        mean_reciprocal_rank=_difference(
            a.mean_reciprocal_rank, a.mrr_variance, na, b.mean_reciprocal_rank, b.mrr_variance, nb
        ),
        conversion=_difference(a.conversion, proportion(a.conversion), na, b.conversion, proportion(b.conversion), nb),
    )


def report(engine: Engine, since: datetime | None = None, until: datetime | None = None) -> Report:
    """The measures of the events in ``[since, until)`` (default: the last 30 days up to now), every variant
    against the first one (by name) when there are several."""
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=30)
    for name, when in (("since", since), ("until", until)):
        if when.tzinfo is None:
            raise InvalidQueryError(f"{name} needs a time zone")
    if since >= until:
        raise InvalidQueryError("since must be before until")
    try:
        with engine.connect() as conn:
            rows = conn.execute(_REPORT, {"since": since, "until": until, "ranks": REPORT_RANKS}).all()
    except DBAPIError as exc:
        raise translate_error(exc) from None
    overall = [r for r in rows if r.section == "variant" and r.variant is None]
    total = _measures(overall[0]) if overall else VariantMeasures(None, 0, 0, 0, 0, 0, Decimal(0), 0, 0, 0, 0, 0)
    variants = [_measures(r) for r in rows if r.section == "variant" and r.variant is not None]
    by_rank = sorted(
        (int(r.key), int(r.impressions), int(r.clicks), _rate(r.clicks, r.impressions))
        for r in rows
        if r.section == "rank"
    )
    by_category = sorted(
        (
            (r.key, int(r.impressions), int(r.clicks), _rate(r.clicks, r.impressions), int(r.purchases))
            for r in rows
            if r.section == "category"
        ),
        key=lambda c: (-c[1], c[0]),
    )
    comparisons = [compare(variants[0], v) for v in variants[1:]] if len(variants) > 1 else []
    return Report(since, until, total, variants, by_rank, by_category, comparisons)
