"""At a million products, side by side in one run: imgsearch, the naive pgvector query and the previous release,
for filters that do not follow the photo; stock and price syncs; half-precision indexes; a tuned search space.

The catalogue: N products with one photo each, vectors synthesized from real embeddings (``benchmarks.search``:
mixes of 2-3 photos of one class plus noise). Most products' category is their class (it follows the photo);
three categories are spread over the whole space, like a brand, a sale or "shirts" searched with a photo of
shoes: ``brand`` (10% of products, drawn at random), ``sale`` (1%) and ``rare`` (0.1%). 80% are in stock.
Queries are made like the catalogue's, from every class: a filter's products are rarely near its queries.

Steps (``--steps``, all by default):

- ``load``: the catalogue into imgsearch's schema (head revision) and, for comparison, into a second schema at
  revision 0002, the previous release (one photo per product, its search function); both HNSW indexes built.
- ``indexes``: the category-index maintenance that ``imgsearch ingest`` runs after every load (timed).
- ``search``: recall@10 against exact NumPy, how often exactly 10 came back, p50/p99 over the queries, for
  imgsearch (``query.search``, and its SQL function over plain psycopg), the naive query (``ORDER BY
  embedding::halfvec(512) <=> q LIMIT 10``, the index's own expression) at pgvector's default ef_search and at
  100, and the previous release, per filter class.
- ``sync``: a stock file flipping 5% of the in-stock flags through ``imgsearch stock --csv``, then one changing
  5% of the prices: time, HOT updates (pg_stat_user_tables), the HNSW index's size before and after; then both
  put back as loaded.
- ``halfvec``: HNSW indexes over ``vector(512)`` and over ``embedding::halfvec(512)`` built side by side (the
  same settings), their sizes, and recall@10 and latency of unfiltered queries through each at ef_search 40 and
  100; both dropped afterwards.
- ``writer``: the ingestion writer's ceiling: new products with their vectors upserted in batches of 256 (what
  ``imgsearch ingest`` commits at a time) into the indexed catalogue, rows/s; then removed again.
- ``tune``: ``imgsearch tune`` at this size (learning from a 100k-product sample, projecting every photo, the
  indexes, the swap), each step timed; the cost of projecting a query in SQL; unfiltered and category searches
  in the tuned space beside the raw one; then ``--drop``.

Results in ``benchmarks/results/scale-<N>.{json,md}``.

    .venv/bin/python -m benchmarks.scale --images ../shared/datasets/myntra-fashion-products             # 1M
    .venv/bin/python -m benchmarks.scale --n 200000 --images ../shared/datasets/myntra-fashion-products
    .venv/bin/python -m benchmarks.scale --reuse --steps search        # again, on the catalogue loaded before
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEFAULT_CACHE,
    EXAMPLES,
    NAIVE_ORDER,
    build_photo_index,
    cached_embeddings,
    copy_catalogue,
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
from benchmarks.search import build_catalogue, exact_topk, query_vectors

K = 10
#: The categories spread over the whole space, and their shares of the catalogue.
SPREAD = {"brand": 0.10, "sale": 0.01, "rare": 0.001}
#: The schema holding the previous release's layout and function, for comparison.
PREVIOUS_SCHEMA = "imgsearch_previous"
PREVIOUS_REVISION = "0002"
STEPS = ("load", "indexes", "search", "sync", "halfvec", "writer", "tune")


def spread_categories(classes: list[str], category: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Each product's category: its class, except the SPREAD shares, drawn at random across all classes."""
    names = [classes[c] for c in category]
    order = rng.permutation(len(names))
    start = 0
    for name, share in SPREAD.items():
        count = round(share * len(names))
        for i in order[start : start + count]:
            names[i] = name
        start += count
    return names


def filter_classes(categories: np.ndarray, in_stock: np.ndarray) -> list[tuple[str, dict[str, Any], np.ndarray]]:
    """(name, search options, row mask) of each filter class."""
    out = [("none", {"in_stock_only": False}, np.ones(len(categories), bool))]
    out.append(("in stock", {"in_stock_only": True}, in_stock))
    for name, share in SPREAD.items():
        out.append(
            (
                f"{share:.1%} category ({name}) + in stock",
                {"categories": [name], "in_stock_only": True},
                (categories == name) & in_stock,
            )
        )
    return out


