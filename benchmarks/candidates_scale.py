"""Candidate recall of a verified photo search at 100,000 products: is the photographed product still proposed?

A verified photo search (``imgsearch.query.search_verified``) only checks with RANSAC the products its two
candidate sources propose: the global vector's top 50 (``imgsearch_verification_candidates``) and the 25 products
sharing the most visual words with the photo that the global top 50 does not already hold
(``imgsearch_word_candidates`` with those excluded). A product neither proposes cannot be found. This measures,
for the real shopper photos of /work/data/streetshop (``covers``: all 400 phone photos of DVD covers;
``groceries``: a seeded sample of the 2,485 shelf photos, kinds ``packaged`` and ``produce`` apart), whether the
right product is in the global top 50, in the word top 25, and in their union as the search forms it, with

1. the 2,705 real products only (covers 100 + groceries 81 + the 2,524 Myntra fashion photos), and
2. the same plus synthetic distractor products up to ``--products`` in total (one photo each).

Real products get their real vectors and local features: vectors of the default pipeline (VGG16 ``block5_conv3``
global average, element-wise square root, L2-normalised) pooled from the cached bfloat16 feature maps of
``benchmarks/quality.py`` (``~/.cache/imgsearch-quality/<set>/nearest-squash-224@bf16.npy``; checked against
``Featurizer().embed_image`` on a few photos), SIFT features from ``benchmarks/visual_words.py``'s cache.
Queries get their real vectors and their 1000-keypoint features the same way.

Distractors are made only from the Myntra photos (never from a covers or groceries photo): each takes 2 or 3
random Myntra photos of one category with Dirichlet(1) weights; its vector is the weighted mix of theirs plus
Gaussian noise (``--vector-noise`` per dimension), clipped at 0 (the real vectors are square roots of ReLU
averages) and L2-normalised; its keypoints are as many as the first photo has, drawn from the photos in
proportion to the weights (coordinates scaled into the first photo's frame), each descriptor plus Gaussian noise
(``--descriptor-noise`` on the uint8 scale, rounded, clipped to 0..255), so their visual words differ from the
source photos'. The vocabulary is learnt again (``visual_words.build``) on the large catalogue, as
``visual_words.maintain`` would after a 4x growth.

Everything goes through the library: products and their features by ``catalogue.upsert_products`` in batches of
500 into a throwaway embedded PostgreSQL; the catalogue-wide HNSW index is dropped before the distractors' bulk
load and built again with the project's ``create_photo_index`` command; VACUUM ANALYZE; candidates by the SQL
functions the search calls, with the search's parameters (in-stock only, no filters). Recorded: recall per size,
set and kind; the exact (brute-force) global top-50 recall beside the HNSW one; p50/p95 of each SQL call; word
assignment time; load, index and vocabulary times; table sizes; CPU and load averages.

    python -m benchmarks.candidates_scale --products 100000

Writes ``benchmarks/results/candidates-<products/1000>k.{md,json}`` unless ``--name`` says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

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
from benchmarks.quality import load_maps, pool_cached
from benchmarks.visual_words import DATA, cached_features

QUALITY_CACHE = Path("~/.cache/imgsearch-quality").expanduser()
MAPS = "nearest-squash-224@bf16"
#: Cache folders of benchmarks/quality.py holding the maps of each image list's photos.
MAP_FOLDERS = ("streetshop-covers", "streetshop-groceries", "myntra-fashion-products")
REAL_CATALOGUES = ("covers-catalogue", "groceries-catalogue", "myntra-catalogue")
GLOBAL_K = 50  # imgsearch.query.VERIFY_CANDIDATES
WORD_K = 25  # imgsearch.query.WORD_CANDIDATES
#: Word candidates read for recall: enough to hold the first WORD_K outside any global top GLOBAL_K.
WORD_READ = GLOBAL_K + WORD_K
BATCH = 500
#: imgsearch.ef_search of the second, wider global call measured beside the default (100).
WIDE_EF = 400
SERVER_CONFIG = """
# candidates_scale benchmark server (machine shared with other work: modest memory)
shared_buffers = '3GB'
maintenance_work_mem = '2GB'
effective_cache_size = '12GB'
max_parallel_maintenance_workers = 1
max_wal_size = '8GB'
checkpoint_timeout = '30min'
synchronous_commit = off
"""


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _pool(maps: np.ndarray) -> np.ndarray:
    """The default pipeline's pooling: global average, element-wise square root, L2 normalisation."""
    features = np.sqrt(np.maximum(maps.mean(axis=(1, 2)), 0.0))
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def real_vectors() -> dict[str, np.ndarray]:
    """Default-pipeline vectors of every cached photo (catalogues and queries), by file path."""
    out: dict[str, np.ndarray] = {}
    for name in MAP_FOLDERS:
        folder = QUALITY_CACHE / name
        files = json.loads((folder / "labels.json").read_text())["files"]
        vectors = pool_cached(load_maps(folder, MAPS), _pool)
        out.update(zip(files, vectors.astype(np.float32), strict=True))
    return out


