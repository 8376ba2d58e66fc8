"""Candidate recall of the visual-word index (imgsearch.visual_words) on the street-to-shop sets.

A verified photo search can only find the photographed product if a candidate source proposes it. This measures
the second source, the bag-of-visual-words inverted index: for every shopper photo of ``covers`` and
``groceries`` (/work/data/streetshop), is the right product among the index's top 10/25/50/100, with the two
catalogues together and optionally the 2,524 Myntra photos as distractors? Also the time of a query's word
assignment and of its SQL, and the bytes a photo's words take.

    python -m benchmarks.visual_words features          # compute and cache local features (slow, once)
    python -m benchmarks.visual_words run               # learn the vocabulary, load a server, measure

Local features are cached under ``~/.cache/imgsearch-visual-words`` (one ``.npz`` per image list).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import git_commit, load_average, log, machine, md_table, percentiles, write_results

DATA = Path("/work/data/streetshop")
CACHE = Path(os.environ.get("IMGSEARCH_VW_CACHE", "~/.cache/imgsearch-visual-words")).expanduser()
#: Image lists: (csv, is the list a catalogue).
LISTS: dict[str, tuple[Path, bool]] = {
    "covers-catalogue": (DATA / "covers" / "catalogue.csv", True),
    "groceries-catalogue": (DATA / "groceries" / "catalogue.csv", True),
    "myntra-catalogue": (DATA / "synthetic-fashion" / "catalogue.csv", True),
    "covers-queries": (DATA / "covers" / "queries.csv", False),
    "groceries-queries": (DATA / "groceries" / "queries.csv", False),
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _extract(args: tuple[str, int]) -> tuple[bytes, bytes, int, int]:
    import cv2

    from imgsearch import local_features

    cv2.setNumThreads(1)
    path, keypoints = args
    f = local_features.features_of(Path(path), max_keypoints=keypoints)
    points, descriptors = f.pack()
    return points, descriptors, f.width, f.height


def cached_features(name: str, workers: int = 2) -> tuple[list[dict[str, str]], list[Any]]:
    """The rows of image list ``name`` and their :class:`LocalFeatures` (computed once, then cached)."""
    from imgsearch import local_features
    from imgsearch.local_features import LocalFeatures

    path, is_catalogue = LISTS[name]
    rows = _rows(path)
    keypoints = local_features.CATALOGUE_KEYPOINTS if is_catalogue else local_features.QUERY_KEYPOINTS
    key = hashlib.sha256(repr(([r["image"] for r in rows], keypoints, local_features.EXTRACTOR)).encode()).hexdigest()[
        :12
    ]
    cache = CACHE / f"{name}-{key}.npz"
    if not cache.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        log(f"{name}: computing features of {len(rows)} photos ({keypoints} keypoints), cached in {cache}")
        started = time.monotonic()
        with ProcessPoolExecutor(workers) as pool:
            out = list(pool.map(_extract, [(r["image"], keypoints) for r in rows], chunksize=8))
        log(f"{name}: {time.monotonic() - started:.0f} s")
        counts = np.array([len(d) // 128 for _, d, _, _ in out], np.int64)
        np.savez(
            cache,
            counts=counts,
            sizes=np.array([(w, h) for _, _, w, h in out], np.int32).reshape(-1, 2),
            points=np.frombuffer(b"".join(p for p, _, _, _ in out), np.uint8),
            descriptors=np.frombuffer(b"".join(d for _, d, _, _ in out), np.uint8),
        )
    data = np.load(cache)
    ends = np.cumsum(data["counts"])
    starts = ends - data["counts"]
    points, descriptors, sizes = data["points"], data["descriptors"], data["sizes"]
    features = [
        LocalFeatures.unpack(points[s * 4 : e * 4].tobytes(), descriptors[s * 128 : e * 128].tobytes(), int(w), int(h))
        for s, e, (w, h) in zip(starts, ends, sizes, strict=True)
    ]
    return rows, features


#: Ranks at which candidate recall is reported (the index's top n products).
CUTOFFS = (1, 10, 25, 50, 100)
PCT = ("p50_ms", "p95_ms", "p99_ms", "mean_ms")


def _load(engine: Any, names: list[str]) -> int:
    """Upsert the products of catalogue lists ``names`` with random unit vectors and their cached features."""
    from imgsearch import catalogue
    from imgsearch.catalogue import ImageRecord, ProductRecord

    rng = np.random.default_rng(0)
    count = 0
    for name in names:
        rows, features = cached_features(name)
        records = []
        for row, f in zip(rows, features, strict=True):
            v = rng.normal(size=512).astype(np.float32)
            photo = ImageRecord(row["image"], v / np.linalg.norm(v), features=f)
            records.append(
                ProductRecord(sku=row["sku"], category=row["category"], price=Decimal(row["price"]), images=(photo,))
            )
        for start in range(0, len(records), 500):
            catalogue.upsert_products(engine, records[start : start + 500])
        count += len(records)
    return count


def _storage(engine: Any, photos: int) -> dict[str, Any]:
    import sqlalchemy as sa

    sizes = {}
    with engine.connect() as conn:
        for table in ("visual_word_postings", "visual_word_photos", "visual_vocabularies", "photo_features"):
            sizes[table] = conn.execute(
                sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": table}
            ).scalar_one()
        postings = conn.execute(sa.text("SELECT count(*) FROM visual_word_postings")).scalar_one()
    words = sizes["visual_word_postings"] + sizes["visual_word_photos"]
    return {
        "bytes": sizes,
        "postings": postings,
        "postings_per_photo": round(postings / photos, 1),
        "word_bytes_per_photo": round(words / photos),
        "word_bytes_per_posting": round(words / max(postings, 1), 1),
        "feature_bytes_per_photo": round(sizes["photo_features"] / photos),
    }


def _measure(engine: Any, sets: list[str], n: int) -> dict[str, Any]:
    """Candidate recall of every query of ``sets`` at :data:`CUTOFFS`, by set and kind; timings."""
    import sqlalchemy as sa

    from imgsearch import visual_words
    from imgsearch.local_features import EXTRACTOR

    vocabulary = visual_words.load_vocabulary(engine)
    assert vocabulary is not None
    statement = sa.text(
        "SELECT rank, sku FROM imgsearch_word_candidates(CAST(:words AS integer[]), :n, :extractor, "
        "in_stock_only => false)"
    )
    out: dict[str, Any] = {}
    assign_ms: list[float] = []
    sql_ms: list[float] = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE visual_word_postings"))
        conn.execute(sa.text("VACUUM ANALYZE visual_word_photos"))
        for name in sets:
            rows, features = cached_features(f"{name}-queries")
            ranks: dict[str, list[int]] = {}
            for row, f in zip(rows, features, strict=True):
                started = time.perf_counter()
                words = visual_words.query_words(vocabulary, f)
                assigned = time.perf_counter()
                found = conn.execute(statement, {"words": words, "n": n, "extractor": EXTRACTOR}).all()
                done = time.perf_counter()
                assign_ms.append((assigned - started) * 1000)
                sql_ms.append((done - assigned) * 1000)
                rank = next((r.rank for r in found if r.sku == row["sku"]), None)
                ranks.setdefault(row["kind"], []).append(int(rank) if rank is not None else n + 1)
                ranks.setdefault("all", []).append(int(rank) if rank is not None else n + 1)
            out[name] = {
                kind: {"queries": len(r), **{f"R@{k}": round(float(np.mean(np.array(r) <= k)), 3) for k in CUTOFFS}}
                for kind, r in ranks.items()
            }
        # The call as a search makes it: every column, the candidates' local features included (their transfer
        # costs as much as the ranking), for 50 and 100 candidates, on the first 100 cover photos.
        full: dict[str, list[float]] = {"50": [], "100": []}
        rows, features = cached_features("covers-queries")
        for f in features[:100]:
            words = visual_words.query_words(vocabulary, f)
            for size in full:
                started = time.perf_counter()
                conn.execute(
                    sa.text("SELECT * FROM imgsearch_word_candidates(CAST(:words AS integer[]), :n, :extractor)"),
                    {"words": words, "n": int(size), "extractor": EXTRACTOR},
                ).all()
                full[size].append((time.perf_counter() - started) * 1000)
    return {
        "recall": out,
        "assign_ms": percentiles(assign_ms),
        "sql_ms": percentiles(sql_ms),
        "sql_with_features_ms": {size: percentiles(ms) for size, ms in full.items()},
    }


def run(args: argparse.Namespace) -> None:
    """Two catalogues: covers + groceries, then with the Myntra photos added; learn, index and measure each."""
    import sqlalchemy as sa

    from imgsearch import db, embedded_server, schema, visual_words

    for name in LISTS:
        cached_features(name)
    load_start = load_average()
    home = Path(tempfile.mkdtemp(prefix="imgsearch-vw-"))
    result: dict[str, Any] = {
        "machine": machine(),
        "commit": git_commit(),
        "uptime_at_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "load_at_start": load_start,
        "vocabulary": {"coarse": args.coarse, "fine": args.fine, "query_probes": visual_words.QUERY_PROBES},
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "catalogues": {},
    }
    try:
        engine = db.create_engine(embedded_server.start(home))
        schema.upgrade(engine)
        photos = 0
        for label, names in (
            ("covers+groceries", ["covers-catalogue", "groceries-catalogue"]),
            ("covers+groceries+myntra", ["myntra-catalogue"]),
        ):
            if label.endswith("myntra") and args.no_myntra:
                break
            photos += _load(engine, names)
            log(f"{label}: {photos} photos loaded; building the vocabulary")
            built = visual_words.build(engine, coarse=args.coarse, fine=args.fine)
            assert built is not None
            log(f"{label}: {built}")
            measured = _measure(engine, ["covers", "groceries"], args.n)
            with engine.connect() as conn:
                plan = "\n".join(
                    conn.execute(
                        sa.text(
                            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT p.word, array_agg(p.image_id) "
                            "FROM visual_word_postings p WHERE p.vocabulary_id = :v AND p.word = ANY(CAST(:w AS "
                            "integer[])) GROUP BY p.word"
                        ),
                        {"v": built.vocabulary_id, "w": list(range(0, built.words, max(1, built.words // 1000)))},
                    ).scalars()
                )
            result["catalogues"][label] = {
                "photos": photos,
                "build": built.__dict__,
                **measured,
                "storage": _storage(engine, photos),
                "postings_plan": plan,
            }
            log(f"{label}: {measured['recall']}")
        engine.dispose()
    finally:
        embedded_server.stop(home)
        shutil.rmtree(home, ignore_errors=True)
    result["load_at_end"] = load_average()
    write_results("visual-words", result, _markdown(result))


def _markdown(result: dict[str, Any]) -> str:
    vocab = result["vocabulary"]
    lines = [
        "# Visual-word candidates on the street-to-shop sets",
        "",
        f"`python -m benchmarks.visual_words run` at commit {result['commit']} (uncommitted work), "
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores shared with other work; "
        f"`uptime` at start: `{result['uptime_at_start']}`; load at end {result['load_at_end']}; "
        f"OPENBLAS_NUM_THREADS={result['blas_threads']}.",
        "",
        f"Vocabulary: {vocab['coarse']} x {vocab['fine']} = {vocab['coarse'] * vocab['fine']:,} words (two-level "
        f"k-means on RootSIFT, learnt from the catalogue's stored features), catalogue photos 1 probe, queries "
        f"{vocab['query_probes']}. Score: sum of idf^2 of shared words / sqrt(photo's words), product = best photo. "
        "Catalogue features: `features_of` defaults (360 keypoints); queries: 1000 keypoints. Candidate recall = the "
        "right product is among the index's top n products (no verification, no global vector).",
        "",
    ]
    for label, c in result["catalogues"].items():
        b, st = c["build"], c["storage"]
        lines += [
            f"## Catalogue {label}: {c['photos']:,} photos",
            "",
            f"Build: learnt from {b['descriptors']:,} descriptors of {b['sample_photos']:,} photos in "
            f"{b['learn_s']} s; {b['photos']:,} photos indexed in {b['index_s']} s.",
            "",
        ]
        rows = []
        for name, kinds in c["recall"].items():
            for kind, r in kinds.items():
                rows.append([name, kind, r["queries"], *(r[f"R@{k}"] for k in CUTOFFS)])
        lines += [md_table(["set", "kind", "queries", *(f"R@{k}" for k in CUTOFFS)], rows), ""]
        a, s = c["assign_ms"], c["sql_ms"]
        lines += [
            md_table(
                ["step", "p50 ms", "p95 ms", "p99 ms", "mean ms"],
                [
                    [
                        "word assignment (Python, ~1000 descriptors)",
                        a["p50_ms"],
                        a["p95_ms"],
                        a["p99_ms"],
                        a["mean_ms"],
                    ],
                    ["imgsearch_word_candidates (top 100, SQL)", s["p50_ms"], s["p95_ms"], s["p99_ms"], s["mean_ms"]],
                    *(
                        [f"the same, every column ({size} candidates' features)", *(m[k] for k in PCT)]
                        for size, m in c["sql_with_features_ms"].items()
                    ),
                ],
            ),
            "",
            "SQL timings: `rank, sku` only of the top 100 over all queries; every column on the first 100 cover "
            "photos.",
            "",
            f"Storage: {st['postings']:,} postings ({st['postings_per_photo']} a photo), "
            f"{st['word_bytes_per_photo']:,} bytes a photo for its words ({st['word_bytes_per_posting']} bytes a "
            f"posting, tables and indexes), against {st['feature_bytes_per_photo']:,} bytes a photo of local "
            f"features; vocabulary {st['bytes']['visual_vocabularies']:,} bytes.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("features", help="compute and cache the local features of every list")
    r = sub.add_parser("run", help="learn, index and measure")
    r.add_argument("--coarse", type=int, default=256)
    r.add_argument("--fine", type=int, default=256)
    r.add_argument("--n", type=int, default=100, help="candidates asked for (the largest cutoff)")
    r.add_argument("--no-myntra", action="store_true", help="skip the run with the Myntra distractors")
    args = parser.parse_args()
    if args.command == "features":
        for name in LISTS:
            cached_features(name)
    else:
        run(args)


if __name__ == "__main__":
    main()
