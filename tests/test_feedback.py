"""Shoppers' events and the report that measures the search with them: real PostgreSQL, the CLI, the SQL functions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine, make_url

from imgsearch import Catalogue, catalogue, db, feedback, roles, schema
from imgsearch.catalogue import ProductRecord
from imgsearch.cli import main
from imgsearch.errors import InvalidQueryError

NOW = datetime.now(UTC).replace(microsecond=0)


def _events() -> list[dict[str, Any]]:
    """Two variants of 4 searches each, 5 results shown per search; clicks, carts and purchases placed so that
    every measure has a known value (worked out in the test below)."""
    events: list[dict[str, Any]] = []
    for s in range(8):
        variant = "raw" if s < 4 else "tuned"
        for rank in range(1, 6):
            sku = f"{'dress' if rank <= 2 else 'shoes'}-{rank}"
            events.append(
                {"event_id": f"i{s}.{rank}", "kind": "impression", "search_id": f"s{s}", "sku": sku, "rank": rank}
            )
        for e in events[-5:]:
            e.update(variant=variant, shopper=f"shopper{s}", occurred_at=(NOW - timedelta(hours=1)).isoformat())
    # raw: s0 clicks rank 2 then 4; s1 clicks rank 1 and buys; s2, s3 nothing.
    # tuned: s4 and s5 click rank 1; s6 clicks rank 3 and buys twice (one search bought); s7 clicks rank 1 and carts.
    clicks = [(0, 2), (0, 4), (1, 1), (4, 1), (5, 1), (6, 3), (7, 1)]
    for n, (s, rank) in enumerate(clicks):
        sku = f"{'dress' if rank <= 2 else 'shoes'}-{rank}"
        events.append({"event_id": f"c{n}", "kind": "click", "search_id": f"s{s}", "sku": sku, "rank": rank})
    events.append({"event_id": "b0", "kind": "purchase", "search_id": "s1", "sku": "dress-1", "value": "20.50"})
    events.append({"event_id": "b1", "kind": "purchase", "search_id": "s6", "sku": "shoes-3", "value": 30})
    events.append({"event_id": "b2", "kind": "purchase", "search_id": "s6", "sku": "shoes-3", "value": 30})
    events.append({"event_id": "a0", "kind": "add_to_cart", "search_id": "s7", "sku": "dress-1", "rank": 1})
    for e in events[40:]:
        e["variant"] = "raw" if int(e["search_id"][1:]) < 4 else "tuned"
    return events


@pytest.fixture
def shop(engine: Engine) -> Catalogue:
    """The catalogue of the events' products (their categories come from it)."""
    catalogue.ensure_space(
        engine,
        type(
            "Space", (), {"model_name": "m", "weights_id": "w" * 64, "preprocessing_version": "p", "dimension": 512}
        )(),
    )
    vectors = np.random.default_rng(0).normal(size=(5, 512)).astype(np.float32)
    catalogue.upsert_products(
        engine,
        [
            ProductRecord(
                sku=f"{'dress' if r <= 2 else 'shoes'}-{r}",
                category="dress" if r <= 2 else "shoes",
                embedding=vectors[r - 1],
                price=Decimal(10 * r),
            )
            for r in range(1, 6)
        ],
    )
    return Catalogue(engine)


