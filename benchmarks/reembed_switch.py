"""Moving a populated catalogue to another embedding space while it serves (``imgsearch reembed``, revision 0022).

Why: the move must not interrupt a shop. This measures what the database side of it costs and what searches see
meanwhile, at a size where it matters: a throwaway embedded PostgreSQL with N products of one photo each
(synthetic clustered 512-d vectors, 20 categories, two of them with their own index, the HNSW graph and the photos'
IVF index), a search thread running `query.search` without pause the whole time (k 10; a third of the searches in
an indexed category), and the steps of ``imgsearch_reembed`` on the same code the command runs:

1. the next vectors written (``reembedding.write_vectors``, batches of 256 as the command writes them; the vectors
   are another fixed random map of the current ones, standing in for the network, which at 5-25 photos/s on two
   cores is the real cost of a re-embedding and is measured by benchmarks/runtimes.py);
2. the indexes' copies built over them (``reembedding.build_copies``, CONCURRENTLY);
3. the switch (``reembedding.switch``): how long searches were held, how long writers waited.

Recorded per phase: the searches' p50/p99/max and count, and whether the searches found what they should (before
the switch a photo's current vector finds its product first; after it, its next vector does). Also the table's
size before and after (a re-embedding needs room for a second vector per photo).

    python -m benchmarks.reembed_switch --products 100000

Writes ``benchmarks/results/reembed-switch-<products/1000>k.{md,json}``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from benchmarks.common import (
    PhasedSearches,
    copy_catalogue,
    git_commit,
    load_average,
    log,
    machine,
    md_table,
    start_server,
    stop_server,
    write_results,
)
from imgsearch import catalogue, db, indexes, query, reembedding, scan_index, schema, sql
from imgsearch.embedding import EmbeddingSpace

CATEGORIES = 20
INDEXED = ["c0", "c1"]
CURRENT = EmbeddingSpace("bench-current", "bench", "1", 512)
NEXT = EmbeddingSpace("bench-next", "bench", "1", 512)


def _vectors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered non-negative unit vectors (like pooled ReLU maps), and their image under another fixed map."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(400, 512))).astype(np.float32)
    current = np.abs(centres[rng.integers(0, 400, n)] + rng.normal(scale=0.7, size=(n, 512)).astype(np.float32))
    current /= np.linalg.norm(current, axis=1, keepdims=True)
    other = np.abs(current @ rng.normal(size=(512, 512)).astype(np.float32))
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    return current, other


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="imgsearch-reembed-"))
    result: dict[str, Any] = {
        "commit": git_commit(),
        "machine": machine(),
        "load_at_start": load_average(),
        "products": args.products,
    }
    wall = time.monotonic()
    current, other = _vectors(args.products, seed=args.seed)
    categories = [f"c{i % CATEGORIES}" for i in range(args.products)]
    try:
        url = start_server(home)
        engine = db.create_engine(url)
        schema.upgrade(engine)
        t0 = time.monotonic()
        with db.psycopg_connect(url) as conn:
            skus = [f"p{i}" for i in range(args.products)]
            conn.execute("DROP INDEX IF EXISTS ix_product_images_embedding")  # built after the load: faster
            copy_catalogue(conn, skus, categories, [10.0] * args.products, [True] * args.products, current)
            conn.execute(
                "INSERT INTO embedding_space (model_name, weights_id, preprocessing_version, dimension) "
                "VALUES (%s, %s, %s, %s)",
                (CURRENT.model_name, CURRENT.weights_id, CURRENT.preprocessing_version, CURRENT.dimension),
            )
            conn.execute(sql.command("create_photo_index"))
            conn.commit()
        indexes.create_category_indexes(engine, INDEXED)
        built = scan_index.build(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
        result["load_s"] = round(time.monotonic() - t0, 1)
        result["scan_lists"] = built.lists
        result["table_bytes_before"] = _table_bytes(engine)
        log(f"{args.products:,} products loaded and indexed in {result['load_s']} s")

        switched_space = False

        def search(rng: np.random.Generator) -> bool:
            i = int(rng.integers(0, len(current)))
            vectors = other if switched_space else current
            q = vectors[i] + rng.normal(scale=0.002, size=512).astype(np.float32)
            filters = {"categories": [categories[i]]} if categories[i] in INDEXED else {}
            found = query.search(engine, q, 10, in_stock_only=False, **filters)
            return bool(found) and found[0].sku == f"p{i}"

        searches = PhasedSearches(search, seed=7)
        searches.start()
        time.sleep(args.settle)

        reembedding.start(engine, NEXT)
        searches.phase = "writing next vectors"
        t0 = time.monotonic()
        after = 0
        while rows := reembedding.pending(engine, after, reembedding.BATCH):
            after = rows[-1].id
            reembedding.write_vectors(
                engine,
                [(r.id, r.image, r.image_sha256, reembedding.vector_text(other[int(r.sku[1:])])) for r in rows],
            )
        result["write_s"] = round(time.monotonic() - t0, 1)
        result["write_photos_per_s"] = round(args.products / result["write_s"])
        log(f"next vectors written in {result['write_s']} s")

        searches.phase = "building index copies"
        t0 = time.monotonic()
        result["copies"] = reembedding.build_copies(engine)
        result["copies_s"] = round(time.monotonic() - t0, 1)
        log(f"copies {result['copies']} built in {result['copies_s']} s")

        searches.phase = "switch"
        t0 = time.perf_counter()
        switched = reembedding.switch(engine)
        switched_space = True
        result["switch_call_s"] = round(time.perf_counter() - t0, 3)
        result["searches_held_ms"] = round(switched.searches_held * 1000, 1)
        result["writers_held_ms"] = round(switched.writers_held * 1000, 1)
        searches.phase = "after"
        time.sleep(args.settle)
        searches.finish()
        stored = catalogue.stored_space(engine)
        assert stored is not None and stored.model_name == NEXT.model_name
        result["table_bytes_after"] = _table_bytes(engine)
        result["errors"] = searches.errors[:20]
        # During the switch call the catalogue changes space before the searches' queries do: not measured.
        phases = ("before", "writing next vectors", "building index copies", "switch", "after")
        result["phases"] = searches.by_phase(phases, "found_first", unmeasured=("switch",))
        engine.dispose()
    finally:
        stop_server(home)
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    result["load_at_end"] = load_average()
    result["wall_s"] = round(time.monotonic() - wall, 1)
    return result


def _table_bytes(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_total_relation_size('product_images')")).scalar_one())


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            phase,
            p["searches"],
            p["p50_ms"],
            p["p99_ms"],
            p["max_ms"],
            "-" if p["found_first"] is None else p["found_first"],
        ]
        for phase, p in result["phases"].items()
    ]
    mib = 2**20
    return "\n".join(
        [
            f"# Moving {result['products']:,} photos to another embedding space while searches run",
            "",
            f"`python -m benchmarks.reembed_switch --products {result['products']}` at commit {result['commit']}, "
            f"{result['machine'].get('cpu')}, load at start {result['load_at_start']}, at end "
            f"{result['load_at_end']}; wall time {result['wall_s']} s.",
            "",
            f"Catalogue loaded and indexed in {result['load_s']} s (HNSW graph, category indexes {INDEXED}, IVF index "
            f"of {result['scan_lists']} lists). Next vectors written in {result['write_s']} s "
            f"({result['write_photos_per_s']} photos/s on the database side; the network, not measured here, is "
            f"the real cost); index copies {', '.join(result['copies'])} built in {result['copies_s']} s; the "
            f"switch call took {result['switch_call_s']} s (with the constraint check and ANALYZE after the "
            f"commit); writers waited {result['writers_held_ms']} ms of it, searches {result['searches_held_ms']} ms. "
            f"Table with its indexes: {result['table_bytes_before'] / mib:.0f} MiB before, "
            f"{result['table_bytes_after'] / mib:.0f} MiB after (the old vectors' room is reused as photos "
            "change; `VACUUM FULL` returns it at once, under a lock). Failed searches: "
            f"{len(result['errors'])}.",
            "",
            "A search thread ran `query.search` (k 10, a third in an indexed category) without pause; `found first`: "
            "the share of searches whose first result was the product whose (current, after the switch: next) "
            "vector, slightly perturbed, was the query (not measured during the switch call: the catalogue changes "
            "space before the search thread's queries do).",
            "",
            md_table(["phase", "searches", "p50 ms", "p99 ms", "max ms", "found first"], rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settle", type=float, default=10.0, help="Seconds of searches before and after.")
    parser.add_argument("--home", help="The embedded server's home (default: a temporary folder, deleted).")
    args = parser.parse_args()
    result = run(args)
    name = f"reembed-switch-{args.products // 1000}k"
    paths = write_results(name, result, markdown(result))
    log(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
