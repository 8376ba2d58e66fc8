"""How long the near-duplicate report takes at catalogue scale, and that it finds what was planted.

A catalogue of N products (vectors synthesized from real embeddings like the search benchmark's, category sizes
from 30% down to 0.1%, each with a random colour signature) gets P planted duplicates: copies of random
products' vectors moved by a distance like that of a re-encoded or slightly cropped photo (0.005 to 0.03), with
the original's colours slightly shifted. Then ``imgsearch_near_duplicates`` runs at the default thresholds over
the whole catalogue, as ``imgsearch duplicates`` does: its time, the pairs it returns, and how many planted pairs
are among them. (Synthetic vectors, mixes of a few thousand real ones, lie much closer together than a real
catalogue's photos; the colour check is what keeps their pairs few.) Results in
``benchmarks/results/duplicates-<N>.{json,md}``.

    .venv/bin/python -m benchmarks.duplicates --images ../shared/datasets/myntra-fashion-products   # 100k
    .venv/bin/python -m benchmarks.duplicates --n 20000 --no-wait
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    DEFAULT_CACHE,
    EXAMPLES,
    build_photo_index,
    cached_embeddings,
    copy_catalogue,
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
from benchmarks.search import build_catalogue


def plant(vectors: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` near copies of random rows: (the copies, the row each copies). Each copy is moved by a random
    direction orthogonal to the original so that its cosine distance is 0.005 to 0.03."""
    sources = rng.choice(len(vectors), size=count, replace=False)
    copies = np.empty((count, vectors.shape[1]), np.float32)
    for n, i in enumerate(sources):
        v = vectors[i] / np.linalg.norm(vectors[i])
        noise = rng.normal(size=v.shape)
        noise -= noise @ v * v
        noise /= np.linalg.norm(noise)
        distance = rng.uniform(0.005, 0.03)
        angle = np.arccos(1 - distance)
        copies[n] = np.cos(angle) * v + np.sin(angle) * noise
    return copies, sources


def colours(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` colour signatures like real ones: square roots of histograms dominated by a few colour bins."""
    from imgsearch.colour import COLOUR_BINS

    histograms = rng.dirichlet(np.full(COLOUR_BINS, 0.1), size=n)
    return np.sqrt(histograms).astype(np.float32)


def nudged(signatures: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same colours seen in another copy of the photo: the histogram slightly changed."""
    histograms = signatures.astype(np.float64) ** 2 * rng.uniform(0.9, 1.1, size=signatures.shape)
    return np.sqrt(histograms / histograms.sum(axis=1, keepdims=True)).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=EXAMPLES, help="<class>/<image> folder to derive vectors from")
    parser.add_argument("--n", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--planted", type=int, default=200, help="planted duplicates")
    parser.add_argument("--precision", default="bfloat16", help="featurizer precision of the real embeddings")
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-duplicates"), help="throwaway server")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--max-wait", type=float, default=900)
    parser.add_argument("--name", help="result file name (default duplicates-<N>)")
    args = parser.parse_args(argv)

    from imgsearch import db, duplicates, schema

    real, _, labels = cached_embeddings(args.images, args.precision, args.cache_dir, args.weights)
    cat, _ = build_catalogue(real, labels, args.n, seed=21)
    rng = np.random.default_rng(22)
    copies, sources = plant(cat.vectors, args.planted, rng)
    skus = [cat.sku(i) for i in range(cat.n)] + [f"copy-{cat.sku(i)}" for i in sources]
    categories = [cat.classes[c] for c in cat.category] + [cat.classes[cat.category[i]] for i in sources]
    prices = list(cat.price) + [float(cat.price[i]) * 0.7 for i in sources]
    stock = list(cat.in_stock) + [True] * len(sources)
    vectors = np.concatenate([cat.vectors, copies])
    signatures = colours(cat.n, rng)
    signatures = np.concatenate([signatures, nudged(signatures[sources], rng)])

    url = start_server(args.home)
    engine = db.create_engine(url)
    schema.upgrade(engine)
    with db.psycopg_connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE products, product_images, tuned_images, photo_features CASCADE")
        conn.execute("DROP INDEX IF EXISTS ix_product_images_embedding")
        started = time.perf_counter()
        copy_catalogue(conn, skus, categories, prices, stock, vectors, signatures)
        log(f"loaded {len(skus)} products in {time.perf_counter() - started:.0f} s; building the HNSW index")
        started = time.perf_counter()
        build_photo_index(conn)
        build_s = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE products")
        conn.execute("VACUUM ANALYZE product_images")

    quiet = {"quiet": None, "load_at_start": load_average()} if args.no_wait else wait_for_quiet(max_wait=args.max_wait)
    log("finding near-duplicates")
    started = time.perf_counter()
    pairs = duplicates.near_duplicate_pairs(engine)
    seconds = time.perf_counter() - started
    planted = {tuple(sorted((cat.sku(i), f"copy-{cat.sku(i)}"))) for i in sources}
    found = {tuple(sorted((p.sku_a, p.sku_b))) for p in pairs}
    recall = len(planted & found) / len(planted)
    started = time.perf_counter()
    groups = duplicates.find_duplicate_groups(engine)
    groups_s = time.perf_counter() - started
    engine.dispose()
    stop_server(args.home)

    name = args.name or f"duplicates-{args.n // 1000}k"
    result = {
        "benchmark": "duplicates",
        "commit": git_commit(),
        "machine": machine(),
        "command": "python -m benchmarks.duplicates " + " ".join(argv or sys.argv[1:]),
        "quiet": quiet,
        "load_after": load_average(),
        "products": len(skus),
        "planted": len(planted),
        "hnsw_build_s": round(build_s, 1),
        "pairs_s": round(seconds, 1),
        "ms_per_product": round(1000 * seconds / len(skus), 3),
        "pairs": len(pairs),
        "planted_found": round(recall, 4),
        "groups": len(groups),
        "groups_s": round(groups_s, 1),
        "max_distance": duplicates.DEFAULT_MAX_DISTANCE,
        "max_colour_distance": duplicates.DEFAULT_MAX_COLOUR_DISTANCE,
    }
    rows = [
        ["products (planted duplicates)", f"{len(skus):,} ({len(planted)})"],
        ["time for every pair within the default distance", f"{seconds:.1f} s ({result['ms_per_product']} ms/product)"],
        ["pairs found", len(pairs)],
        ["planted pairs found", f"{recall:.3f}"],
        ["groups (imgsearch duplicates, whole run)", f"{len(groups)} in {groups_s:.1f} s"],
        ["HNSW build", f"{build_s:.0f} s"],
    ]
    markdown = "\n".join(
        [
            f"# Near-duplicate report at {len(skus):,} products",
            "",
            f"Commit {result['commit']}, {result['machine'].get('cpu')}, load {quiet.get('load_at_start')} before, "
            f"{result['load_after']} after; default distances {duplicates.DEFAULT_MAX_DISTANCE} (VGG16) and "
            f"{duplicates.DEFAULT_MAX_COLOUR_DISTANCE} (colour).",
            "",
            md_table(["measure", "value"], rows),
            "",
            f"Command: `{result['command']}`",
        ]
    )
    write_results(name, result, markdown)
    log(markdown)


if __name__ == "__main__":
    main()