def load(
    url: str, skus: list[str], categories: list[str], prices: np.ndarray, stock: np.ndarray, vectors: np.ndarray
) -> dict[str, Any]:
    """Both layouts loaded and indexed; the category-index maintenance timed."""
    from imgsearch import db, indexes, schema

    engine = db.create_engine(url)
    schema.upgrade(engine)
    previous = db.create_engine(url, schema=PREVIOUS_SCHEMA)
    schema.upgrade(previous, PREVIOUS_REVISION)
    result: dict[str, Any] = {}
    with db.psycopg_connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE products, product_images, tuned_images, photo_features CASCADE")
        conn.execute("DROP INDEX IF EXISTS ix_product_images_embedding")
        for index in indexes.list_category_indexes(engine):
            conn.execute(f'DROP INDEX IF EXISTS "{index.index_name}"')
        started = time.perf_counter()
        copy_catalogue(conn, skus, categories, prices, stock, vectors)
        result["copy_s"] = round(time.perf_counter() - started, 1)
        log(f"loaded {len(skus)} products in {result['copy_s']} s; building the HNSW index")
        started = time.perf_counter()
        build_photo_index(conn)
        result["hnsw_build_s"] = round(time.perf_counter() - started, 1)
        conn.execute("VACUUM ANALYZE products")
        conn.execute("VACUUM ANALYZE product_images")
    log(f"HNSW build {result['hnsw_build_s']} s; the previous release's layout")
    with db.psycopg_connect(url, schema=PREVIOUS_SCHEMA, autocommit=True) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        conn.execute("TRUNCATE products")
        conn.execute("DROP INDEX IF EXISTS ix_products_embedding")
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY products (sku, name, category, price, in_stock, embedding) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["text", "text", "text", "numeric", "bool", "vector"])
            for i, sku in enumerate(skus):
                copy.write_row(
                    (sku, f"product {i}", categories[i], Decimal(f"{prices[i]:.2f}"), bool(stock[i]), vectors[i])
                )
        started = time.perf_counter()
        conn.execute(
            "CREATE INDEX ix_products_embedding ON products "
            "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
        result["previous_hnsw_build_s"] = round(time.perf_counter() - started, 1)
        conn.execute("VACUUM ANALYZE products")
    engine.dispose()
    previous.dispose()
    return result


def maintain_indexes(url: str) -> dict[str, Any]:
    """The category-index maintenance that ``imgsearch ingest`` runs after every load, timed."""
    from imgsearch import db, indexes

    engine = db.create_engine(url)
    started = time.perf_counter()
    built = indexes.maintain_category_indexes(engine)
    out = {
        "seconds": round(time.perf_counter() - started, 1),
        "built": [i.category for i in built],
        "bytes": sum(i.size_bytes for i in indexes.list_category_indexes(engine)),
    }
    engine.dispose()
    log(f"category indexes: {len(out['built'])} built in {out['seconds']} s")
    return out


def tune(url: str, queries: np.ndarray) -> dict[str, Any]:
    """imgsearch tune at this size, step by step; the query projection's cost; searches tuned vs raw."""
    from pgvector.psycopg import register_vector

    from imgsearch import db, query, tuning

    engine = db.create_engine(url)
    marks: dict[str, float] = {}
    started = time.perf_counter()

    def progress(p: tuning.TuneProgress) -> None:
        if p.step not in marks:
            marks[p.step] = time.perf_counter() - started
            log(f"tune: {p.step} at {marks[p.step]:.0f} s")

    space = tuning.tune(engine, progress=progress)
    total = time.perf_counter() - started
    steps = [*marks, "done"]
    times = [*marks.values(), total]
    out: dict[str, Any] = {
        "space": space.id,
        "learnt_from_products": space.products,
        "seconds": {steps[i]: round(times[i + 1] - times[i], 1) for i in range(len(steps) - 1)},
        "total_s": round(total, 1),
    }
    with db.psycopg_connect(url, autocommit=True) as conn:
        register_vector(conn)
        latencies = []
        for q in queries[:200]:
            t = time.perf_counter()
            conn.execute("SELECT imgsearch_project(%s, %s)", (q, space.id)).fetchone()
            latencies.append((time.perf_counter() - t) * 1000)
        out["project_query"] = percentiles(latencies)
        out["tuned_bytes"] = conn.execute("SELECT pg_total_relation_size('tuned_images')").fetchone()[0]

    def timed(options: dict[str, Any]) -> dict[str, float]:
        for q in queries[:100]:  # a pass to warm the caches: the index just built pushed the other one out
            query.search(engine, q, K, **options)
        lat = []
        for q in queries[:100]:
            t = time.perf_counter()
            query.search(engine, q, K, **options)
            lat.append((time.perf_counter() - t) * 1000)
        return percentiles(lat)

    filters = {"none": {"in_stock_only": False}, "1% category": {"categories": ["sale"], "in_stock_only": True}}
    out["search_tuned"] = {name: timed(options) for name, options in filters.items()}
    tuning.drop(engine)
    out["search_raw"] = {name: timed(options) for name, options in filters.items()}
    log(f"tune: {out}")
    engine.dispose()
    return out


def halfvec(url: str, queries: np.ndarray, truth: np.ndarray, skus: list[str]) -> dict[str, Any]:
    """An HNSW index over half-precision copies of the vectors against one over the vectors, built in one run."""
    from pgvector.psycopg import register_vector

    from imgsearch import db

    kinds = {
        "vector": ("embedding", "vector_cosine_ops", "%s"),
        "halfvec": ("(embedding::halfvec(512))", "halfvec_cosine_ops", "%s::halfvec(512)"),
    }
    out: dict[str, Any] = {}
    with db.psycopg_connect(url, autocommit=True) as conn:
        register_vector(conn)
        for kind, (expression, opclass, _) in kinds.items():
            started = time.perf_counter()
            conn.execute(
                f"CREATE INDEX ix_bench_{kind} ON product_images USING hnsw ({expression} {opclass}) "
                "WITH (m = 16, ef_construction = 64)"
            )
            size = conn.execute(f"SELECT pg_relation_size('ix_bench_{kind}')").fetchone()[0]
            out[kind] = {"build_s": round(time.perf_counter() - started, 1), "bytes": size}
            log(f"halfvec: {kind} index {out[kind]}")
        for kind, (expression, _, parameter) in kinds.items():
            other = "halfvec" if kind == "vector" else "vector"
            conn.execute("BEGIN")
            # Only this kind's index may serve the query (DDL is transactional: rolled back below).
            conn.execute(f"DROP INDEX ix_bench_{other}")
            conn.execute("DROP INDEX ix_product_images_embedding")
            for ef in (40, 100):
                conn.execute(f"SET LOCAL hnsw.ef_search = {ef}")
                latencies: list[float] = []
                recalls: list[float] = []
                for _repeat in range(2):  # the first pass warms the index
                    latencies, recalls = [], []
                    for q, want in zip(queries, truth, strict=True):
                        started = time.perf_counter()
                        rows = conn.execute(
                            f"SELECT p.sku FROM product_images i JOIN products p ON p.id = i.product_id "
                            f"ORDER BY {expression.replace('embedding', 'i.embedding')} <=> {parameter} LIMIT {K}",
                            (q,),
                        ).fetchall()
                        latencies.append((time.perf_counter() - started) * 1000)
                        wanted = {skus[i] for i in want}
                        recalls.append(len({r[0] for r in rows} & wanted) / len(wanted))
                out[kind][f"ef{ef}"] = {"recall_at_10": round(float(np.mean(recalls)), 4), **percentiles(latencies)}
                log(f"halfvec: {kind} ef {ef} {out[kind][f'ef{ef}']}")
            conn.execute("ROLLBACK")
        for kind in kinds:
            conn.execute(f"DROP INDEX ix_bench_{kind}")
    return out


def writer(url: str, vectors: np.ndarray, categories: list[str], rows: int = 20_000) -> dict[str, Any]:
    """Rows/s of the ingestion's upserts (binary COPY and merge, every index maintained) at this size."""
    from imgsearch import catalogue, db
    from imgsearch.catalogue import ImageRecord, ProductRecord

    engine = db.create_engine(url)
    rng = np.random.default_rng(7)
    picks = rng.choice(len(vectors), size=rows, replace=False)
    records = [
        ProductRecord(
            sku=f"writer-{n}",
            category=categories[i],
            price=Decimal("19.99"),
            images=(ImageRecord(f"/photos/writer-{n}.jpg", vectors[i] + rng.normal(scale=0.01, size=512)),),
        )
        for n, i in enumerate(picks)
    ]
    started = time.perf_counter()
    for start in range(0, rows, 256):
        catalogue.upsert_products(engine, records[start : start + 256])
    seconds = time.perf_counter() - started
    catalogue.remove(engine, [r.sku for r in records])
    engine.dispose()
    out = {"rows": rows, "batch": 256, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds, 1)}
    log(f"writer: {out}")
    return out


