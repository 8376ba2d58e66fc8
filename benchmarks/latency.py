"""Single-client latency of ``imgsearch.query.search`` on a catalogue an earlier benchmark run loaded.

The full search benchmark (``benchmarks/search.py``) rebuilds or reuses a catalogue and measures recall,
throughput and the other methods as well; this script only re-measures latency per filter class, through the
Python query module and through the SQL function called directly with psycopg, so a change to the client path
can be measured at scale in a few minutes. Queries are stored catalogue vectors plus a little noise (so they
are not in the catalogue). Run from the repository root::

    .venv/bin/python -m benchmarks.latency --home /tmp/imgsearch-bench-1m --name latency-1m
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
    wait_for_quiet,
    write_results,
)
from imgsearch import db, query


def _filter_classes(engine: sa.Engine) -> list[tuple[str, dict[str, Any]]]:
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
        sizes = conn.execute(sa.text("SELECT category, count(*) FROM products GROUP BY category")).all()
    classes: list[tuple[str, dict[str, Any]]] = [("none", {"in_stock_only": False}), ("in stock", {})]
    for share in (0.10, 0.01, 0.001):
        category, count = min(sizes, key=lambda row: abs(row[1] / total - share))
        classes.append((f"~{share:.1%} category ({count / total:.2%}) + in stock", {"categories": [category]}))
    return classes


def main() -> None:
    """Measure and write ``benchmarks/results/<name>.json`` and ``.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="server home of an earlier benchmark run")
    parser.add_argument("--queries", type=int, default=200, help="queries per filter class")
    parser.add_argument("--name", default="latency", help="result file name")
    parser.add_argument("--max-wait", type=float, default=900.0, help="longest wait for a quiet machine (s)")
    args = parser.parse_args()

    quiet = wait_for_quiet(max_wait=args.max_wait)
    url = start_server(args.home)
    engine = db.create_engine(url)
    rng = np.random.default_rng(0)
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
    log(f"{n:,} products, {args.queries} queries per class")

    rows, result = [], {"machine": machine(), "commit": git_commit(), "products": n, "quiet": quiet, "classes": {}}
    with db.psycopg_connect(url, autocommit=True) as raw:
        for label, kwargs in _filter_classes(engine):
            queries = stored_query_vectors(engine, kwargs.get("categories"), args.queries + 20, rng)
            for q in queries[:20]:  # warm the caches
                query.search(engine, q, 10, **kwargs)
            python_ms, sql_ms = [], []
            for i, q in enumerate(queries[20:]):
                text = "[" + ",".join(f"{x:.7g}" for x in q) + "]"
                # Alternate which path goes first: the first one to touch a query's index pages pays to
                # bring them into shared buffers.
                for path in ("python", "sql") if i % 2 else ("sql", "python"):
                    started = time.perf_counter()
                    if path == "python":
                        query.search(engine, q, 10, **kwargs)
                    else:
                        raw.execute(
                            "SELECT * FROM imgsearch_similar(%s::vector, 10, %s, %s)",
                            (text, kwargs.get("categories"), kwargs.get("in_stock_only", True)),
                        ).fetchall()
                    (python_ms if path == "python" else sql_ms).append((time.perf_counter() - started) * 1000)
            py, sq = percentiles(python_ms), percentiles(sql_ms)
            result["classes"][label] = {"query_module_ms": py, "sql_function_ms": sq}
            rows.append([label, py["p50_ms"], py["p95_ms"], py["p99_ms"], sq["p50_ms"], sq["p95_ms"]])
            log(f"{label}: p50 {py['p50_ms']:.2f} ms (SQL function alone {sq['p50_ms']:.2f} ms)")
    result["load_average_after"] = load_average()
    engine.dispose()
    stop_server(args.home)
    markdown = "\n".join(
        [
            f"# Search latency: {n:,} products",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, commit {result['commit']}. "
            f"Load average at start {quiet['load_at_start']}, after {result['load_average_after']}. "
            f"{args.queries} queries per class (stored vectors of the filtered category plus noise), k = 10, "
            "one client; the query module and the SQL function alternate going first.",
            "",
            md_table(
                ["filter", "query.search p50 ms", "p95 ms", "p99 ms", "SQL function p50 ms", "SQL function p95 ms"],
                rows,
            ),
        ]
    )
    write_results(args.name, result, markdown)


if __name__ == "__main__":
    main()
