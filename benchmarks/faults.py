"""Load and faults: concurrent searches while products are ingested and stock is synced, with the database
restarted once in the middle. Reports searches done, errors, latency and rows lost (which must be 0).

Everything runs on loopback against a throwaway embedded server: search clients are separate processes (each
with its own engine, as web backend workers would be), a writer process upserts new products in batches through
``catalogue.upsert_products`` (the ingestion's write path; the vectors are synthesized from real embeddings, so
the model's CPU use does not hide the database's behaviour), and a stock process flips in-stock flags with
``catalogue.set_stock``. Half-way through, the server is stopped and started again. Every batch the writer saw
acknowledged must be in the catalogue at the end.

Run from the repository root::

    .venv/bin/python -m benchmarks.faults                  # 20k products, 4 search clients, 40 s
    .venv/bin/python -m benchmarks.faults --n 100000 --duration 90 --clients 8
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from benchmarks.common import (
    DEFAULT_CACHE,
    EXAMPLES,
    cached_embeddings,
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
from benchmarks.search import build_catalogue


def _engine(url: str) -> Any:
    from imgsearch import db

    return db.create_engine(url)


def search_client(url: str, queries: np.ndarray, seed: int, until: float, out: Any) -> None:
    """Search without pause until ``until``; record each search's latency, or the error it ended with."""
    from imgsearch import query
    from imgsearch.errors import ImgsearchError

    engine = _engine(url)
    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    slow: list[float] = []
    while time.time() < until:
        vector = queries[rng.integers(len(queries))]
        started = time.perf_counter()
        try:
            results = query.search(engine, vector, 10, in_stock_only=bool(rng.integers(2)))
            assert all(np.isfinite(r.distance) for r in results)
            elapsed = (time.perf_counter() - started) * 1000
            latencies.append(elapsed)
            if elapsed > 1000:
                slow.append(round(elapsed))
        except ImgsearchError as exc:
            key = f"{type(exc).__name__}: {str(exc)[:80]}"
            errors[key] = errors.get(key, 0) + 1
    engine.dispose()
    out.put({"latencies": latencies, "errors": errors, "slow_ms": slow})


def writer(url: str, vectors: np.ndarray, categories: list[str], batch: int, until: float, out: Any) -> None:
    """Upsert new products in batches until ``until``; report the SKUs whose batch was acknowledged."""
    from imgsearch import catalogue
    from imgsearch.catalogue import ProductRecord
    from imgsearch.errors import ImgsearchError

    engine = _engine(url)
    acknowledged: list[str] = []
    failed_batches = 0
    errors: dict[str, int] = {}
    i = 0
    while time.time() < until and i < len(vectors):
        records = [
            ProductRecord(
                sku=f"new-{j:07d}", category=categories[j % len(categories)], embedding=vectors[j], price=Decimal(9)
            )
            for j in range(i, min(i + batch, len(vectors)))
        ]
        try:
            catalogue.upsert_products(engine, records)
            acknowledged += [r.sku for r in records]
        except ImgsearchError as exc:
            failed_batches += 1
            key = f"{type(exc).__name__}: {str(exc)[:80]}"
            errors[key] = errors.get(key, 0) + 1
        i += batch
    engine.dispose()
    out.put({"acknowledged": acknowledged, "failed_batches": failed_batches, "errors": errors})


def stock_syncer(url: str, skus: list[str], size: int, until: float, out: Any) -> None:
    """Flip the in-stock flag of ``size`` random products per sync, one sync after another, until ``until``."""
    from imgsearch import catalogue
    from imgsearch.errors import ImgsearchError

    engine = _engine(url)
    rng = np.random.default_rng(3)
    syncs = 0
    changed = 0
    errors: dict[str, int] = {}
    while time.time() < until:
        picked = rng.choice(len(skus), size=size, replace=False)
        try:
            changed += catalogue.set_stock(engine, {skus[p]: bool(rng.integers(2)) for p in picked})
            syncs += 1
        except ImgsearchError as exc:
            key = f"{type(exc).__name__}: {str(exc)[:80]}"
            errors[key] = errors.get(key, 0) + 1
    engine.dispose()
    out.put({"syncs": syncs, "changed": changed, "errors": errors})


def load(url: str, cat: Any) -> None:
    """The starting catalogue, through the same upsert as ingestion."""
    from imgsearch import catalogue, schema
    from imgsearch.catalogue import ProductRecord

    engine = _engine(url)
    schema.upgrade(engine)
    chunk = 5000
    for start in range(0, cat.n, chunk):
        catalogue.upsert_products(
            engine,
            [
                ProductRecord(
                    sku=cat.sku(i),
                    category=cat.classes[cat.category[i]],
                    embedding=cat.vectors[i],
                    price=Decimal(f"{cat.price[i]:.2f}"),
                    in_stock=bool(cat.in_stock[i]),
                )
                for i in range(start, min(start + chunk, cat.n))
            ],
        )
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE products"))
    engine.dispose()