def upgrade(url: str) -> dict[str, Any]:
    """A catalogue loaded by an older commit migrated to the head revision (timed: a shop's upgrade at 1M)."""
    from imgsearch import db, schema

    engine = db.create_engine(url)
    before = schema.current_revision(engine)
    started = time.perf_counter()
    schema.upgrade(engine)
    out = {"from": before, "to": schema.current_revision(engine), "seconds": round(time.perf_counter() - started, 1)}
    engine.dispose()
    if before is not None and before < "0007":
        # Pages written before revision 0007 are full: the one-time rewrite docs/operations.md describes.
        started = time.perf_counter()
        with db.psycopg_connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (FULL, ANALYZE) products")
        out["rewrite_products_s"] = round(time.perf_counter() - started, 1)
    log(f"upgrade: {out}")
    return out


def measure(
    url: str,
    fcs: list[tuple[str, dict[str, Any], np.ndarray]],
    queries: np.ndarray,
    truth: dict[str, np.ndarray],
    skus: list[str],
) -> list[dict[str, Any]]:
    """Recall, exactly-k and latency of each method for each filter class."""
    from pgvector.psycopg import register_vector

    from imgsearch import db, query

    engine = db.create_engine(url)
    previous = db.create_engine(url, schema=PREVIOUS_SCHEMA)
    # Raw psycopg connections (prepared statements after a few runs, as a web backend's driver would): the
    # naive query at pgvector's default ef_search (40) and at imgsearch's (100), and imgsearch's SQL function.
    connections = [db.psycopg_connect(url, autocommit=True) for _ in range(4)]
    naive, naive100, sql_face, sql_face40 = connections
    for conn in connections:
        register_vector(conn)
    naive100.execute("SET hnsw.ef_search = 100")
    sql_face40.execute("SET imgsearch.ef_search = 40")  # imgsearch's walk at pgvector's default

    def naive_on(conn: Any) -> Any:
        def run(options: dict[str, Any], q: np.ndarray) -> list[str]:
            where = ["true"]
            params: list[Any] = []
            if options.get("in_stock_only"):
                where.append("p.in_stock")
            if options.get("categories"):
                where.append("p.category = %s")
                params.append(options["categories"][0])
            rows = conn.execute(
                f"SELECT p.sku FROM product_images i JOIN products p ON p.id = i.product_id "
                f"WHERE {' AND '.join(where)} ORDER BY {NAIVE_ORDER} LIMIT {K}",
                [*params, q],
            ).fetchall()
            return [r[0] for r in rows]

        return run

    def sql_on(conn: Any) -> Any:
        def run(options: dict[str, Any], q: np.ndarray) -> list[str]:
            rows = conn.execute(
                "SELECT sku FROM imgsearch_similar(%s::vector, %s, %s::text[], %s)",
                [q, K, options.get("categories"), options.get("in_stock_only", True)],
            ).fetchall()
            return [r[0] for r in rows]

        return run

    methods = {
        "imgsearch": lambda options, q: [r.sku for r in query.search(engine, q, K, **options)],
        "imgsearch_sql": sql_on(sql_face),
        "imgsearch_sql_ef40": sql_on(sql_face40),
        "naive": naive_on(naive),
        "naive_ef100": naive_on(naive100),
        "previous": lambda options, q: [r.sku for r in query.search(previous, q, K, **options)],
    }
    out = []
    for name, options, mask in fcs:
        entry: dict[str, Any] = {"filter": name, "matching": int(mask.sum())}
        for method, run in methods.items():
            for q in queries:  # every query once first: all methods measured on warm caches
                run(options, q)
            latencies, recalls, exact = [], [], []
            for q, want in zip(queries, truth[name], strict=True):
                started = time.perf_counter()
                got = run(options, q)
                latencies.append((time.perf_counter() - started) * 1000)
                wanted = {skus[i] for i in want}
                recalls.append(len(set(got) & wanted) / len(wanted))
                exact.append(len(got) == K)
            entry[method] = {
                "recall_at_10": round(float(np.mean(recalls)), 4),
                "exactly_k": round(float(np.mean(exact)), 4),
                **percentiles(latencies),
            }
        log(f"{name}: " + ", ".join(f"{m} {entry[m]['p50_ms']} ms r={entry[m]['recall_at_10']}" for m in methods))
        out.append(entry)
    engine.dispose()
    previous.dispose()
    for conn in connections:
        conn.close()
    return out