def test_events_are_stored_once_and_the_report_has_the_known_measures(shop: Catalogue) -> None:
    events = _events()
    assert shop.record_events(events[:30]) == feedback.Recorded(stored=30, duplicates=0)
    # The website sends the batch again after a timeout, with the rest: nothing twice.
    assert shop.record_events(events) == feedback.Recorded(stored=len(events) - 30, duplicates=30)

    report = shop.report(NOW - timedelta(days=1), NOW + timedelta(minutes=1))
    raw, tuned = report.variants
    assert (raw.variant, tuned.variant, report.total.variant) == ("raw", "tuned", None)
    # 4 searches each, 20 impressions each.
    assert (raw.searches, raw.impressions, raw.clicks, raw.purchases) == (4, 20, 3, 1)
    assert (tuned.searches, tuned.impressions, tuned.clicks, tuned.purchases, tuned.carts) == (4, 20, 4, 2, 1)
    assert raw.click_through == pytest.approx(3 / 20) and tuned.click_through == pytest.approx(4 / 20)
    assert raw.searches_clicked == pytest.approx(2 / 4) and tuned.searches_clicked == pytest.approx(4 / 4)
    # Mean reciprocal rank of the best-placed click, 0 for a search without one.
    assert raw.mean_reciprocal_rank == pytest.approx((1 / 2 + 1 + 0 + 0) / 4)
    assert tuned.mean_reciprocal_rank == pytest.approx((1 + 1 + 1 / 3 + 1) / 4)
    assert raw.conversion == pytest.approx(1 / 4) and tuned.conversion == pytest.approx(1 / 4)
    assert tuned.add_to_cart_rate == pytest.approx(1 / 4)
    assert (raw.revenue, tuned.revenue, report.total.revenue) == (Decimal("20.50"), Decimal(60), Decimal("80.50"))
    assert report.total.searches == 8 and report.total.clicks == 7

    assert report.by_rank == [
        (1, 8, 4, pytest.approx(0.5)),
        (2, 8, 1, pytest.approx(1 / 8)),
        (3, 8, 1, pytest.approx(1 / 8)),
        (4, 8, 1, pytest.approx(1 / 8)),
        (5, 8, 0, 0.0),
    ]
    # Categories come from the catalogue when the website does not send them.
    assert report.by_category == [
        ("shoes", 24, 2, pytest.approx(2 / 24), 2),
        ("dress", 16, 5, pytest.approx(5 / 16), 1),
    ]
    (comparison,) = report.comparisons
    assert (comparison.a, comparison.b) == ("raw", "tuned")
    assert comparison.searches_clicked.value == pytest.approx(0.5)
    assert comparison.mean_reciprocal_rank.value == pytest.approx(tuned.mean_reciprocal_rank - raw.mean_reciprocal_rank)
    assert comparison.conversion.value == pytest.approx(0.0)
    assert comparison.conversion.low < 0 < comparison.conversion.high  # 4 searches a side prove nothing
    # Outside the window: nothing.
    assert shop.report(NOW - timedelta(days=3), NOW - timedelta(days=2)).total.impressions == 0


def test_variants_compare_with_intervals_that_narrow_with_traffic(shop: Catalogue) -> None:
    # 400 searches a side: tuned is clicked in 60% of searches, raw in 40%; the interval excludes 0.
    events = []
    for s in range(800):
        variant = feedback.variant_for(f"shopper{s}", ["raw", "tuned"])
        base = {"search_id": f"s{s}", "variant": variant, "occurred_at": NOW.isoformat()}
        events.append({**base, "event_id": f"i{s}", "kind": "impression", "sku": "dress-1", "rank": 1})
        if s % 10 < (6 if variant == "tuned" else 4):
            events.append({**base, "event_id": f"c{s}", "kind": "click", "sku": "dress-1", "rank": 1})
    for start in range(0, len(events), feedback.MAX_EVENTS):
        shop.record_events(events[start : start + feedback.MAX_EVENTS])
    report = shop.report(NOW - timedelta(hours=1), NOW + timedelta(hours=1))
    raw, tuned = report.variants
    assert 300 < raw.searches < 500 and raw.searches + tuned.searches == 800  # the hash splits about evenly
    difference = report.comparisons[0].searches_clicked
    assert 0.1 < difference.value < 0.3 and difference.low > 0


def test_a_shopper_always_gets_the_same_variant() -> None:
    arms = [feedback.variant_for(f"shopper{i}", ["a", "b"], [0.9, 0.1]) for i in range(2000)]
    assert arms == [feedback.variant_for(f"shopper{i}", ["a", "b"], [0.9, 0.1]) for i in range(2000)]
    assert 0.85 < arms.count("a") / len(arms) < 0.95
    with pytest.raises(InvalidQueryError):
        feedback.variant_for("x", [])


@pytest.mark.parametrize(
    ("event", "words"),
    [
        ({"event_id": "x", "kind": "view", "search_id": "s"}, "kind must be one of"),
        ({"event_id": "", "kind": "click", "search_id": "s"}, "event_id"),
        ({"event_id": "x", "kind": "click"}, "search_id"),
        ({"event_id": "x\x00", "kind": "click", "search_id": "s"}, "NUL"),
        ({"event_id": "x", "kind": "click", "search_id": "s", "rank": 0}, "rank must be between 1"),
        ({"event_id": "x", "kind": "click", "search_id": "s", "rank": "1"}, "whole number"),
        ({"event_id": "x", "kind": "click", "search_id": "s", "occurred_at": "2026-12-07T10:00"}, "time zone"),
        ({"event_id": "x", "kind": "click", "search_id": "s", "occurred_at": "yesterday"}, "ISO 8601"),
        ({"event_id": "x", "kind": "purchase", "search_id": "s", "value": -1}, "value must be a number >= 0"),
        ({"event_id": "x", "kind": "purchase", "search_id": "s", "value": "NaN"}, "value must be a number"),
        ({"event_id": "x", "kind": "click", "search_id": "s", "price": 3}, "unknown event field"),
        ({"event_id": "x" * 201, "kind": "click", "search_id": "s"}, "event_id"),
    ],
)
def test_a_bad_event_refuses_its_batch_with_the_reason(shop: Catalogue, event: dict[str, Any], words: str) -> None:
    good = {"event_id": "ok", "kind": "click", "search_id": "s"}
    with pytest.raises(InvalidQueryError, match=words):
        shop.record_events([good, event])
    assert shop.report(NOW - timedelta(days=1), NOW + timedelta(days=1)).total.clicks == 0