def check_vectors(vectors: dict[str, np.ndarray], paths: list[str]) -> list[float]:
    """Cosine of the pooled cached vectors to the library's own ``Featurizer().embed_image`` (one model run)."""
    from imgsearch.embedding import Featurizer

    featurizer = Featurizer(weights=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    return [round(float(featurizer.embed_image(p) @ vectors[p]), 6) for p in paths]


class Distractors:
    """Synthetic products made from the Myntra photos only (see the module docstring)."""

    def __init__(
        self,
        vectors: np.ndarray,
        features: list[Any],
        categories: list[str],
        seed: int,
        vector_noise: float,
        descriptor_noise: float,
    ) -> None:
        self.vectors, self.features, self.categories = vectors, features, categories
        self.by_category: dict[str, np.ndarray] = {}
        for i, c in enumerate(categories):
            self.by_category.setdefault(c, []).append(i)  # type: ignore[attr-defined]
        self.by_category = {c: np.asarray(v) for c, v in self.by_category.items()}
        self.names = sorted(self.by_category)
        self.weights = np.array([len(self.by_category[c]) for c in self.names], np.float64)
        self.weights /= self.weights.sum()
        self.rng = np.random.default_rng(seed)
        self.vector_noise, self.descriptor_noise = vector_noise, descriptor_noise

    def _mix(self) -> tuple[str, np.ndarray, list[int], np.ndarray]:
        rng = self.rng
        category = self.names[rng.choice(len(self.names), p=self.weights)]
        pool = self.by_category[category]
        count = min(len(pool), int(rng.integers(2, 4)))
        sources = [int(i) for i in rng.choice(pool, count, replace=False)]
        w = rng.dirichlet(np.ones(count))
        v = (w[:, None] * self.vectors[sources]).sum(axis=0) + rng.normal(0, self.vector_noise, 512)
        v = np.maximum(v, 0.0)
        return category, (v / np.linalg.norm(v)).astype(np.float32), sources, w

    def make_vector(self) -> tuple[str, np.ndarray, list[int]]:
        """One distractor without local features: its category, vector and the Myntra photos it came from."""
        category, v, sources, _ = self._mix()
        return category, v, sources

    def make(self) -> tuple[str, np.ndarray, Any, list[int]]:
        """One distractor: its category, vector, features and the Myntra photos it came from."""
        from imgsearch.local_features import LocalFeatures

        rng = self.rng
        category, v, sources, w = self._mix()
        first = self.features[sources[0]]
        total = len(first)
        take = np.floor(w * total).astype(int)
        take[0] += total - take.sum()
        points, descriptors = [], []
        for source, n in zip(sources, take, strict=True):
            f = self.features[source]
            n = min(int(n), len(f))
            if n <= 0:
                continue
            idx = rng.choice(len(f), n, replace=False)
            scale = np.array([first.width / max(f.width, 1), first.height / max(f.height, 1)], np.float32)
            points.append(f.points[idx] * scale)
            descriptors.append(f.descriptors[idx])
        d = np.concatenate(descriptors).astype(np.float32)
        d += rng.standard_normal(d.shape, dtype=np.float32) * self.descriptor_noise
        d = np.clip(np.rint(d), 0, 255).astype(np.uint8)
        p = np.concatenate(points).astype(np.float32)
        return category, v, LocalFeatures(p, d, first.width, first.height), sources


def _upsert(engine: Any, records: list[Any]) -> None:
    from imgsearch import catalogue

    for start in range(0, len(records), BATCH):
        catalogue.upsert_products(engine, records[start : start + BATCH])


def load_real(engine: Any, vectors: dict[str, np.ndarray]) -> tuple[int, np.ndarray, list[str]]:
    """Upsert the three real catalogues with their vectors and features; (products, vectors, SKUs) in order."""
    from imgsearch.catalogue import ImageRecord, ProductRecord

    skus, rows_v = [], []
    records = []
    for name in REAL_CATALOGUES:
        rows, features = cached_features(name)
        for row, f in zip(rows, features, strict=True):
            v = vectors[row["image"]]
            records.append(
                ProductRecord(
                    sku=row["sku"],
                    category=row["category"],
                    price=Decimal(row["price"]),
                    images=(ImageRecord(row["image"], v, features=f),),
                )
            )
            skus.append(row["sku"])
            rows_v.append(v)
    _upsert(engine, records)
    return len(records), np.stack(rows_v), skus


def load_distractors(engine: Any, maker: Distractors, count: int) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Upsert ``count`` distractors in batches; their vectors and SKUs, and time spent making vs writing them."""
    from imgsearch import catalogue
    from imgsearch.catalogue import ImageRecord, ProductRecord

    vectors = np.zeros((count, 512), np.float32)
    skus = [f"distractor-{i:06d}" for i in range(count)]
    make_s = write_s = 0.0
    keypoints = 0
    for start in range(0, count, BATCH):
        t0 = time.monotonic()
        records = []
        for i in range(start, min(count, start + BATCH)):
            category, v, f, _ = maker.make()
            vectors[i] = v
            keypoints += len(f)
            photo = ImageRecord(f"synthetic/{skus[i]}", v, features=f)
            records.append(ProductRecord(sku=skus[i], category=category, price=Decimal("10.00"), images=(photo,)))
        t1 = time.monotonic()
        catalogue.upsert_products(engine, records)
        t2 = time.monotonic()
        make_s += t1 - t0
        write_s += t2 - t1
        if (start // BATCH) % 20 == 0:
            log(f"distractors: {start + len(records):,} of {count:,} ({write_s:.0f} s writing, {make_s:.0f} s making)")
    return vectors, skus, {"make_s": round(make_s, 1), "upsert_s": round(write_s, 1), "keypoints": keypoints}


def queries(groceries_sample: int, seed: int, vectors: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """All cover photos and a seeded sample of grocery photos: set, kind, sku, vector, features."""
    out = []
    for name, sample in (("covers", None), ("groceries", groceries_sample)):
        rows, features = cached_features(f"{name}-queries")
        index = np.arange(len(rows))
        if sample is not None and sample < len(rows):
            index = np.sort(np.random.default_rng(seed).choice(len(rows), sample, replace=False))
        for i in index:
            row = rows[int(i)]
            out.append(
                {
                    "set": name,
                    "kind": row["kind"],
                    "sku": row["sku"],
                    "vector": vectors[row["image"]],
                    "features": features[i],
                }
            )
    return out


#: The tables of the visual words (their sizes are added up in the results).
WORD_TABLES = ("visual_word_photos", "visual_word_postings", "visual_word_frequencies")


def _sizes(engine: Any) -> dict[str, int]:
    import sqlalchemy as sa

    names = (
        "products",
        "product_images",
        "ix_product_images_embedding",
        "photo_features",
        "visual_word_photos",
        "visual_word_postings",
        "visual_word_frequencies",
        "visual_vocabularies",
    )
    with engine.connect() as conn:
        return {
            n: int(conn.execute(sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": n}).scalar_one())
            for n in names
        }


def _vacuum(engine: Any) -> float:
    import sqlalchemy as sa

    started = time.monotonic()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("products", "product_images", "photo_features", "visual_word_photos", "visual_word_postings"):
            conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
    return round(time.monotonic() - started, 1)


def _words_per_photo(engine: Any) -> dict[str, float]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT CASE WHEN p.sku LIKE 'distractor-%' THEN 'distractor' WHEN p.category IN "
                "(SELECT DISTINCT category FROM products WHERE sku LIKE 'dvd-%') THEN 'covers' ELSE 'other real' END "
                "AS what, avg(w.words) FROM visual_word_photos w JOIN product_images i ON i.id = w.image_id "
                "JOIN products p ON p.id = i.product_id GROUP BY 1"
            )
        ).all()
    return {r[0]: round(float(r[1]), 1) for r in rows}


def measure(
    engine: Any,
    qs: list[dict[str, Any]],
    matrix: np.ndarray,
    skus: list[str],
    full_every: int,
    warmup: int,
    cap: int,
) -> dict[str, Any]:
    """Recall of the global top 50, the word top 25 and their union as the search forms it; SQL timings."""
    import sqlalchemy as sa

    from imgsearch import visual_words
    from imgsearch.db import binary_vector
    from imgsearch.local_features import EXTRACTOR

    vocabulary = visual_words.load_vocabulary(engine)
    assert vocabulary is not None
    global_sql = sa.text(
        "SELECT * FROM imgsearch_verification_candidates(CAST(:query AS vector), :k, :extractor, "
        "CAST(:categories AS text[]), :in_stock_only, CAST(:max_price AS numeric), CAST(:exclude AS text[]))"
    )
    word_rank_sql = sa.text(
        "SELECT rank, sku FROM imgsearch_word_candidates(CAST(:words AS integer[]), :n, :extractor, "
        "in_stock_only => true, vocabulary => :vocabulary)"
    )
    # The call exactly as visual_words.word_candidates makes it inside search_verified (every column, the global
    # candidates excluded, the query vector for the distances).
    word_full_sql = sa.text(
        "SELECT * FROM imgsearch_word_candidates(CAST(:words AS integer[]), :n, :extractor, CAST(:categories AS "
        "text[]), :in_stock_only, CAST(:max_price AS numeric), CAST(:exclude AS text[]), :vocabulary, "
        "CAST(:query AS vector))"
    )
    released_sql = sa.text(
        "SELECT rank, sku FROM pg_temp.word_candidates_0009(CAST(:words AS integer[]), :n, :extractor, "
        "in_stock_only => true, vocabulary => :vocabulary)"
    )
    position = {s: i for i, s in enumerate(skus)}
    ranks: dict[str, dict[str, list[Any]]] = {}
    timings: dict[str, list[float]] = {
        "global_sql": [],
        "global_sql_wide": [],
        "assign": [],
        "word_rank_sql": [],
        "word_rank_sql_capped": [],
        "word_rank_sql_0009": [],
        "word_search_sql": [],
    }
    mismatches = checked = 0
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        _install_released_word_search(conn)
        for n, q in enumerate([*qs[:warmup], *qs]):
            record = n >= warmup
            params = {
                "query": binary_vector(conn, q["vector"]),
                "k": GLOBAL_K,
                "extractor": EXTRACTOR,
                "categories": None,
                "in_stock_only": True,
                "max_price": None,
                "exclude": None,
            }
            t0 = time.perf_counter()
            rows = conn.execute(global_sql, params).all()
            t1 = time.perf_counter()
            # The same call with a wider graph search (imgsearch.ef_search): does the walk reach the product?
            conn.execute(sa.text("SELECT set_config('imgsearch.ef_search', :ef, false)"), {"ef": str(WIDE_EF)})
            tw = time.perf_counter()
            wide = conn.execute(global_sql, params).all()
            timings_wide = (time.perf_counter() - tw) * 1000
            conn.execute(sa.text("SELECT set_config('imgsearch.ef_search', '', false)"))
            wide_skus = {r.sku for r in wide}
            t1w = time.perf_counter()
            words = visual_words.query_words(vocabulary, q["features"])
            t2 = time.perf_counter()
            found = conn.execute(
                word_rank_sql, {"words": words, "n": WORD_READ, "extractor": EXTRACTOR, "vocabulary": vocabulary.id}
            ).all()
            t3 = time.perf_counter()
            # The search as revision 0009 released it (every posting read, products looked up for every photo
            # scored), installed for this session only: the anchor, in the same run.
            t3r = time.perf_counter()
            conn.execute(
                released_sql, {"words": words, "n": WORD_READ, "extractor": EXTRACTOR, "vocabulary": vocabulary.id}
            ).all()
            released_ms = (time.perf_counter() - t3r) * 1000
            # The same with the postings read capped (imgsearch.word_postings): the rarest words only.
            conn.execute(sa.text("SELECT set_config('imgsearch.word_postings', :cap, false)"), {"cap": str(cap)})
            t3a = time.perf_counter()
            found_capped = conn.execute(
                word_rank_sql, {"words": words, "n": WORD_READ, "extractor": EXTRACTOR, "vocabulary": vocabulary.id}
            ).all()
            t3b = time.perf_counter()
            conn.execute(sa.text("SELECT set_config('imgsearch.word_postings', '', false)"))
            capped_skus = [r.sku for r in sorted(found_capped, key=lambda r: r.rank)]
            global_skus = list(dict.fromkeys(r.sku for r in sorted(rows, key=lambda r: r.rank)))
            word_skus = [r.sku for r in sorted(found, key=lambda r: r.rank)]
            in_global = set(global_skus)
            added = [s for s in word_skus if s not in in_global][:WORD_K]
            if not record:
                continue
            timings["global_sql"].append((t1 - t0) * 1000)
            timings["global_sql_wide"].append(timings_wide)
            timings["assign"].append((t2 - t1w) * 1000)
            timings["word_rank_sql"].append((t3 - t2) * 1000)
            timings["word_rank_sql_capped"].append((t3b - t3a) * 1000)
            timings["word_rank_sql_0009"].append(released_ms)
            if full_every and (n - warmup) % full_every == 0:
                text_vector = "[" + ",".join(f"{float(v):.8g}" for v in q["vector"]) + "]"
                t4 = time.perf_counter()
                full = conn.execute(
                    word_full_sql,
                    {
                        "words": words,
                        "n": WORD_K,
                        "extractor": EXTRACTOR,
                        "categories": None,
                        "in_stock_only": True,
                        "max_price": None,
                        "exclude": sorted(set(global_skus)),
                        "vocabulary": vocabulary.id,
                        "query": text_vector,
                    },
                ).all()
                timings["word_search_sql"].append((time.perf_counter() - t4) * 1000)
                checked += 1
                mismatches += {r.sku for r in full} != set(added)
            # Exact (brute-force) global rank of the right product, one photo per product.
            sims = matrix @ q["vector"]
            exact_rank = int((sims > sims[position[q["sku"]]]).sum()) + 1
            sku = q["sku"]
            entry = (
                sku in global_skus,
                sku in word_skus[:WORD_K],
                sku in global_skus or sku in added,
                exact_rank <= GLOBAL_K,
                sku in global_skus or sku in word_skus[:WORD_K],
                sku in wide_skus,
                sku in wide_skus or sku in word_skus[:WORD_K],
                sku in capped_skus[:WORD_K],
                sku in global_skus or sku in capped_skus[:WORD_K],
            )
            for key in ("all", q["kind"]):
                ranks.setdefault(q["set"], {}).setdefault(key, []).append(entry)
    recall = {
        name: {
            kind: {
                "queries": len(e),
                "global_top50": round(float(np.mean([x[0] for x in e])), 3),
                "word_top25": round(float(np.mean([x[1] for x in e])), 3),
                "union_as_searched": round(float(np.mean([x[2] for x in e])), 3),
                "global_top50_exact": round(float(np.mean([x[3] for x in e])), 3),
                "union_plain": round(float(np.mean([x[4] for x in e])), 3),
                "global_top50_wide": round(float(np.mean([x[5] for x in e])), 3),
                "union_wide": round(float(np.mean([x[6] for x in e])), 3),
                "word_top25_capped": round(float(np.mean([x[7] for x in e])), 3),
                "union_capped": round(float(np.mean([x[8] for x in e])), 3),
            }
            for kind, e in kinds.items()
        }
        for name, kinds in ranks.items()
    }
    return {
        "recall": recall,
        "timings_ms": {k: percentiles(v) for k, v in timings.items() if v},
        "timed_calls": {k: len(v) for k, v in timings.items()},
        "word_search_calls_checked": checked,
        "word_search_calls_differing_from_derived": mismatches,
    }


def _install_released_word_search(conn: Any) -> None:
    """imgsearch_word_candidates as revision 0009 released it, as pg_temp.word_candidates_0009 (this session's)."""
    from imgsearch import sql

    text = sql.load("0009", "imgsearch_word_candidates")
    text = text.replace("FUNCTION imgsearch_word_candidates(", "FUNCTION pg_temp.word_candidates_0009(", 1)
    text = text.replace("imgsearch_word_candidates.extractor", "word_candidates_0009.extractor")
    sql.execute(conn, text)


def _build_vocabulary(engine: Any) -> dict[str, Any]:
    from imgsearch import visual_words

    built = visual_words.build(engine)
    assert built is not None
    return dict(built.__dict__)


def run(args: argparse.Namespace) -> None:
    import sqlalchemy as sa

    from imgsearch import db, schema, sql, visual_words

    wall = time.monotonic()
    result: dict[str, Any] = {
        "machine": machine(),
        "commit": git_commit(),
        "lscpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if line.startswith("Model name")
            ),
            "unknown",
        ),
        "uptime_at_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "load_at_start": load_average(),
        "args": vars(args),
        "sizes": {},
    }
    log("pooling the cached feature maps")
    vectors = real_vectors()
    covers_q = _rows(DATA / "covers" / "queries.csv")
    groceries_c = _rows(DATA / "groceries" / "catalogue.csv")
    myntra_c = _rows(DATA / "synthetic-fashion" / "catalogue.csv")
    probe = [covers_q[0]["image"], covers_q[-1]["image"], groceries_c[0]["image"], myntra_c[0]["image"]]
    probe.append(myntra_c[-1]["image"])
    if args.check_vectors:
        result["vector_check_cosines"] = check_vectors(vectors, probe[: args.check_vectors])
        log(f"pooled vs Featurizer().embed_image cosines: {result['vector_check_cosines']}")
    qs = queries(args.groceries_sample, args.seed, vectors)
    log(f"{len(qs)} queries")
    _, myntra_features = cached_features("myntra-catalogue")
    myntra_vectors = np.stack([vectors[r["image"]] for r in myntra_c])
    maker = Distractors(
        myntra_vectors,
        myntra_features,
        [r["category"] for r in myntra_c],
        args.seed,
        args.vector_noise,
        args.descriptor_noise,
    )
    home = Path(args.home or tempfile.mkdtemp(prefix="imgsearch-candidates-"))
    try:
        engine = db.create_engine(start_server(home, SERVER_CONFIG))
        schema.upgrade(engine)
        t0 = time.monotonic()
        real, matrix, skus = load_real(engine, vectors)
        load_s = round(time.monotonic() - t0, 1)
        log(f"{real} real products loaded in {load_s} s; learning the vocabulary")
        built = _build_vocabulary(engine)
        vacuum_s = _vacuum(engine)
        log(f"vocabulary {built}; measuring at {real} products")
        m = measure(engine, qs, matrix, skus, args.full_every, args.warmup, args.word_postings_cap)
        result["sizes"][str(real)] = {
            "products": real,
            "load_s": load_s,
            "vocabulary": built,
            "vacuum_analyze_s": vacuum_s,
            "table_bytes": _sizes(engine),
            "words_per_photo": _words_per_photo(engine),
            **m,
        }
        log(json.dumps(m["recall"]))
        _write(args, result, wall)  # the small size's numbers are kept should the large one fail
        extra = args.products - real
        if extra > 0:
            with engine.begin() as conn:
                # A new catalogue's bulk load: no words written per batch (the vocabulary is learnt afterwards
                # from the loaded catalogue) and the HNSW index built once at the end.
                conn.execute(sa.text("DELETE FROM visual_vocabularies"))
                conn.execute(sa.text("DROP INDEX ix_product_images_embedding"))
            t0 = time.monotonic()
            dv, dskus, made = load_distractors(engine, maker, extra)
            load_s = round(time.monotonic() - t0, 1)
            log(f"{extra:,} distractors loaded in {load_s} s; building the HNSW index")
            t0 = time.monotonic()
            with engine.begin() as conn:
                conn.exec_driver_sql(sql.command("create_photo_index"))
            index_s = round(time.monotonic() - t0, 1)
            log(f"HNSW index in {index_s} s; learning the vocabulary")
            built = _build_vocabulary(engine)
            vacuum_s = _vacuum(engine)
            matrix = np.concatenate([matrix, dv])
            skus = skus + dskus
            log(f"vocabulary {built}; measuring at {len(skus):,} products")
            m = measure(engine, qs, matrix, skus, args.full_every, args.warmup, args.word_postings_cap)
            # Realism of the distractor vectors: cosine to the nearest real Myntra vector (itself excluded for
            # the real ones).
            sample = np.random.default_rng(args.seed).choice(len(dv), min(2000, len(dv)), replace=False)
            real_sims = myntra_vectors @ myntra_vectors.T
            np.fill_diagonal(real_sims, -1)
            result["sizes"][str(len(skus))] = {
                "products": len(skus),
                "distractors": extra,
                "load_s": load_s,
                "distractor_making": made,
                "hnsw_index_s": index_s,
                "vocabulary": built,
                "vacuum_analyze_s": vacuum_s,
                "table_bytes": _sizes(engine),
                "words_per_photo": _words_per_photo(engine),
                "nearest_myntra_cosine": {
                    "real_myntra_p50": round(float(np.median(real_sims.max(axis=1))), 3),
                    "distractor_p50": round(float(np.median((dv[sample] @ myntra_vectors.T).max(axis=1))), 3),
                    "distractor_nearest_distractor_p50": round(
                        float(
                            np.median(
                                np.sort(dv[sample[:500]] @ dv.T, axis=1)[:, -2]  # the largest is itself
                            )
                        ),
                        3,
                    ),
                },
                **m,
            }
            log(json.dumps(m["recall"]))
        result["vocabulary_settings"] = {"coarse": visual_words.COARSE, "fine": visual_words.FINE}
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
    write_results(args.name or f"candidates-{args.products // 1000}k", result, markdown(result))