def sync(url: str, skus: list[str], stock: np.ndarray, prices: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """5% of the in-stock flags flipped, then 5% of the prices changed, through `imgsearch stock --csv`."""
    from click.testing import CliRunner

    from imgsearch import db
    from imgsearch.cli import main

    def counters() -> dict[str, int]:
        with db.psycopg_connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'products'::regclass"
            ).fetchone()
            size = conn.execute("SELECT pg_relation_size('ix_product_images_embedding')").fetchone()[0]
            conn.execute("SELECT pg_stat_clear_snapshot()")
        return {"updates": row[0], "hot": row[1], "hnsw_bytes": size}

    out: dict[str, Any] = {}
    picked = rng.choice(len(skus), size=len(skus) // 20, replace=False)
    for kind in ("stock", "price"):
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, newline="") as fh:
            writer = csv.writer(fh)
            if kind == "stock":
                writer.writerow(["sku", "in_stock"])
                writer.writerows((skus[i], "false" if stock[i] else "true") for i in picked)
            else:
                writer.writerow(["sku", "price"])
                writer.writerows((skus[i], f"{prices[i] * 0.9:.2f}") for i in picked)
            path = fh.name
        before = counters()
        started = time.perf_counter()
        result = CliRunner().invoke(main, ["--database-url", url, "stock", "--csv", path])
        seconds = time.perf_counter() - started
        time.sleep(11.0)  # sessions report their statistics when idle for 10 s
        after = counters()
        os.unlink(path)
        out[kind] = {
            "rows": len(picked),
            "seconds": round(seconds, 2),
            "exit_code": result.exit_code,
            "output": result.output.strip()[:200],
            "updates": after["updates"] - before["updates"],
            "hot_updates": after["hot"] - before["hot"],
            "hnsw_bytes_before": before["hnsw_bytes"],
            "hnsw_bytes_after": after["hnsw_bytes"],
        }
        log(f"{kind} sync: {out[kind]}")
    # Back to the catalogue as loaded (not timed), so that later steps and runs search what the ground truth knows.
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "in_stock", "price"])
        writer.writerows((skus[i], "true" if stock[i] else "false", f"{prices[i]:.2f}") for i in picked)
        path = fh.name
    restored = CliRunner().invoke(main, ["--database-url", url, "stock", "--csv", path])
    os.unlink(path)
    log(f"restored: {restored.output.strip()[:200]}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=EXAMPLES, help="<class>/<image> folder to derive vectors from")
    parser.add_argument("--precision", default="bfloat16", help="featurizer precision of the real embeddings")
    parser.add_argument("--n", type=int, default=1_000_000, help="catalogue size")
    parser.add_argument("--queries", type=int, default=60, help="queries per filter class")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--reuse", action="store_true", help="the catalogue a previous run loaded (skips load)")
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-scale"), help="throwaway server")
    parser.add_argument("--keep-server", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--max-wait", type=float, default=900)
    parser.add_argument("--name", help="result file name (default scale-<N>)")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]

    real, _, labels = cached_embeddings(args.images, args.precision, args.cache_dir, args.weights)
    cat, counts = build_catalogue(real, labels, args.n, args.seed)
    rng = np.random.default_rng(args.seed)
    categories = np.array(spread_categories(cat.classes, cat.category, rng))
    skus = [cat.sku(i) for i in range(cat.n)]
    fcs = filter_classes(categories, cat.in_stock)
    queries = query_vectors(real, labels, cat, counts, None, args.queries, args.seed + 1)
    log("ground truth (NumPy, exact)")
    truth = {name: exact_topk(cat.vectors, queries, K, mask) for name, _, mask in fcs}

    url = start_server(args.home)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "commit": git_commit(),
        "machine": machine(),
        "command": "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "products": cat.n,
        "spread_categories": SPREAD,
        "queries_per_class": args.queries,
    }
    if "load" in steps and not args.reuse:
        result["load"] = load(url, skus, list(categories), cat.price, cat.in_stock, cat.vectors)
    else:
        result["upgrade"] = upgrade(url)
    if "indexes" in steps:
        result["indexes"] = maintain_indexes(url)
    quiet = {"quiet": None, "load_at_start": load_average()} if args.no_wait else wait_for_quiet(max_wait=args.max_wait)
    result["quiet"] = quiet
    if "search" in steps:
        result["search"] = measure(url, fcs, queries, truth, skus)
    if "sync" in steps:
        result["sync"] = sync(url, skus, cat.in_stock, cat.price, rng)
    if "halfvec" in steps:
        result["halfvec"] = halfvec(url, queries, truth["none"], skus)
    if "writer" in steps:
        result["writer"] = writer(url, cat.vectors, list(categories))
    if "tune" in steps:
        result["tune"] = tune(url, queries)
    result["load_after"] = load_average()
    if not args.keep_server:
        stop_server(args.home)
    name = args.name or (f"scale-{cat.n // 1000}k" if cat.n < 1_000_000 else f"scale-{cat.n // 1_000_000}m")
    write_results(name, result, markdown(result))
    log(markdown(result))


