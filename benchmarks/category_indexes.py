"""Category-filtered search with and without category indexes, on a catalogue an earlier benchmark run loaded.

For a large (~10%) and a mid-sized (~2%) category, queries come either from the category itself (a shopper
browsing it) or from the rest of the catalogue (a photo of something else searched within the category, the
case the catalogue-wide index handles badly). Each class is measured through ``imgsearch.query.search``
(latency, and recall@10 against its exact mode) first with the catalogue-wide index alone, then after
``imgsearch.indexes.index_large_categories`` built an index for every category of at least
``--min-products`` products (build time and size recorded). The category indexes are dropped at the end
unless ``--keep-indexes``. Run from the repository root::

    .venv/bin/python -m benchmarks.category_indexes --home /tmp/imgsearch-bench-100k --name category-indexes-100k
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from pgvector.sqlalchemy import Vector

from benchmarks.common import (
    git_commit,
    load_average,
    log,
    machine,
    md_table,
    percentiles,
    start_server,
    stop_server,
    wait_for_quiet,
    write_results,
)
from imgsearch import db, indexes, query, schema

K = 10


def _categories(engine: sa.Engine) -> tuple[int, list[tuple[str, int]]]:
    """The catalogue size and the categories closest to 10% and 2% of it, with their sizes.

    Not 1%: at 100k products the in-stock part of a 1% category falls under ``imgsearch.exact_search_below`` and
    is searched exactly, without any index."""
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
        sizes = conn.execute(sa.text("SELECT category, count(*) FROM products GROUP BY category")).all()
    chosen = [min(sizes, key=lambda row: abs(row[1] / total - share)) for share in (0.10, 0.02)]
    return total, [(str(c), int(n)) for c, n in chosen]


def _queries(engine: sa.Engine, category: str, inside: bool, count: int, rng: np.random.Generator) -> np.ndarray:
    """Stored vectors from inside or outside ``category``, plus a little noise (so they are not stored)."""
    where = "category = :c" if inside else "category <> :c"
    statement = sa.text(f"SELECT embedding FROM products WHERE {where} ORDER BY random() LIMIT :n").columns(
        embedding=Vector(512)
    )
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT setseed(:s)"), {"s": float(rng.uniform(-1, 1))})
        stored = conn.execute(statement, {"c": category, "n": count}).scalars()
        base = np.stack([np.asarray(v, dtype=np.float32) for v in stored])
    return base + rng.normal(scale=0.02, size=base.shape).astype(np.float32)


def _measure(engine: sa.Engine, category: str, queries: np.ndarray) -> dict[str, Any]:
    """Latency percentiles and mean recall@10 (against exact search) of a category-filtered search."""
    for q in queries[:5]:  # warm the caches
        query.search(engine, q, K, categories=[category])
    times, recalls = [], []
    for q in queries[5:]:
        started = time.perf_counter()
        found = query.search(engine, q, K, categories=[category])
        times.append((time.perf_counter() - started) * 1000)
        exact = query.search(engine, q, K, categories=[category], exact=True)
        recalls.append(len({r.sku for r in found} & {r.sku for r in exact}) / len(exact))
    return {**percentiles(times), "recall_at_10": round(float(np.mean(recalls)), 4), "queries": len(times)}


def main() -> None:
    """Measure and write ``benchmarks/results/<name>.json`` and ``.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="server home of an earlier benchmark run")
    parser.add_argument("--queries", type=int, default=50, help="queries per class")
    parser.add_argument("--min-products", type=int, default=1000, help="index categories of at least this size")
    parser.add_argument("--keep-indexes", action="store_true", help="leave the category indexes in place")
    parser.add_argument("--name", default="category-indexes", help="result file name")
    parser.add_argument("--max-wait", type=float, default=900.0, help="longest wait for a quiet machine (s)")
    args = parser.parse_args()

    quiet = wait_for_quiet(max_wait=args.max_wait)
    url = start_server(args.home)
    engine = db.create_engine(url)
    schema.upgrade(engine)
    for existing in indexes.list_category_indexes(engine):
        indexes.drop_category_index(engine, existing.category)
    total, chosen = _categories(engine)
    rng = np.random.default_rng(0)
    classes = [
        (category, size, inside, _queries(engine, category, inside, args.queries + 5, rng))
        for category, size in chosen
        for inside in (True, False)
    ]
    log(f"{total:,} products; categories {chosen}; {args.queries} queries per class")

    result: dict[str, Any] = {"machine": machine(), "commit": git_commit(), "products": total, "quiet": quiet}
    before = {}
    for category, _, inside, queries in classes:
        before[(category, inside)] = _measure(engine, category, queries)
        log(f"without category indexes, {category} {'inside' if inside else 'outside'}: {before[(category, inside)]}")

    started = time.perf_counter()
    built = indexes.index_large_categories(
        engine, args.min_products, on_created=lambda i: log(f"built {i.category} ({i.products:,} products)")
    )
    build_s = time.perf_counter() - started
    with engine.connect() as conn:
        main_index_bytes = conn.execute(sa.text("SELECT pg_relation_size('ix_products_embedding')")).scalar_one()
    result["build"] = {
        "min_products": args.min_products,
        "indexes": len(built),
        "products_covered": sum(i.products for i in built),
        "seconds": round(build_s, 1),
        "size_bytes": sum(i.size_bytes for i in built),
        "catalogue_index_bytes": main_index_bytes,
    }
    log(f"built {len(built)} category indexes in {build_s:.0f} s")

    rows, result["classes"] = [], []
    for category, size, inside, queries in classes:
        after = _measure(engine, category, queries)
        b = before[(category, inside)]
        origin = "the category" if inside else "other categories"
        result["classes"].append(
            {"category": category, "size": size, "queries_from": origin, "without": b, "with": after}
        )
        rows.append(
            [
                f"{category} ({size:,}, {size / total:.1%})",
                origin,
                b["p50_ms"],
                b["p95_ms"],
                b["recall_at_10"],
                after["p50_ms"],
                after["p95_ms"],
                after["recall_at_10"],
            ]
        )
        log(f"with category indexes, {category} {origin}: {after}")
    if not args.keep_indexes:
        for index in built:
            indexes.drop_category_index(engine, index.category)
    result["load_average_after"] = load_average()
    engine.dispose()
    stop_server(args.home)
    build = result["build"]
    markdown = "\n".join(
        [
            f"# Category indexes: {total:,} products",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, commit {result['commit']}. "
            f"Load average at start {quiet['load_at_start']}, after {result['load_average_after']}. "
            f"{args.queries} queries per class (stored vectors plus noise), k = {K}, in-stock products, one "
            "client, through `imgsearch.query.search`; recall@10 against its exact mode.",
            "",
            f"Built {build['indexes']} category indexes (every category of at least {args.min_products:,} "
            f"products: {build['products_covered']:,} products) in {build['seconds']} s; together "
            f"{build['size_bytes'] / 2**20:.0f} MiB, against {build['catalogue_index_bytes'] / 2**20:.0f} MiB for "
            "the catalogue-wide index.",
            "",
            md_table(
                [
                    "filter: category",
                    "queries from",
                    "without: p50 ms",
                    "p95 ms",
                    "recall@10",
                    "with: p50 ms",
                    "p95 ms",
                    "recall@10",
                ],
                rows,
            ),
        ]
    )
    write_results(args.name, result, markdown)


if __name__ == "__main__":
    main()