def count_present(url: str, skus: list[str]) -> int:
    """How many of ``skus`` are in the catalogue."""
    engine = _engine(url)
    with engine.connect() as conn:
        present = conn.execute(sa.text("SELECT count(*) FROM products WHERE sku = ANY(:s)"), {"s": skus}).scalar_one()
    engine.dispose()
    return int(present)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=EXAMPLES, help="<class>/<image> folder to derive vectors from")
    parser.add_argument("--n", type=int, default=20_000, help="starting catalogue size")
    parser.add_argument("--clients", type=int, default=4, help="concurrent search processes")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load")
    parser.add_argument("--restart-at", type=float, default=0.5, help="when the server restarts (share of duration)")
    parser.add_argument("--batch", type=int, default=200, help="products per writer batch")
    parser.add_argument("--stock-size", type=int, default=500, help="products per stock sync")
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-faults"), help="throwaway server")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--max-wait", type=float, default=900)
    parser.add_argument("--name", default="faults", help="result file name")
    args = parser.parse_args(argv)

    real, _, labels = cached_embeddings(args.images, "float32", args.cache_dir, args.weights)
    cat, _ = build_catalogue(real, labels, args.n + 20_000, seed=11)
    start_n = args.n
    initial = type(cat)(
        cat.vectors[:start_n], cat.category[:start_n], cat.in_stock[:start_n], cat.price[:start_n], cat.classes
    )
    new_vectors = cat.vectors[start_n:]
    queries = cat.vectors[::97][:500]

    quiet = {"quiet": None, "load_at_start": load_average()} if args.no_wait else wait_for_quiet(max_wait=args.max_wait)
    url = start_server(args.home)
    log(f"loading {start_n} products")
    load(url, initial)

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    began = time.time() + 3.0  # the processes start (and import) before the clock runs
    until = began + args.duration
    procs = [ctx.Process(target=search_client, args=(url, queries, s, until, out)) for s in range(args.clients)] + [
        ctx.Process(target=writer, args=(url, new_vectors, cat.classes, args.batch, until, out)),
        ctx.Process(
            target=stock_syncer, args=(url, [initial.sku(i) for i in range(start_n)], args.stock_size, until, out)
        ),
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, began - time.time()) + args.duration * args.restart_at)
    log("restarting the database server")
    outage_started = time.time()
    stop_server(args.home)
    start_server(args.home)
    outage_s = time.time() - outage_started
    log(f"server back after {outage_s:.1f} s")
    results = [out.get(timeout=args.duration + 300) for _ in procs]
    for p in procs:
        p.join()

    searches = [r for r in results if "latencies" in r]
    write = next(r for r in results if "acknowledged" in r)
    stock = next(r for r in results if "syncs" in r)
    latencies = [x for r in searches for x in r["latencies"]]
    search_errors: dict[str, int] = {}
    for r in searches:
        for key, n in r["errors"].items():
            search_errors[key] = search_errors.get(key, 0) + n
    present = count_present(url, write["acknowledged"])
    lost = len(write["acknowledged"]) - present
    stop_server(args.home)

    result = {
        "benchmark": "faults",
        "commit": git_commit(),
        "machine": machine(),
        "command": "python -m benchmarks.faults " + " ".join(argv or sys.argv[1:]),
        "quiet": quiet,
        "load_after": load_average(),
        "catalogue": {"products_at_start": start_n, "images_source": str(args.images)},
        "duration_s": args.duration,
        "clients": args.clients,
        "outage_s": round(outage_s, 2),
        "searches": {
            "done": len(latencies),
            "per_s": round(len(latencies) / args.duration, 1),
            "errors": sum(search_errors.values()),
            "error_kinds": search_errors,
            "over_1s": sorted(x for r in searches for x in r["slow_ms"]),
            **percentiles(latencies),
        },
        "writer": {
            "batches_acknowledged": len(write["acknowledged"]) // args.batch,
            "rows_acknowledged": len(write["acknowledged"]),
            "rows_present_at_end": present,
            "rows_lost": lost,
            "failed_batches": write["failed_batches"],
            "errors": write["errors"],
        },
        "stock": stock,
    }
    s, w = result["searches"], result["writer"]
    rows = [
        ["searches done", s["done"]],
        ["searches per second", s["per_s"]],
        ["search errors", f"{s['errors']} {s['error_kinds'] or ''}".strip()],
        ["search p50 / p99 ms", f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}"],
        ["searches over 1 s (ms)", ", ".join(map(str, s["over_1s"])) or "none"],
        ["writer rows acknowledged / present at end", f"{w['rows_acknowledged']} / {w['rows_present_at_end']}"],
        ["rows lost", w["rows_lost"]],
        ["writer batches failed", f"{w['failed_batches']} {w['errors'] or ''}".strip()],
        ["stock syncs done / flags changed", f"{stock['syncs']} / {stock['changed']}"],
        ["stock sync errors", f"{sum(stock['errors'].values())} {stock['errors'] or ''}".strip()],
        ["server outage (stop + start) s", result["outage_s"]],
    ]
    markdown = "\n".join(
        [
            "# Load and faults",
            "",
            f"{args.clients} search clients, one writer ({args.batch} products per batch), one stock sync "
            f"({args.stock_size} flags per sync) for {args.duration:.0f} s on a {start_n}-product catalogue; the "
            f"server restarted at {args.restart_at:.0%} of the run. Commit {result['commit']}, "
            f"{result['machine'].get('cpu')}, load {quiet.get('load_at_start')} before, {result['load_after']} after.",
            "",
            md_table(["measure", "value"], rows),
            "",
            f"Command: `{result['command']}`",
        ]
    )
    write_results(args.name, result, markdown)
    log(markdown)
    if lost:
        raise SystemExit(f"{lost} acknowledged rows were lost")


if __name__ == "__main__":
    main()
