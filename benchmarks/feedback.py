"""Shoppers' events: how many a second the embedded server stores from concurrent writers, and how long the report
takes over millions of them.

Writers: ``--writers`` threads (8), each sending batches of ``--batch`` events (100) through
``Catalogue.record_events`` (the path of ``POST /events``) for ``--duration`` seconds, every event with its own id;
then the events counted in the table must equal the events sent (nothing lost), and a batch sent again must store
nothing. Report: ``--events`` events (10 million) generated in the server over 30 days like a shop's traffic
(searches of 10 impressions, clicks falling with the rank, some carts and purchases, two variants, 30
categories) and stored through ``imgsearch_record_events`` in batches of about 700 from two connections, then
``Catalogue.report`` over the 30 days, timed 3 times. Results in ``benchmarks/results/feedback.{json,md}``.

    .venv/bin/python -m benchmarks.feedback
    .venv/bin/python -m benchmarks.feedback --events 1000000 --duration 10 --no-wait
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.common import (
    git_commit,
    load_average,
    log,
    machine,
    md_table,
    start_server,
    stop_server,
    wait_for_quiet,
    write_results,
)
from imgsearch import Catalogue, db, embedded_server, schema

# Searches of 10 results: an impression each, a click with a probability falling with the rank, a cart and a
# purchase for some; variant by search, category by result. Built in the server as one JSON batch per call and
# stored through imgsearch_record_events, as a website's batches are (so the report's sums are kept as in use).
_GENERATE = """
SELECT imgsearch_record_events(jsonb_agg(jsonb_build_object(
    'event_id', 'g' || s || '.' || r || '.' || k, 'kind', k,
    'occurred_at', CAST(:start AS timestamptz) + (s::double precision / :searches) * interval '30 days',
    'search_id', 's' || s, 'shopper', 'shopper' || (s % 200000), 'sku', 'sku' || ((s * 7 + r) % 50000),
    'rank', r, 'category', 'c' || ((s + r) % 30), 'variant', CASE WHEN s % 2 = 0 THEN 'raw' ELSE 'tuned' END,
    'value', CASE WHEN k = 'purchase' THEN 10 + (s % 90) END)))
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS s,
     generate_series(1, 10) AS r,
     LATERAL (SELECT 'impression' AS k
              UNION ALL SELECT 'click' WHERE (hashint8(s * 16 + r) & 1023) < 400 / r + (s % 2) * 20
              UNION ALL SELECT 'add_to_cart' WHERE (hashint8(s * 16 + r) & 1023) < 80 / r
              UNION ALL SELECT 'purchase' WHERE (hashint8(s * 16 + r) & 1023) < 40 / r) AS kinds