def markdown(result: dict[str, Any]) -> str:
    a = result["args"]
    lines = [
        f"# Candidate recall of the verified photo search at {a['products']:,} products",
        "",
        f"`python -m benchmarks.candidates_scale --products {a['products']}` at commit {result['commit']} "
        f"(uncommitted work), {result['lscpu_model']}, {result['machine']['cores']} cores shared with other work; "
        f"`uptime` at start: `{result['uptime_at_start']}`; load at end {result['load_at_end']}; wall time "
        f"{result['wall_s']} s.",
        "",
        "Candidates = what `search_verified` hands to RANSAC: the global top 50 "
        "(`imgsearch_verification_candidates`, HNSW, in-stock only) plus the 25 products sharing the most visual "
        "words that the global top 50 does not hold (`imgsearch_word_candidates`). Recall = share of shopper "
        "photos whose product is among them. `union` is that set; `word top 25` is the word ranking alone; "
        "`global exact` is the brute-force cosine top 50 (what the HNSW call should return); `ef 400` is the "
        f"same HNSW call with `imgsearch.ef_search = {WIDE_EF}` (default 100), and `union ef 400` its union with "
        "the word top 25. The word ranking reads every posting of the photo's words (the default); `capped` "
        f"columns are the same call with `imgsearch.word_postings = {a['word_postings_cap']}` (the rarest words "
        "only, within that many postings), in the same run.",
        "",
    ]
    headers = [
        "products",
        "set",
        "kind",
        "queries",
        "global top 50",
        "global exact",
        "ef 400",
        "word top 25",
        "union",
        "union ef 400",
        "word top 25, capped",
        "union, capped",
    ]
    rows = []
    for size in result["sizes"].values():
        for name, kinds in size["recall"].items():
            for kind, r in kinds.items():
                rows.append(
                    [
                        f"{size['products']:,}",
                        name,
                        kind,
                        r["queries"],
                        r["global_top50"],
                        r["global_top50_exact"],
                        r.get("global_top50_wide", ""),
                        r["word_top25"],
                        r["union_as_searched"],
                        r.get("union_wide", ""),
                        r.get("word_top25_capped", ""),
                        r.get("union_capped", ""),
                    ]
                )
    lines += [md_table(headers, rows), ""]
    if a["products"] < 100_000:
        lines += [
            f"Scaled down: {a['products']:,} products instead of 100,000, to finish within the time given on a "
            "2-core machine shared with other heavy work (load averages above). Indexing the words of the "
            "catalogue (`visual_words.build`) is what limits it: its rate is in the storage table below.",
            "",
        ]
    lines += [
        "## Distractors",
        "",
        f"{a['products']:,} products = covers 100 + groceries 81 + Myntra 2,524 (real photos, real vectors and "
        "SIFT features) + synthetic distractors, one photo each, made only from the Myntra photos (never from a "
        "covers or groceries photo). Each distractor takes 2 or 3 random Myntra photos of one category (category "
        "drawn in proportion to its photos) with Dirichlet(1) weights w. Vector: sum of w times their vectors "
        f"plus N(0, {a['vector_noise']}) per dimension, clipped at 0, L2-normalised. Local features: as many "
        "keypoints as the first photo has, drawn without replacement from each photo in proportion to w "
        "(coordinates scaled into the first photo's frame), each descriptor plus N(0, "
        f"{a['descriptor_noise']}) on the uint8 scale, rounded and clipped to 0..255 (with this noise about 60% "
        "of a descriptor's words stay the same, measured on 50 Myntra photos against a 65k vocabulary). The "
        "vocabulary is learnt again on the large catalogue, as `visual_words.maintain` does after 4x growth.",
        "",
    ]
    for size in result["sizes"].values():
        if "nearest_myntra_cosine" in size:
            c, w = size["nearest_myntra_cosine"], size["words_per_photo"]
            lines += [
                f"Realism checks at {size['products']:,}: median cosine of a real Myntra vector to its nearest other "
                f"Myntra vector {c['real_myntra_p50']}, of a distractor to its nearest Myntra vector "
                f"{c['distractor_p50']}, of a distractor to its nearest other distractor "
                f"{c['distractor_nearest_distractor_p50']}; distinct words a photo: "
                + ", ".join(f"{k} {v}" for k, v in sorted(w.items()))
                + ".",
                "",
            ]
    lines += [
        "Limits: the distractors are fashion photos (plain backgrounds, little print) recombined, so they bring "
        "few of the words a printed package or DVD cover has; a real large grocery or media catalogue, full of "
        "printed text and logos, would share many more words with a shopper's photo of a package, so the word "
        "recall here is optimistic for such catalogues. Their vectors are mixes of real ones, denser than real "
        "products (see the nearest-neighbour cosines above): one tight fashion cloud around a small island of 181 "
        "covers and groceries. They do enter the covers' and groceries' exact top 50 (global exact falls), and "
        "the HNSW walk from that cloud misses the island far more often than the exact ranking would: how much "
        "of that collapse a real, more varied catalogue would show is not measured here.",
        "",
    ]
    trows = []
    names = {
        "global_sql": "imgsearch_verification_candidates (top 50, all columns)",
        "global_sql_wide": f"imgsearch_verification_candidates, imgsearch.ef_search = {WIDE_EF}",
        "assign": "query word assignment (Python)",
        "word_rank_sql_0009": "imgsearch_word_candidates as revision 0009 released it (top 75, rank and sku)",
        "word_rank_sql_capped": f"imgsearch_word_candidates (top 75, rank and sku), within {a['word_postings_cap']} "
        "postings",
        "word_rank_sql": f"imgsearch_word_candidates (top {WORD_READ}, rank and sku)",
        "word_search_sql": "imgsearch_word_candidates as the search calls it (top 25, all columns, global excluded)",
    }
    for size in result["sizes"].values():
        for key, t in size["timings_ms"].items():
            trows.append(
                [f"{size['products']:,}", names[key], size["timed_calls"][key], t["p50_ms"], t["p95_ms"], t["mean_ms"]]
            )
    lines += ["## Timings", "", md_table(["products", "step", "calls", "p50 ms", "p95 ms", "mean ms"], trows), ""]
    srows = []
    for size in result["sizes"].values():
        b = size["table_bytes"]
        srows.append(
            [
                f"{size['products']:,}",
                f"{b['photo_features'] / 2**20:,.0f}",
                f"{sum(b.get(t, 0) for t in WORD_TABLES) / 2**20:,.0f}",
                f"{b['ix_product_images_embedding'] / 2**20:,.0f}",
                f"{b['product_images'] / 2**20:,.0f}",
                size["load_s"],
                size.get("hnsw_index_s", "(kept up on insert)"),
                f"{size['vocabulary']['learn_s']} + {size['vocabulary']['index_s']}",
                size["vacuum_analyze_s"],
            ]
        )
    lines += [
        "## Storage and load",
        "",
        md_table(
            [
                "products",
                "photo_features MiB",
                "word tables MiB",
                "HNSW index MiB",
                "product_images MiB (index incl.)",
                "upsert s",
                "HNSW build s",
                "vocabulary learn + index s",
                "VACUUM ANALYZE s",
            ],
            srows,
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000, help="catalogue size with the distractors")
    parser.add_argument("--groceries-sample", type=int, default=800, help="grocery shopper photos (seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vector-noise", type=float, default=0.005, help="distractor vector noise per dimension")
    parser.add_argument("--descriptor-noise", type=float, default=6.0, help="distractor SIFT noise (uint8 scale)")
    parser.add_argument("--full-every", type=int, default=2, help="time the search-shaped word call every n queries")
    parser.add_argument("--warmup", type=int, default=20, help="queries run first, not recorded")
    parser.add_argument("--check-vectors", type=int, default=5, help="photos embedded by the library to compare")
    parser.add_argument("--home", help="server home (default: a temporary folder, removed)")
    parser.add_argument(
        "--word-postings-cap", type=int, default=100_000, help="imgsearch.word_postings of the capped variant"
    )
    parser.add_argument("--name", default=None, help="results file name (default candidates-<N/1000>k)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
