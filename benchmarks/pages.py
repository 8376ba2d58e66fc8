"""What a page further down costs: ``offset`` and ``cursor`` searches by depth, on a catalogue already loaded.

A search's page n is the ranking's results ``(n-1)k+1`` to ``nk``: the database ranks the first ``nk`` and the
library keeps the last ``k`` (``offset``), or ranks up to ``nk + 2k`` and starts after the product a ``cursor``
names (:func:`imgsearch.query.page`). This measures, per depth and filter class, the p50/p95 of one page (k 10)
through the Python API, each way, interleaved query by query, and checks that both ways give the same page when
the catalogue does not change. Queries are stored photo vectors plus a little noise. Run from the repository root
on a home that ``benchmarks/filtered_search.py`` (or ``search.py``) loaded::

    .venv/bin/python -m benchmarks.pages --home /tmp/bench/fs50 --name pages-50k
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from benchmarks.common import (
    git_commit,
    load_average,
    log,
    machine,
    md_table,
    percentiles,
    start_server,
    stop_server,
    stored_query_vectors,
    write_results,
)
from imgsearch import db, query, schema

K = 10
DEPTHS = (1, 2, 5, 10, 25, 50, 100)


def _classes(engine: sa.Engine) -> list[tuple[str, dict[str, Any]]]:
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
        sizes = conn.execute(sa.text("SELECT category, count(*) FROM products GROUP BY category")).all()
    category, count = min(sizes, key=lambda row: abs(row[1] / total - 0.05))
    return [
        ("none", {"in_stock_only": False}),
        (f"in stock + a category of {count / total:.1%}", {"categories": [category]}),
    ]


def measure(engine: sa.Engine, options: dict[str, Any], queries: np.ndarray, depth: int) -> dict[str, Any]:
    """p50/p95 of page ``depth`` by offset and by cursor (the cursor taken from the page before, not timed)."""
    times: dict[str, list[float]] = {"offset": [], "cursor": []}
    same = 0
    for i, q in enumerate(queries):
        before = (depth - 1) * K
        cursor = query.search(engine, q, before, **options)[-1].cursor if before else None
        order = ("offset", "cursor") if i % 2 == 0 else ("cursor", "offset")
        pages: dict[str, list[str]] = {}
        for way in order:
            page: dict[str, Any] = {"offset": before} if way == "offset" else {"cursor": cursor}
            started = time.perf_counter()
            found = query.search(engine, q, K, **options, **page)
            times[way].append((time.perf_counter() - started) * 1000)
            pages[way] = [r.sku for r in found]
        same += pages["offset"] == pages["cursor"]
    return {"depth": depth, **{way: percentiles(v) for way, v in times.items()}, "same_page": same / len(queries)}


def measure_deep(engine: sa.Engine, options: dict[str, Any], queries: np.ndarray) -> list[dict[str, Any]]:
    """p50/p95 of pages 101 and 102 by cursor (past the 1000th result: no offset reaches them; revision 0020)."""
    times: dict[int, list[float]] = {101: [], 102: []}
    for q in queries:
        cursor = query.search(engine, q, 1000, **options)[-1].cursor
        for depth in (101, 102):
            started = time.perf_counter()
            found = query.search(engine, q, K, cursor=cursor, **options)
            times[depth].append((time.perf_counter() - started) * 1000)
            cursor = found[-1].cursor
    return [{"depth": depth, "offset": None, "cursor": percentiles(v), "same_page": None} for depth, v in times.items()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {
        "machine": machine(),
        "commit": git_commit(),
        "load_at_start": load_average(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "classes": [],
    }
    engine = db.create_engine(start_server(args.home))
    try:
        schema.upgrade(engine)
        with engine.connect() as conn:
            result["products"] = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
        rng = np.random.default_rng(args.seed)
        for name, options in _classes(engine):
            queries = stored_query_vectors(engine, options.get("categories"), args.queries, rng)
            for q in queries:  # warm: the server was just started; every query's deepest page once
                query.search(engine, q, K, offset=1000 - K, **options)
            rows = []
            for depth in DEPTHS:
                rows.append(measure(engine, options, queries, depth))
                log(f"{name}: page {depth}: {rows[-1]}")
            rows += measure_deep(engine, options, queries)
            log(f"{name}: pages 101-102: {rows[-2:]}")
            result["classes"].append({"name": name, "options": options, "pages": rows})
    finally:
        engine.dispose()
        stop_server(args.home)
    result["load_at_end"] = load_average()
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Pages: what a page further down costs, {result['products']:,} products",
        "",
        f"`python -m benchmarks.pages --home {result['args']['home']} --name {result['args']['name']}` at commit "
        f"{result['commit']}; {m.get('cpu', '')}, {m.get('cores', '')} cores; load {result['load_at_start']} at "
        f"start, {result['load_at_end']} at end; wall time {result['wall_s']} s.",
        "",
        f"Page n of a search (k {K}) through the Python API, by `offset` ((n-1)k) and by the `cursor` of result "
        f"(n-1)k (taken from an earlier search, not timed), interleaved, {result['args']['queries']} queries per "
        "page (stored photo vectors plus noise); p50 / p95 in ms. `same page`: share of queries whose two pages "
        "were the same products in the same order (the catalogue did not change). Below 1 where the HNSW index is "
        "walked: a walk asked for more results finds a few products a shorter walk missed (approximate search), "
        "so the two ways differ by those; ranking is exact on what was found, so a cursor page never repeats a "
        "product ranked before its cursor. Pages 101-102 lie past the 1000th result, which no offset reaches: the "
        "cursor goes on with the products after it, ranked exactly over the whole filter (revision 0020).",
        "",
    ]
    for c in result["classes"]:
        lines += [f"## {c['name']}", ""]
        rows = [
            [
                p["depth"],
                f"{(p['depth'] - 1) * K + 1}-{p['depth'] * K}",
                "-" if p["offset"] is None else f"{p['offset']['p50_ms']} / {p['offset']['p95_ms']}",
                f"{p['cursor']['p50_ms']} / {p['cursor']['p95_ms']}",
                "-" if p["same_page"] is None else p["same_page"],
            ]
            for p in c["pages"]
        ]
        lines += [md_table(["page", "results", "offset p50 / p95", "cursor p50 / p95", "same page"], rows), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="server home of a loaded catalogue")
    parser.add_argument("--queries", type=int, default=50, help="queries per page depth and class")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--name", default="pages", help="results file name")
    args = parser.parse_args()
    result = run(args)
    write_results(args.name, result, markdown(result))


if __name__ == "__main__":
    main()
