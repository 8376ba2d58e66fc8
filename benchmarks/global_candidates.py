"""A verified photo search's nearest products at scale: the HNSW walk alone against the walk plus the photos' IVF
index (revision 0021), for real shoppers' photos among many look-alike products.

Why: a shopper's phone photo is unlike the catalogue's photos. benchmarks/candidates_scale.py found that among
25,000-100,000 products the HNSW walk from such a photo almost never reaches the photographed product (its global
top 50 held it for 0.000 of the photos at 100,000, an exact scan for 0.35-0.63). This measures the repair, through
the function the search calls (``imgsearch_photo_candidates``, top 50, in stock only, no filters, no visual
words): per query, interleaved, with the scan turned off (``imgsearch.scan_probes = 0``: the walk alone, as
before revision 0021) and on (default probes: twice the square root of the index's lists), beside the exact top 50
computed in NumPy. Recorded per size, set and kind: the share of photos whose product is in the global top 50
(what verification can find), R@1 and R@10 of the global ranking (the answer where nothing verifies: loose
produce), the call's p50/p95, and the index's lists, size and build time.

Catalogue: the covers' and groceries' catalogue photos and the 2,524 Myntra photos (real vectors of the default
pipeline, each photo embedded once and cached in ``~/.cache/imgsearch-bench/global-candidates``), padded with synthetic
distractors made from the Myntra vectors only as candidates_scale.py makes them (vectors only: no local features
are needed here), loaded through ``catalogue.upsert_products`` into a throwaway embedded PostgreSQL, the HNSW index
built after the bulk load, the IVF index by ``scan_index.maintain`` (what ingestion runs). Query sets (from
``benchmarks/streetshop_sets.py``): every covers photo, a seeded sample of the groceries test photos and every
groceries-val photo. The default probes were chosen on covers and groceries-val (docs/quality.md); the groceries
test photos were not looked at for it.

    python -m benchmarks.global_candidates --sets /work/data/streetshop \\
        --myntra ../shared/datasets/myntra-fashion-products --sizes 25000,100000

Writes ``benchmarks/results/global-candidates-<largest/1000>k.{md,json}``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.candidates_scale import Distractors
from benchmarks.common import (
    git_commit,
    load_average,
    log,
    machine,
    md_table,
    start_server,
    stop_server,
    write_results,
)

CACHE = Path.home() / ".cache" / "imgsearch-bench" / "global-candidates"
CATALOGUE_SETS = ("covers", "groceries")
QUERY_SETS = ("covers", "groceries", "groceries-val")
BATCH = 500
TOP = 50


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def vectors_of(paths: list[str], weights: str) -> dict[str, np.ndarray]:
    """Default-pipeline vectors of ``paths``; each photo is embedded once (cached by path, per weights file)."""
    key = hashlib.sha256(weights.encode()).hexdigest()[:12]
    index_file, vectors_file = CACHE / f"paths-{key}.json", CACHE / f"vectors-{key}.npy"
    known: dict[str, np.ndarray] = {}
    if index_file.exists():
        known = dict(zip(json.loads(index_file.read_text()), np.load(vectors_file), strict=True))
    missing = [p for p in dict.fromkeys(paths) if p not in known]
    if missing:
        from imgsearch.embedding import Featurizer

        featurizer = Featurizer(weights=weights)
        for i, result in enumerate(featurizer.embed_files(missing)):
            if not result.ok:
                raise SystemExit(f"{result.path}: {result.error}")
            known[str(result.path)] = result.vector.astype(np.float32)
            if i % 1000 == 0:
                log(f"embedded {i:,} of {len(missing):,} photos")
        CACHE.mkdir(parents=True, exist_ok=True)
        index_file.write_text(json.dumps(list(known)))
        np.save(vectors_file, np.stack(list(known.values())))
    return {p: known[p] for p in paths}


def _load(engine: Any, records: list[Any]) -> None:
    from imgsearch import catalogue

    for start in range(0, len(records), BATCH):
        catalogue.upsert_products(engine, records[start : start + BATCH])


def _ranked_skus(engine: Any, vector: np.ndarray, scan: bool) -> tuple[list[str], float]:
    """The global candidates' SKUs by rank, as the verified search gets them, and the call's milliseconds."""
    import sqlalchemy as sa

    from imgsearch import local_features

    with engine.begin() as conn:
        if not scan:
            conn.execute(sa.text("SELECT set_config('imgsearch.scan_probes', '0', true)"))
        t0 = time.perf_counter()
        rows = conn.execute(
            sa.text(
                "SELECT rank, sku FROM imgsearch_photo_candidates(CAST(:q AS vector), :n, :e, NULL, 0, NULL, "
                "NULL, NULL, NULL) WHERE source = 'global'"
            ),
            {"q": str(vector.tolist()), "n": TOP, "e": local_features.EXTRACTOR},
        ).all()
        ms = (time.perf_counter() - t0) * 1000
    ranked: dict[int, str] = {}
    for r in rows:
        ranked.setdefault(r.rank, r.sku)
    return [ranked[k] for k in sorted(ranked)], ms


def measure(engine: Any, queries: list[dict[str, Any]], matrix: np.ndarray, skus: list[str]) -> dict[str, Any]:
    """Recall of the top 50, R@1 and R@10 per set and kind for the walk, walk + scan and exact; call timings."""
    outcomes: dict[tuple[str, str], dict[str, list[float]]] = {}
    timings: dict[str, list[float]] = {"walk": [], "walk + scan": []}
    for i, q in enumerate(queries):
        v = q["vector"]
        exact = [skus[j] for j in np.argsort(-(matrix @ v), kind="stable")[:TOP]]
        order = ("walk", "walk + scan") if i % 2 == 0 else ("walk + scan", "walk")  # interleaved, alternating
        found = {}
        for method in order:
            found[method], ms = _ranked_skus(engine, v, method == "walk + scan")
            timings[method].append(ms)
        found["exact"] = exact
        for key in ((q["set"], "all"), (q["set"], q["kind"])):
            slot = outcomes.setdefault(key, {})
            for method, ranked in found.items():
                slot.setdefault(f"{method} top 50", []).append(q["sku"] in ranked)
                slot.setdefault(f"{method} R@1", []).append(q["sku"] in ranked[:1])
                slot.setdefault(f"{method} R@10", []).append(q["sku"] in ranked[:10])
    return {
        "recall": {
            f"{s}/{k}": {"queries": len(v["exact top 50"]), **{m: round(float(np.mean(x)), 3) for m, x in v.items()}}
            for (s, k), v in sorted(outcomes.items())
        },
        "timing_ms": {
            m: {
                "p50": round(statistics.median(t), 2),
                "p95": round(float(np.percentile(t, 95)), 2),
                "calls": len(t),
            }
            for m, t in timings.items()
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import sqlalchemy as sa

    from imgsearch import db, scan_index, schema, sql
    from imgsearch.catalogue import ImageRecord, ProductRecord

    wall = time.monotonic()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    catalogue_rows = [(s, r) for s in CATALOGUE_SETS for r in _rows(args.sets / s / "catalogue.csv")]
    myntra = _rows(args.myntra / "labels.csv")
    rng = np.random.default_rng(args.seed)
    query_rows = []
    for s in QUERY_SETS:
        rows = [dict(r, set=s) for r in _rows(args.sets / s / "queries.csv")]
        if s == "groceries" and args.groceries_sample < len(rows):
            rows = [rows[i] for i in sorted(rng.choice(len(rows), args.groceries_sample, replace=False))]
        query_rows += rows
    paths = [r["image"] for _, r in catalogue_rows] + [str(args.myntra / r["path"]) for r in myntra]
    paths += [r["image"] for r in query_rows]
    vectors = vectors_of(list(dict.fromkeys(paths)), args.weights)
    queries = [{**r, "vector": vectors[r["image"]]} for r in query_rows]

    records, skus = [], []
    for _, r in catalogue_rows:
        v = vectors[r["image"]]
        records.append(
            ProductRecord(
                sku=r["sku"], category=r["category"], price=Decimal(r["price"]), images=(ImageRecord(r["image"], v),)
            )
        )
        skus.append(r["sku"])
    myntra_vectors = np.stack([vectors[str(args.myntra / r["path"])] for r in myntra])
    for r, v in zip(myntra, myntra_vectors, strict=True):
        records.append(
            ProductRecord(
                sku=f"myntra-{r['id']}",
                category=r["class"],
                price=Decimal("20.00"),
                images=(ImageRecord(str(args.myntra / r["path"]), v),),
            )
        )
        skus.append(f"myntra-{r['id']}")
    maker = Distractors(
        myntra_vectors, [None] * len(myntra), [r["class"] for r in myntra], args.seed, args.vector_noise, 0.0
    )

    result: dict[str, Any] = {
        "benchmark": "global_candidates",
        "commit": git_commit(),
        "machine": machine(),
        "load_at_start": load_average(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "queries": {s: sum(q["set"] == s for q in queries) for s in QUERY_SETS},
        "sizes": {},
    }
    home = args.home or Path(tempfile.mkdtemp(prefix="imgsearch-global-candidates-"))
    try:
        url = start_server(home)
        engine = db.create_engine(url)
        schema.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP INDEX ix_product_images_embedding"))
        matrix = np.stack([r.images[0].embedding for r in records]).astype(np.float32)
        t0 = time.monotonic()
        _load(engine, records)
        loaded = len(records)
        for size in sizes:
            extra = size - loaded
            if extra > 0:
                with engine.begin() as conn:
                    conn.execute(sa.text("DROP INDEX IF EXISTS ix_product_images_embedding"))
                made, new = [], []
                for i in range(extra):
                    category, v, _ = maker.make_vector()
                    sku = f"distractor-{loaded + i:06d}"
                    made.append(v)
                    new.append(
                        ProductRecord(
                            sku=sku,
                            category=category,
                            price=Decimal("10.00"),
                            images=(ImageRecord(f"synthetic/{sku}", v),),
                        )
                    )
                    skus.append(sku)
                t0 = time.monotonic()
                _load(engine, new)
                matrix = np.concatenate([matrix, np.stack(made)])
                loaded = size
            load_s = round(time.monotonic() - t0, 1)
            t0 = time.monotonic()
            with engine.begin() as conn:
                conn.exec_driver_sql(sql.command("create_photo_index"))
            hnsw_s = round(time.monotonic() - t0, 1)
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
            t0 = time.monotonic()
            built = scan_index.maintain(engine, min_photos=1)
            ivf_s = round(time.monotonic() - t0, 1)
            assert built is not None
            log(f"{loaded:,} products: loaded in {load_s} s, HNSW {hnsw_s} s, IVF {built.lists} lists {ivf_s} s")
            for q in queries[: args.warmup]:
                _ranked_skus(engine, q["vector"], True)
                _ranked_skus(engine, q["vector"], False)
            m = measure(engine, queries, matrix, skus)
            result["sizes"][str(loaded)] = {
                "products": loaded,
                "load_s": load_s,
                "hnsw_index_s": hnsw_s,
                "ivf": {
                    "lists": built.lists,
                    "probes": min(built.lists, max(1, round(2 * built.lists**0.5))),
                    "build_s": ivf_s,
                    "size_bytes": built.size_bytes,
                },
                **m,
            }
            log(json.dumps(m["timing_ms"]))
        engine.dispose()
    finally:
        stop_server(home)
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    result["load_at_end"] = load_average()
    result["wall_s"] = round(time.monotonic() - wall, 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    out = [
        "# A verified photo search's nearest products at scale: the HNSW walk alone and with the photos' IVF index",
        "",
        f"`python -m benchmarks.global_candidates` at commit {result['commit']}, {result['machine'].get('cpu')}, "
        f"load at start {result['load_at_start']}, at end {result['load_at_end']}; wall time {result['wall_s']} s.",
        "",
        "Per query, interleaved: `imgsearch_photo_candidates` (top 50, in stock, no filters, no visual words) with "
        "the scan off (`imgsearch.scan_probes = 0`: the walk alone, as before revision 0021) and on (default "
        "probes), and the exact top 50 in NumPy. `top 50`: share of photos whose product is among the global "
        "candidates (what verification can find); R@1/R@10: of the global ranking itself. Queries: "
        + ", ".join(f"{s} {n}" for s, n in result["queries"].items())
        + " (groceries: a seeded sample of the test split). Distractors: synthetic, from the Myntra vectors only "
        "(benchmarks/candidates_scale.py's construction).",
        "",
    ]
    methods = ("walk", "walk + scan", "exact")
    for size, s in result["sizes"].items():
        ivf = s["ivf"]
        out += [
            f"## {int(size):,} products",
            "",
            f"IVF index: {ivf['lists']} lists, {ivf['probes']} probed, {ivf['size_bytes'] / 2**20:.1f} MiB, built in "
            f"{ivf['build_s']} s (HNSW {s['hnsw_index_s']} s). Call p50/p95: walk "
            f"{s['timing_ms']['walk']['p50']}/{s['timing_ms']['walk']['p95']} ms, walk + scan "
            f"{s['timing_ms']['walk + scan']['p50']}/{s['timing_ms']['walk + scan']['p95']} ms.",
            "",
        ]
        rows = []
        for key, r in s["recall"].items():
            rows.append(
                [
                    key,
                    r["queries"],
                    *(r[f"{m} top 50"] for m in methods),
                    *(r[f"{m} R@1"] for m in methods),
                    *(r[f"{m} R@10"] for m in methods),
                ]
            )
        headers = [
            "set/kind",
            "queries",
            *(f"top 50: {m}" for m in methods),
            *(f"R@1: {m}" for m in methods),
            *(f"R@10: {m}" for m in methods),
        ]
        out += [md_table(headers, rows), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=Path, required=True, help="benchmarks/streetshop_sets.py's output folder")
    parser.add_argument("--myntra", type=Path, required=True)
    parser.add_argument("--weights", default="imagenet", help="VGG16 weights (IMGSEARCH_VGG16_WEIGHTS's file)")
    parser.add_argument("--sizes", default="25000,100000", help="catalogue sizes measured, comma-separated")
    parser.add_argument("--groceries-sample", type=int, default=600)
    parser.add_argument("--vector-noise", type=float, default=0.005)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", type=Path, help="keep the catalogue's server here (default: a throwaway folder)")
    args = parser.parse_args()
    result = run(args)
    largest = max(int(s) for s in result["sizes"])
    json_path, md_path = write_results(f"global-candidates-{largest // 1000}k", result, markdown(result))
    log(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