def test_batches_are_bounded(shop: Catalogue) -> None:
    too_many = ({"event_id": str(i), "kind": "click", "search_id": "s"} for i in range(feedback.MAX_EVENTS + 1))
    with pytest.raises(InvalidQueryError, match="at most 1000"):
        shop.record_events(too_many)
    with pytest.raises(InvalidQueryError, match="twice"):
        shop.record_events([{"event_id": "a", "kind": "click", "search_id": "s"}] * 2)
    with shop.engine().begin() as conn, pytest.raises(sa.exc.DBAPIError, match="at most 1000"):
        conn.execute(
            sa.text("SELECT imgsearch_record_events(CAST(:e AS jsonb))"),
            {"e": json.dumps([{"event_id": str(i), "kind": "click", "search_id": "s"} for i in range(1001)])},
        )


def test_the_websites_reader_role_records_through_the_function_only(shop: Catalogue, engine: Engine) -> None:
    role = f"web_{uuid.uuid4().hex[:8]}"
    roles.grant_reader(engine, role)
    with engine.begin() as conn:
        conn.execute(sa.text(f'ALTER ROLE "{role}" LOGIN'))
    reader = db.create_engine(
        make_url(engine.url.render_as_string(hide_password=False))
        .set(username=role)
        .render_as_string(hide_password=False)
    )
    try:
        web = Catalogue(reader)
        assert web.record_events([{"event_id": "r1", "kind": "click", "search_id": "s", "sku": "dress-1"}]).stored == 1
        assert web.report().total.clicks == 1
        with reader.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="permission denied"):
            conn.execute(
                sa.text(
                    "INSERT INTO search_events (event_id, kind, occurred_at, search_id) "
                    "VALUES ('x', 'click', now(), 's')"
                )
            )
        with reader.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="permission denied"):
            conn.execute(sa.text("DELETE FROM search_events"))
    finally:
        reader.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f'REVOKE ALL ON ALL TABLES IN SCHEMA imgsearch FROM "{role}"'))
        roles.revoke_reader(engine, role)


def test_retention_forgets_old_events_only(shop: Catalogue) -> None:
    old = (NOW - timedelta(days=10)).isoformat()
    shop.record_events(
        [
            {"event_id": "old", "kind": "click", "search_id": "s", "occurred_at": old},
            {"event_id": "new", "kind": "click", "search_id": "s"},
        ]
    )
    assert shop.forget_events(7) == 1
    assert shop.forget_events(7) == 0
    assert shop.report(NOW - timedelta(days=30), NOW + timedelta(minutes=1)).total.clicks == 1
    with pytest.raises(InvalidQueryError, match="at least 1 day"):
        shop.forget_events(-1)


def test_the_commands(shop: Catalogue, database_url: str, tmp_path: Path) -> None:
    def run(*args: str, code: int = 0, input: str | None = None) -> Any:
        result = CliRunner().invoke(main, ["--database-url", database_url, *args], input=input)
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        return result

    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join(json.dumps(e) for e in _events()) + "\n\n")
    assert run("events", "record", str(lines)).stdout.strip() == f"stored {len(_events())} events, 0 already stored"
    assert (
        run("events", "record", "-", input=lines.read_text())
        .stdout.strip()
        .endswith(f"{len(_events())} already stored")
    )
    table = run("report", "--since", "1d").stdout
    assert "tuned against raw" in table and "rank  impressions" in table and "shoes" in table
    data = json.loads(run("report", "--since", "1d", "--format", "json").stdout)
    assert [v["variant"] for v in data["variants"]] == ["raw", "tuned"] and data["by_rank"][0]["clicks"] == 4
    page = tmp_path / "report.html"
    run("report", "--since", (NOW - timedelta(days=1)).date().isoformat(), "--format", "html", "--out", str(page))
    html = page.read_text()
    assert html.startswith("<!doctype html>") and html.count("<svg") == 2 and "<script" not in html
    assert "no events in this window" in run("report", "--since", "2020-01-01", "--until", "2020-02-01").stdout
    bad = run("report", "--since", "last week", code=2)
    assert "neither an ISO 8601 date/time nor an age" in bad.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"event_id": "z", "kind": "click", "search_id": "s"}\nnot json\n')
    assert "line 2 is not a JSON object" in run("events", "record", str(broken), code=1).stderr
    refused = tmp_path / "refused.jsonl"
    refused.write_text('{"event_id": "z", "kind": "glance", "search_id": "s"}\n')
    assert run("events", "record", str(refused), code=1).stderr.startswith("Error: kind must be one of")
    assert run("events", "forget", "--days", "1").stdout.strip() == "deleted 0 events older than 1 days"