"""
#: Searches per call: about 11.6 events each (up to about 20), so batches under the limit of 1000.
_SEARCHES_PER_CALL = 60


def _writers(shop: Catalogue, writers: int, batch: int, duration: float) -> dict[str, Any]:
    sent = [0] * writers
    errors: list[BaseException] = []
    stop = time.perf_counter() + duration
    run = uuid.uuid4().hex[:8]

    def work(w: int) -> None:
        n = 0
        try:
            while time.perf_counter() < stop:
                events = [
                    {
                        "event_id": f"{run}.{w}.{n + i}",
                        "kind": "impression" if (n + i) % 5 else "click",
                        "search_id": f"{run}.{w}.{(n + i) // 10}",
                        "sku": f"sku{(n + i) % 1000}",
                        "rank": (n + i) % 10 + 1,
                        "variant": "raw",
                    }
                    for i in range(batch)
                ]
                shop.record_events(events)
                n += batch
                sent[w] = n
        except BaseException as exc:  # reported below
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    with shop.engine().connect() as conn:
        stored = conn.execute(
            sa.text("SELECT count(*) FROM search_events WHERE event_id LIKE :p"), {"p": f"{run}.%"}
        ).scalar_one()
    again = shop.record_events(
        [{"event_id": f"{run}.0.{i}", "kind": "impression", "search_id": "x"} for i in range(batch)]
    )
    return {
        "writers": writers,
        "batch": batch,
        "seconds": round(seconds, 2),
        "sent": sum(sent),
        "stored": int(stored),
        "per_second": round(sum(sent) / seconds, 1),
        "resent_batch_stored": again.stored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events for the report")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of writing")
    parser.add_argument("--home", type=Path, default=None, help="throwaway server (default: a temporary folder)")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--name", default="feedback", help="result file name")
    args = parser.parse_args()

    quiet = {} if args.no_wait else wait_for_quiet()
    home = args.home or Path(tempfile.mkdtemp(prefix="imgsearch-feedback-"))
    before = load_average()
    url = start_server(home)
    try:
        engine = db.create_engine(url, pool_size=args.writers + 2)
        schema.upgrade(engine)
        # The website's role: the embedded reader (imgsearch_record_events is SECURITY DEFINER).
        reader = db.create_engine(embedded_server.url_for(url, "reader"), pool_size=args.writers + 2)
        shop = Catalogue(reader)
        log(f"{args.writers} writers for {args.duration:.0f} s")
        writing = _writers(shop, args.writers, args.batch, args.duration)
        log(f"writers: {writing}")

        searches = args.events // 12  # about 11.6 events a search with the rates above
        start = datetime.now(UTC) - timedelta(days=30)
        log(f"generating about {args.events:,} events ({searches:,} searches)")
        t = time.perf_counter()
        chunks = [(f, min(f + _SEARCHES_PER_CALL, searches) - 1) for f in range(0, searches, _SEARCHES_PER_CALL)]

        def generate(part: list[tuple[int, int]]) -> None:
            for first, last in part:
                with engine.begin() as conn:
                    conn.execute(
                        sa.text(_GENERATE), {"start": start, "searches": searches, "first": first, "last": last}
                    )

        threads = [threading.Thread(target=generate, args=(chunks[i::2],)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE search_events"))
            total = conn.execute(sa.text("SELECT count(*) FROM search_events")).scalar_one()
        generated = time.perf_counter() - t
        log(f"{total:,} events in {generated:.0f} s")
        times = []
        report = None
        for _ in range(3):
            t = time.perf_counter()
            report = shop.report(start - timedelta(minutes=1), datetime.now(UTC) + timedelta(minutes=1))
            times.append(time.perf_counter() - t)
            log(f"report in {times[-1]:.2f} s")
        assert report is not None
        engine.dispose()
        reader.dispose()
    finally:
        stop_server(home)
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    after = load_average()
    result = {
        "commit": git_commit(),
        "machine": machine(),
        "load_before": before,
        "load_after": after,
        "waited_for_quiet": quiet,
        "writers": writing,
        "events": int(total),
        "generated_seconds": round(generated, 1),
        "report_seconds": [round(x, 3) for x in times],
        "report_total": report.as_dict()["total"],
        "report_variants": report.as_dict()["variants"],
    }
    rows = [
        [
            f"{writing['writers']} writers x batches of {writing['batch']}",
            f"{writing['per_second']:,.0f} events/s",
            f"sent {writing['sent']:,}, stored {writing['stored']:,}; the first batch sent again stored "
            f"{writing['resent_batch_stored']}",
        ],
        [
            f"report over {int(total):,} events (30 days)",
            f"{sorted(times)[1]:.2f} s (median of 3: {', '.join(f'{x:.2f}' for x in times)})",
            f"{report.total.searches:,} searches, CTR {100 * report.total.click_through:.1f}%, "
            f"MRR {report.total.mean_reciprocal_rank:.3f}",
        ],
    ]
    m = result["machine"]
    markdown = "\n\n".join(
        [
            "# Shoppers' events: writing and reporting",
            f"Embedded PostgreSQL, commit {result['commit']}, {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
            f"load {before} before, {after} after.",
            md_table(["what", "result", "detail"], rows),
            "Command: `python -m benchmarks.feedback"
            + (f" --events {args.events}" if args.events != 10_000_000 else "")
            + (f" --duration {args.duration:g}" if args.duration != 30 else "")
            + "`",
        ]
    )
    json_path, md_path = write_results(args.name, result, markdown)
    log(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