SEARCH_METHODS = {
    "imgsearch": "imgsearch (Python)",
    "imgsearch_sql": "imgsearch (SQL)",
    "imgsearch_sql_ef40": "imgsearch (SQL), ef 40",
    "naive": "naive pgvector",
    "naive_ef100": "naive, ef 100",
    "previous": "previous release",
}


def markdown(r: dict[str, Any]) -> str:
    """The result as Markdown tables."""
    lines = [
        f"# At {r['products']:,} products",
        "",
        f"Commit {r['commit']}, {r['machine'].get('cpu')}, {r['machine'].get('cores')} cores; load "
        f"{r['quiet'].get('load_at_start')} before, {r['load_after']} after. Command: `{r['command']}`",
    ]
    if "load" in r:
        lines += ["", "## Load", "", md_table(["step", "value"], [[k, v] for k, v in r["load"].items()])]
    if "upgrade" in r:
        u = r["upgrade"]
        lines += ["", f"Catalogue loaded before, upgraded from revision {u['from']} to {u['to']} in {u['seconds']} s."]
    if "indexes" in r:
        x = r["indexes"]
        lines += [
            "",
            f"Category-index maintenance (what every `imgsearch ingest` runs): {len(x['built'])} built in "
            f"{x['seconds']} s, {x['bytes'] / 2**20:.0f} MiB in all.",
        ]
    if "search" in r:
        rows = []
        for e in r["search"]:
            cells = [e["filter"]]
            for m in SEARCH_METHODS:
                x = e.get(m)
                cells.append(
                    f"{x['recall_at_10']:.3f} / {x['exactly_k']:.0%} / {x['p50_ms']:.2f} / {x['p99_ms']:.2f}"
                    if x
                    else "-"
                )
            rows.append(cells)
        ratios = [
            f"{e['filter']}: {e['imgsearch_sql']['p50_ms'] / e['naive']['p50_ms']:.2f}x the naive query's p50 at "
            f"ef 40, {e['imgsearch_sql']['p50_ms'] / e['naive_ef100']['p50_ms']:.2f}x at ef 100 (SQL function); "
            f"with imgsearch.ef_search = 40: {e['imgsearch_sql_ef40']['p50_ms'] / e['naive']['p50_ms']:.2f}x, "
            f"recall {e['imgsearch_sql_ef40']['recall_at_10']:.3f} against {e['naive']['recall_at_10']:.3f}"
            for e in r["search"]
            if "imgsearch_sql_ef40" in e and "categor" not in e["filter"]
        ]
        lines += [
            "",
            "## Search: recall@10 / exactly 10 / p50 ms / p99 ms",
            "",
            "imgsearch through the Python API (`query.search`) and through its SQL function over a plain psycopg "
            "connection (what a non-Python backend runs), also with its walk at pgvector's default ef_search "
            "(imgsearch.ef_search = 40); the naive query at pgvector's default (40) and at imgsearch's (100).",
            "",
            md_table(["filter", *SEARCH_METHODS.values()], rows),
            "",
            *(f"- {line}" for line in ratios),
        ]
    if "sync" in r:
        rows = [
            [k, v["rows"], v["seconds"], v["updates"], v["hot_updates"], v["hnsw_bytes_before"], v["hnsw_bytes_after"]]
            for k, v in r["sync"].items()
        ]
        lines += [
            "",
            "## Stock and price syncs (imgsearch stock --csv)",
            "",
            md_table(["sync", "rows", "seconds", "updates", "HOT", "HNSW bytes before", "after"], rows),
        ]
    if "halfvec" in r:
        h = r["halfvec"]
        rows = [
            [kind, f"{h[kind]['bytes'] / 2**20:.0f}", h[kind]["build_s"]]
            + [f"{h[kind][f'ef{ef}']['recall_at_10']:.3f} / {h[kind][f'ef{ef}']['p50_ms']:.2f}" for ef in (40, 100)]
            for kind in ("vector", "halfvec")
        ]
        lines += [
            "",
            "## HNSW over vector and over halfvec (unfiltered, built in this run with the same settings)",
            "",
            md_table(["index", "MiB", "build s", "ef 40: recall@10 / p50 ms", "ef 100: recall@10 / p50 ms"], rows),
        ]
    if "writer" in r:
        w = r["writer"]
        lines += [
            "",
            "## The ingestion writer's ceiling",
            "",
            f"{w['rows']:,} new products with one photo each, upserted {w['batch']} at a time into the indexed "
            f"catalogue: {w['seconds']} s, **{w['rows_per_s']:,} rows/s**.",
        ]
    if "tune" in r:
        t = r["tune"]
        steps = ", ".join(f"{k} {v} s" for k, v in t["seconds"].items())
        rows = [
            [name, f"{t['search_raw'][name]['p50_ms']:.1f}", f"{t['search_tuned'][name]['p50_ms']:.1f}"]
            for name in t["search_raw"]
        ]
        lines += [
            "",
            "## imgsearch tune",
            "",
            f"Learnt from {t['learnt_from_products']:,} products; {t['total_s']} s in all ({steps}). Projecting a "
            f"query in SQL: p50 {t['project_query']['p50_ms']:.2f} ms. Tuned vectors and their indexes: "
            f"{t['tuned_bytes'] / 2**20:.0f} MiB.",
            "",
            md_table(["filter", "raw space p50 ms", "tuned space p50 ms"], rows),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
