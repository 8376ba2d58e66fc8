"""How carefully to build the photos' HNSW graph: ``ef_construction`` against recall, build time and query time.

The verified photo search's global stage (the vector's top 50, ``imgsearch_similar``) walks the catalogue-wide
HNSW index. benchmarks/candidates_scale.py found that with synthetic distractors around the real products the
walk stops reaching them (0.000 of the shoppers' products in the HNSW top 50 at 100,000 products, against
0.35-0.57 in the exact top 50). This measures, on the same catalogue and query photos, whether a graph built
with a wider candidate list (``ef_construction``) repairs that, what it costs to build, and what it does to the
ordinary searches (a catalogue photo's neighbours, recall@10 against the exact top 10):

1. the real products only (covers 100 + groceries 81 + the 2,524 Myntra fashion photos: their default-pipeline
   vectors pooled from benchmarks/quality.py's cached feature maps), padded with synthetic distractor vectors
   made from the Myntra vectors exactly as candidates_scale.py makes them (vectors only: no local features);
2. at each size of ``--sizes``, the photo index is dropped and built again for every ``--ef-construction``
   value, ``--builds`` times each (a build is not deterministic: the insertion order of parallel workers and
   the random levels change the graph), with the project's ``create_photo_index`` command given that value;
3. after each build: every cover photo and a seeded sample of grocery photos (``imgsearch_similar``, k 50, no
   filters, the default ef_search 100): is the photographed product in the top 50, and in the exact (NumPy)
   top 50; ``--catalogue-queries`` catalogue photos drawn at random (real and synthetic): recall@10 of
   ``imgsearch_similar`` k 10 against the exact top 10; p50/p95 of both calls; the build's time and size.

    python -m benchmarks.graph_build --sizes 25000,100000 --ef-construction 64,128,200 --builds 2

Writes ``benchmarks/results/graph-build.{md,json}`` unless ``--name`` says otherwise.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.candidates_scale import (
    SERVER_CONFIG,
    Distractors,
    _rows,
    queries,
    real_vectors,
)
from benchmarks.candidates_scale import _upsert as upsert_in_batches
from benchmarks.common import (
    git_commit,
    load_average,
    log,
    machine,
    md_table,
    percentiles,
    start_server,
    stop_server,
    write_results,
)
from benchmarks.visual_words import DATA, cached_features

GLOBAL_K = 50  # imgsearch.query.VERIFY_CANDIDATES
K = 10
REAL_CATALOGUES = ("covers-catalogue", "groceries-catalogue", "myntra-catalogue")


def _upsert(engine: Any, skus: list[str], categories: list[str], vectors: np.ndarray) -> None:
    """Products of one photo each, vectors only, in candidates_scale's batches."""
    from imgsearch.catalogue import ImageRecord, ProductRecord

    records = [
        ProductRecord(sku=s, category=c, price=Decimal("10.00"), images=(ImageRecord(f"bench/{s}", v),))
        for s, c, v in zip(skus, categories, vectors, strict=True)
    ]
    upsert_in_batches(engine, records)