def test_0012_adds_the_events_to_a_populated_catalogue_and_takes_them_back(make_database: Callable[..., str]) -> None:
    engine = db.create_engine(make_database())
    schema.upgrade(engine, "0011")
    vectors = np.random.default_rng(3).normal(size=(300, 512)).astype(np.float32)
    catalogue.upsert_products(
        engine, [ProductRecord(sku=f"p{i}", category=f"c{i % 4}", embedding=v) for i, v in enumerate(vectors)]
    )

    def rows() -> list[Any]:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT p.sku, p.category, i.embedding::text FROM imgsearch.products p "
                    "JOIN imgsearch.product_images i ON i.product_id = p.id ORDER BY p.sku"
                )
            ).all()

    before = rows()
    schema.upgrade(engine)
    assert rows() == before
    shop = Catalogue(engine)
    assert shop.record_events([{"event_id": "e", "kind": "click", "search_id": "s", "sku": "p1"}]).stored == 1
    assert shop.report().by_category == [("c1", 0, 1, 0.0, 0)]
    schema.downgrade(engine, "0011")
    assert rows() == before
    with engine.connect() as conn:
        gone = conn.execute(
            sa.text("SELECT to_regclass('imgsearch.search_events'), to_regproc('imgsearch.imgsearch_record_events')")
        ).one()
    assert gone == (None, None)
    schema.upgrade(engine)
    assert rows() == before
    engine.dispose()


def test_a_window_that_ends_before_it_starts_is_refused(shop: Catalogue) -> None:
    with pytest.raises(InvalidQueryError, match="before"):
        shop.report(NOW, NOW - timedelta(days=1))
    with pytest.raises(InvalidQueryError, match="time zone"):
        shop.report(datetime(2026, 1, 1), NOW)


def test_concurrent_writers_sending_overlapping_batches_keep_the_sums_exact(shop: Catalogue) -> None:
    # Eight writers, each resending some of the others' events, in different orders: no deadlock, each event
    # stored once, and the sums the report reads equal the events themselves.
    import random
    import threading

    events = []
    for s in range(300):
        base = {"search_id": f"s{s}", "variant": "ab"[s % 2], "occurred_at": (NOW - timedelta(hours=s % 5)).isoformat()}
        for rank in range(1, 4):
            events.append({**base, "event_id": f"i{s}.{rank}", "kind": "impression", "sku": "dress-1", "rank": rank})
        if s % 3:
            events.append({**base, "event_id": f"c{s}", "kind": "click", "sku": "shoes-3", "rank": 1 + s % 3})
        if s % 7 == 0:
            events.append({**base, "event_id": f"b{s}", "kind": "purchase", "sku": "shoes-3", "value": "9.99"})
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            mine = random.Random(seed).sample(events, len(events) * 2 // 3)
            for start in range(0, len(mine), 50):
                shop.record_events(mine[start : start + 50])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with shop.engine().connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM search_events")).scalar_one()
        clicked = conn.execute(
            sa.text("SELECT count(DISTINCT search_id) FROM search_events WHERE kind = 'click'")
        ).scalar_one()
    sent = {e["event_id"] for e in events}
    report = shop.report(NOW - timedelta(days=1), NOW + timedelta(hours=1))
    total = report.total
    assert stored == len(sent) == total.impressions + total.clicks + total.purchases
    assert (total.impressions, total.clicks, total.purchases) == (900, 200, 43)
    assert total.searches == 300 and round(total.searches_clicked * 300) == clicked == 200
    assert total.revenue == Decimal("9.99") * 43
    assert total.mean_reciprocal_rank == pytest.approx(sum(1 / (1 + s % 3) for s in range(300) if s % 3) / 300)