def load_real(engine: Any, vectors: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """The three real catalogues, vectors only; (vectors, SKUs) in insertion order."""
    skus, categories, rows_v = [], [], []
    for name in REAL_CATALOGUES:
        rows, _ = cached_features(name)
        for row in rows:
            skus.append(row["sku"])
            categories.append(row["category"])
            rows_v.append(vectors[row["image"]])
    matrix = np.stack(rows_v).astype(np.float32)
    _upsert(engine, skus, categories, matrix)
    return matrix, skus


def load_distractors(engine: Any, maker: Distractors, first: int, count: int) -> tuple[np.ndarray, list[str]]:
    """``count`` synthetic distractor vectors, numbered from ``first``."""
    skus = [f"distractor-{i:06d}" for i in range(first, first + count)]
    made = [maker.make_vector() for _ in range(count)]
    vectors = np.stack([v for _, v, _ in made]).astype(np.float32)
    _upsert(engine, skus, [c for c, _, _ in made], vectors)
    return vectors, skus


def build_index(engine: Any, m: int, ef_construction: int) -> dict[str, Any]:
    """Drop the catalogue-wide photo index and build it with ``m`` and ``ef_construction``; seconds and bytes."""
    import sqlalchemy as sa

    from imgsearch import sql

    text, replaced = re.subn(
        r"m = \d+, ef_construction = \d+",
        f"m = {int(m)}, ef_construction = {int(ef_construction)}",
        sql.command("create_photo_index"),
    )
    assert replaced == 1, "create_photo_index no longer names m and ef_construction"
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX IF EXISTS ix_product_images_embedding"))
    started = time.monotonic()
    with engine.begin() as conn:
        conn.exec_driver_sql(text)
    seconds = time.monotonic() - started
    with engine.connect() as conn:
        size = conn.execute(sa.text("SELECT pg_relation_size('ix_product_images_embedding')")).scalar_one()
    return {"build_s": round(seconds, 1), "index_bytes": int(size)}


def measure(
    engine: Any,
    shopper: list[dict[str, Any]],
    matrix: np.ndarray,
    skus: list[str],
    catalogue_queries: np.ndarray,
) -> dict[str, Any]:
    """Shoppers' products in the HNSW / exact top 50; recall@10 of catalogue photos; call times."""
    import sqlalchemy as sa

    from imgsearch.db import binary_vector

    similar = sa.text("SELECT sku FROM imgsearch_similar(CAST(:query AS vector), :k, NULL, false, NULL, NULL)")
    position = {s: i for i, s in enumerate(skus)}
    found: dict[str, dict[str, list[tuple[bool, bool]]]] = {}
    timings: dict[str, list[float]] = {"top50_ms": [], "top10_ms": []}
    recalls = []
    with engine.connect() as conn:
        for q in shopper:
            params = {"query": binary_vector(conn, q["vector"]), "k": GLOBAL_K}
            t0 = time.perf_counter()
            got = {r.sku for r in conn.execute(similar, params)}
            timings["top50_ms"].append((time.perf_counter() - t0) * 1000)
            sims = matrix @ q["vector"]
            exact = int((sims > sims[position[q["sku"]]]).sum()) < GLOBAL_K
            for key in ("all", q["kind"]):
                found.setdefault(q["set"], {}).setdefault(key, []).append((q["sku"] in got, exact))
        for i in catalogue_queries:
            params = {"query": binary_vector(conn, matrix[i]), "k": K}
            t0 = time.perf_counter()
            got = {r.sku for r in conn.execute(similar, params)}
            timings["top10_ms"].append((time.perf_counter() - t0) * 1000)
            truth = {skus[j] for j in np.argsort(-(matrix @ matrix[i]))[:K]}
            recalls.append(len(got & truth) / K)
    return {
        "shoppers": {
            name: {
                kind: {
                    "queries": len(e),
                    "hnsw_top50": round(float(np.mean([x[0] for x in e])), 3),
                    "exact_top50": round(float(np.mean([x[1] for x in e])), 3),
                }
                for kind, e in kinds.items()
            }
            for name, kinds in found.items()
        },
        "catalogue_recall_at_10": round(float(np.mean(recalls)), 4),
        "timings": {k: percentiles(v) for k, v in timings.items()},
    }


def run(args: argparse.Namespace) -> None:
    from imgsearch import db, schema

    wall = time.monotonic()
    result: dict[str, Any] = {
        "machine": machine(),
        "commit": git_commit(),
        "uptime_at_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "load_at_start": load_average(),
        "args": vars(args),
        "runs": [],
    }
    sizes = sorted(int(s) for s in args.sizes.split(","))
    efs = [int(e) for e in args.ef_construction.split(",")]
    ms = [int(m) for m in args.m.split(",")]
    vectors = real_vectors()
    shopper = queries(args.groceries_sample, args.seed, vectors)
    myntra_c = _rows(DATA / "synthetic-fashion" / "catalogue.csv")
    myntra_vectors = np.stack([vectors[r["image"]] for r in myntra_c])
    maker = Distractors(myntra_vectors, [], [r["category"] for r in myntra_c], args.seed, args.vector_noise, 0.0)
    rng = np.random.default_rng(args.seed + 1)
    home = Path(args.home or tempfile.mkdtemp(prefix="imgsearch-graph-"))
    try:
        engine = db.create_engine(start_server(home, SERVER_CONFIG))
        schema.upgrade(engine)
        matrix, skus = load_real(engine, vectors)
        real = len(skus)
        log(f"{real:,} real products loaded")
        for size in sizes:
            extra = size - len(skus)
            if extra > 0:
                with engine.begin() as conn:
                    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_product_images_embedding")
                t0 = time.monotonic()
                dv, dskus = load_distractors(engine, maker, len(skus) - real, extra)
                matrix, skus = np.concatenate([matrix, dv]), skus + dskus
                log(f"{len(skus):,} products ({extra:,} distractors in {time.monotonic() - t0:.0f} s)")
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE products")
                conn.exec_driver_sql("VACUUM ANALYZE product_images")
            catalogue_queries = rng.choice(len(skus), args.catalogue_queries, replace=False)
            for build in range(args.builds):
                for m_links, ef in ((m_links, ef) for m_links in ms for ef in efs):
                    built = build_index(engine, m_links, ef)
                    measured = measure(engine, shopper, matrix, skus, catalogue_queries)
                    result["runs"].append(
                        {"products": len(skus), "m": m_links, "ef_construction": ef, "build": build + 1}
                        | built
                        | measured
                    )
                    log(
                        f"{len(skus):,} m {m_links} ef_construction {ef} build {build + 1}: {built} "
                        f"{measured['shoppers']} "
                        f"recall@10 {measured['catalogue_recall_at_10']}"
                    )
                    _write(args, result, wall)
        engine.dispose()
    finally:
        stop_server(home)
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    _write(args, result, wall)
    log(f"done in {result['wall_s']} s")


def _write(args: argparse.Namespace, result: dict[str, Any], wall: float) -> None:
    result["load_at_end"] = load_average()
    result["wall_s"] = round(time.monotonic() - wall)
    write_results(args.name, result, markdown(result))


def markdown(result: dict[str, Any]) -> str:
    a = result["args"]
    lines = [
        "# How carefully to build the photos' HNSW graph (`ef_construction`)",
        "",
        f"`python -m benchmarks.graph_build --sizes {a['sizes']} --m {a.get('m', '16')} "
        f"--ef-construction {a['ef_construction']} "
        f"--builds {a['builds']}` at commit {result['commit']}, {result['machine'].get('cpu', 'CPU unknown')}, "
        f"{result['machine']['cores']} cores; `uptime` at start: `{result['uptime_at_start']}`; load at end "
        f"{result['load_at_end']}; wall time {result['wall_s']} s.",
        "",
        "Each row is one build of the catalogue-wide photo index (half-precision vectors, as "
        "`create_photo_index` builds it, with that `m` and `ef_construction`) over the same catalogue: the real "
        "covers, groceries and Myntra products plus synthetic distractor vectors made from the Myntra vectors "
        "(benchmarks/candidates_scale.py). `shoppers' product in HNSW top 50`: share of shopper photos whose "
        "product `imgsearch_similar` (k 50, default ef_search 100) returns; `exact`: in the brute-force top 50 "
        f"(the most the walk can find). `recall@10`: {a['catalogue_queries']} catalogue photos as queries, "
        "`imgsearch_similar` k 10 against the exact top 10. Times: p50 of those calls; the build alone.",
        "",
    ]
    headers = [
        "products",
        "m",
        "ef_construction",
        "build",
        "covers: HNSW top 50 / exact",
        "groceries packaged",
        "groceries produce",
        "catalogue recall@10",
        "top 50 p50 ms",
        "top 10 p50 ms",
        "build s",
        "index MB",
    ]
    rows = []
    for r in result["runs"]:
        s = r["shoppers"]

        def cell(name: str, kind: str, s: dict[str, Any] = s) -> str:
            x = s.get(name, {}).get(kind)
            return f"{x['hnsw_top50']} / {x['exact_top50']}" if x else "-"

        rows.append(
            [
                f"{r['products']:,}",
                r.get("m", 16),
                r["ef_construction"],
                r["build"],
                cell("covers", "all"),
                cell("groceries", "packaged"),
                cell("groceries", "produce"),
                r["catalogue_recall_at_10"],
                r["timings"]["top50_ms"]["p50_ms"],
                r["timings"]["top10_ms"]["p50_ms"],
                r["build_s"],
                round(r["index_bytes"] / 2**20, 1),
            ]
        )
    lines += [md_table(headers, rows), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="25000,100000", help="catalogue sizes, comma-separated, growing")
    parser.add_argument("--ef-construction", default="64,128,200", help="values to build with, comma-separated")
    parser.add_argument("--m", default="16", help="HNSW links per node (m) to build with, comma-separated")
    parser.add_argument("--builds", type=int, default=2, help="builds of each value at each size")
    parser.add_argument("--groceries-sample", type=int, default=800, help="grocery shopper photos (seeded sample)")
    parser.add_argument("--catalogue-queries", type=int, default=500, help="catalogue photos searched for recall@10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vector-noise", type=float, default=0.005, help="distractor vector noise per dimension")
    parser.add_argument("--home", help="server home (default: a temporary folder, removed)")
    parser.add_argument("--name", default="graph-build", help="results file name")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
