"""Filtered k-NN search benchmark: imgsearch against the notebooks' method, NumPy and naive pgvector.

A catalogue of N product vectors that look like real VGG16 features is synthesized from real embeddings
(each synthetic vector mixes two or three real vectors of one class and adds a little noise; class = category,
category sizes from about 30% down to 0.1% of N, 80% in stock). Query vectors come from the same process and
are not in the catalogue. For each filter class the script measures recall@10 against an exact NumPy
ranking, how often exactly k rows came back, single-client latency and throughput with 1, 2, 4 and 8
concurrent clients, all through ``imgsearch.query.search`` (so through the SQL function), and the same queries
through scikit-learn's ``NearestNeighbors(metric="cosine")`` (the notebooks), NumPy in process and a naive
pgvector query. Results go to ``benchmarks/results/search-<N>.json`` and ``.md``.

Run from the repository root::

    .venv/bin/python -m benchmarks.search                       # 100k products, the repo's sample photos
    .venv/bin/python -m benchmarks.search --images ../shared/datasets/myntra-fashion-products
    .venv/bin/python -m benchmarks.search --full --images ../shared/datasets/myntra-fashion-products  # 1M
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
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

K = 10
IN_STOCK_SHARE = 0.8
CONCURRENCY = (1, 2, 4, 8)


# ---------------------------------------------------------------------------------------------------------------
# The synthetic catalogue


def category_shares(n_classes: int) -> np.ndarray:
    """Category shares summing to 1: the largest about 30%, the others log-spaced from about 9% down to 0.09%."""
    if n_classes < 4:
        raise SystemExit("need at least 4 image classes to build the filter classes")
    rest = np.geomspace(0.10, 0.001, n_classes - 1)
    shares = np.concatenate([[0.30], rest])
    return shares / shares.sum()


def synthesize(
    real: np.ndarray, labels: np.ndarray, classes: list[str], counts: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``counts[c]`` unit vectors per class: convex mixes of 2-3 same-class real vectors plus small noise.

    Returns (vectors, class index per vector), shuffled.
    """
    total = int(counts.sum())
    out = np.empty((total, real.shape[1]), np.float32)
    cls = np.empty(total, np.int16)
    members = {c: np.flatnonzero(labels == name) for c, name in enumerate(classes)}
    pos = 0
    chunk = 50_000
    for c, n in enumerate(counts):
        idx = members[c]
        for start in range(0, int(n), chunk):
            m = min(chunk, int(n) - start)
            parts = rng.integers(2, 4, size=m)  # 2 or 3 real vectors per synthetic one
            picks = idx[rng.integers(0, len(idx), size=(m, 3))]
            weights = rng.dirichlet(np.ones(3), size=m).astype(np.float32)
            weights[parts == 2, 2] = 0.0
            weights /= weights.sum(axis=1, keepdims=True)
            v = np.einsum("mj,mjd->md", weights, real[picks])
            v += rng.normal(scale=NOISE / np.sqrt(real.shape[1]), size=v.shape).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            out[pos : pos + m] = v
            cls[pos : pos + m] = c
            pos += m
    order = rng.permutation(total)
    return out[order], cls[order]


# Noise norm relative to a unit vector: about the distance between two photos of one product.
NOISE = 0.15


@dataclass
class Catalogue:
    """The synthetic catalogue in NumPy, for loading, ground truth and the in-process baselines."""

    vectors: np.ndarray
    category: np.ndarray  # class index per product
    in_stock: np.ndarray
    price: np.ndarray
    classes: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.vectors)

    def sku(self, i: int) -> str:
        return f"P{i:07d}"


def build_catalogue(real: np.ndarray, labels: list[str], n: int, seed: int) -> tuple[Catalogue, np.ndarray]:
    """The catalogue and the share of each class (largest real class gets the largest share)."""
    names, sizes = np.unique(np.array(labels), return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    classes = [str(names[i]) for i in order]
    shares = category_shares(len(classes))
    counts = np.maximum(1, np.round(shares * n).astype(np.int64))
    counts[0] += n - counts.sum()
    rng = np.random.default_rng(seed)
    vectors, cls = synthesize(real, np.array(labels), classes, counts, rng)
    in_stock = rng.random(n) < IN_STOCK_SHARE
    price = np.round(rng.uniform(5, 200, n), 2)
    return Catalogue(vectors, cls, in_stock, price, classes), counts


@dataclass(frozen=True)
class FilterClass:
    """One filter of the benchmark: its name, the search arguments and the rows it matches."""

    name: str
    category: str | None
    in_stock_only: bool
    matches: int

    def kwargs(self) -> dict[str, Any]:
        return {"categories": [self.category] if self.category else None, "in_stock_only": self.in_stock_only}

    def where(self) -> tuple[str, list[Any]]:
        parts, params = ["true"], []
        if self.category:
            parts.append("p.category = %s")
            params.append(self.category)
        if self.in_stock_only:
            parts.append("p.in_stock")
        return " AND ".join(parts), params


def filter_classes(cat: Catalogue, counts: np.ndarray) -> list[tuple[FilterClass, np.ndarray, int | None]]:
    """none, in-stock, and a ~10%, ~1% and ~0.1% category with in-stock: (filter, row mask, query class)."""
    shares = counts / counts.sum()
    out: list[tuple[FilterClass, np.ndarray, int | None]] = []
    out.append((FilterClass("none", None, False, cat.n), np.ones(cat.n, bool), None))
    out.append((FilterClass("in stock", None, True, int(cat.in_stock.sum())), cat.in_stock, None))
    taken: set[int] = set()
    for label, target in (("~10% category", 0.10), ("~1% category", 0.01), ("~0.1% category", 0.001)):
        c = int(min((i for i in range(len(shares)) if i not in taken), key=lambda i: abs(np.log(shares[i] / target))))
        taken.add(c)
        mask = (cat.category == c) & cat.in_stock
        name = f"{label} ({shares[c]:.2%}) + in stock"
        out.append((FilterClass(name, cat.classes[c], True, int(mask.sum())), mask, c))
    return out


def query_vectors(
    real: np.ndarray, labels: list[str], cat: Catalogue, counts: np.ndarray, qclass: int | None, q: int, seed: int
) -> np.ndarray:
    """``q`` query vectors made like the catalogue's: of class ``qclass``, or classes drawn like the catalogue."""
    rng = np.random.default_rng(seed)
    if qclass is None:
        per_class = rng.multinomial(q, counts / counts.sum())
    else:
        per_class = np.zeros(len(counts), np.int64)
        per_class[qclass] = q
    vectors, _ = synthesize(real, np.array(labels), cat.classes, per_class, rng)
    return vectors


def exact_topk(units: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Exact cosine top-k row indices (best first) of ``queries`` among the ``mask`` rows of unit ``units``."""
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(units))
    best = np.empty((len(queries), k), np.int64)
    sub = units[rows] if mask is not None else units
    for start in range(0, len(queries), 64):
        qs = queries[start : start + 64]
        sims = qs @ sub.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(-sims, part, axis=1).argsort(axis=1, kind="stable")
        best[start : start + 64] = rows[np.take_along_axis(part, order, axis=1)]
    return best


# ---------------------------------------------------------------------------------------------------------------
# The database


def config_key(args: argparse.Namespace, source: str) -> str:
    """Identifies a loaded catalogue, so that a rerun with the same settings can reuse it (``--reuse``)."""
    return hashlib.sha256(repr((args.n, args.seed, NOISE, source)).encode()).hexdigest()[:16]


def load_database(url: str, cat: Catalogue, key: str, reuse: bool) -> dict[str, Any]:
    """Migrate, COPY the catalogue in, build the HNSW index after loading, VACUUM ANALYZE; report times/sizes."""
    from pgvector.psycopg import register_vector

    from imgsearch import db, schema

    engine = db.create_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    with db.psycopg_connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key text)")
        row = conn.execute("SELECT key FROM bench_meta").fetchone()
        if reuse and row and row[0] == key:
            log("reusing the loaded catalogue; installing the search function of the current migration")
            install_current_function(conn)
            stored = conn.execute("SELECT value FROM bench_load").fetchone() if _has(conn, "bench_load") else None
            if stored:
                return dict(stored[0], reused=True)
        conn.execute("DELETE FROM bench_meta")
        conn.execute("DROP INDEX IF EXISTS ix_product_images_embedding")
        conn.execute("TRUNCATE products, product_images, tuned_images, photo_features CASCADE")
        started = time.perf_counter()
        copy_catalogue(
            conn,
            [cat.sku(i) for i in range(cat.n)],
            [cat.classes[c] for c in cat.category],
            cat.price,
            cat.in_stock,
            cat.vectors,
        )
        load_s = time.perf_counter() - started
        log(f"COPY of {cat.n} rows: {load_s:.1f} s; building the HNSW index")
        started = time.perf_counter()
        build_photo_index(conn)
        build_s = time.perf_counter() - started
        log(f"HNSW build: {build_s:.1f} s")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE products")
        conn.execute("VACUUM ANALYZE product_images")
        vacuum_s = time.perf_counter() - started
        sizes = conn.execute(
            "SELECT pg_relation_size('ix_product_images_embedding'), "
            "pg_table_size('products') + pg_table_size('product_images'), "
            "pg_total_relation_size('products') + pg_total_relation_size('product_images'), "
            "pg_relation_size('ix_products_category_price')"
        ).fetchone()
        assert sizes is not None
        result = {
            "rows": cat.n,
            "copy_s": round(load_s, 1),
            "copy_rows_per_s": round(cat.n / load_s),
            "hnsw_build_s": round(build_s, 1),
            "vacuum_analyze_s": round(vacuum_s, 1),
            "hnsw_index_mb": round(sizes[0] / 2**20, 1),
            "table_mb": round(sizes[1] / 2**20, 1),
            "total_with_indexes_mb": round(sizes[2] / 2**20, 1),
            "filter_btree_mb": round(sizes[3] / 2**20, 1),
            "hnsw": {"m": 16, "ef_construction": 64},
            "reused": False,
        }
        from psycopg.types.json import Jsonb

        conn.execute("DROP TABLE IF EXISTS bench_load")
        conn.execute("CREATE TABLE bench_load (value jsonb)")
        conn.execute("INSERT INTO bench_load VALUES (%s)", (Jsonb(result),))
        conn.execute("INSERT INTO bench_meta VALUES (%s)", (key,))
        return result


def install_current_function(conn: Any) -> None:
    """Replace the search functions with their packaged .sql files as they are now (for tuning runs)."""
    from imgsearch import sql

    for name in ("imgsearch_attribute_filter", "imgsearch_similar_multi", "imgsearch_similar"):
        conn.execute(sql.current(name))


def _has(conn: Any, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def prewarm(url: str) -> None:
    """Load the table and its indexes into shared buffers (pg_prewarm), so the first queries are not disk-bound."""
    import psycopg

    from imgsearch import db

    with db.psycopg_connect(url, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            for rel in ("products", "product_images", "ix_product_images_embedding", "ix_products_category_price"):
                conn.execute("SELECT pg_prewarm(%s)", (rel,))
        except psycopg.Error as exc:
            log(f"pg_prewarm unavailable ({exc}); relying on warm-up queries")


# ---------------------------------------------------------------------------------------------------------------
# Clients. Each worker process has its own connection; a task runs queries for a fixed time.

_WORKER: dict[str, Any] = {}


def _worker_init(url: str) -> None:
    from pgvector.psycopg import register_vector

    from imgsearch import db

    _WORKER["engine"] = db.create_engine(url, pool_size=1)
    conn = db.psycopg_connect(url, autocommit=True)
    register_vector(conn)
    _WORKER["conn"] = conn


def run_query(method: str, fc: FilterClass, vector: np.ndarray) -> list[str]:
    """One search by ``method`` (``imgsearch`` or ``naive``) in this process; returns the SKUs, best first."""
    if method == "imgsearch":
        from imgsearch import query

        return [r.sku for r in query.search(_WORKER["engine"], vector, K, **fc.kwargs())]
    where, params = fc.where()
    rows = _WORKER["conn"].execute(
        f"SELECT p.sku FROM product_images i JOIN products p ON p.id = i.product_id WHERE {where} "
        f"ORDER BY {NAIVE_ORDER} LIMIT {K}",
        [*params, vector],
    )
    return [r[0] for r in rows]


def _timed_task(method: str, fc: FilterClass, queries: np.ndarray, start_at: float, duration: float, offset: int):
    """Run queries from ``start_at`` for ``duration`` seconds; returns (queries done, client CPU seconds)."""
    for v in queries[:2]:
        run_query(method, fc, v)  # connection and plan caches warm
    while time.time() < start_at:
        time.sleep(0.001)
    cpu0 = time.process_time()
    done, i = 0, offset
    end = start_at + duration
    while time.time() < end:
        run_query(method, fc, queries[i % len(queries)])
        done += 1
        i += 1
    return done, time.process_time() - cpu0


def _latency_task(method: str, fc: FilterClass, queries: np.ndarray) -> tuple[list[list[str]], list[float]]:
    results, latencies = [], []
    for v in queries:
        t = time.perf_counter()
        results.append(run_query(method, fc, v))
        latencies.append((time.perf_counter() - t) * 1000)
    return results, latencies


class Clients:
    """A pool of client processes, each with its own database connection."""

    def __init__(self, url: str, size: int) -> None:
        ctx = mp.get_context("spawn")
        self.pool = ctx.Pool(size, initializer=_worker_init, initargs=(url,))
        self.size = size

    def latency(self, method: str, fc: FilterClass, queries: np.ndarray) -> tuple[list[list[str]], list[float]]:
        """Queries one after another in one client: results and latencies (ms)."""
        return self.pool.apply(_latency_task, (method, fc, queries))

    def throughput(self, method: str, fc: FilterClass, queries: np.ndarray, clients: int, duration: float):
        """Queries per second with ``clients`` concurrent clients, and the clients' CPU per query (ms)."""
        start_at = time.time() + 1.0 + 0.2 * clients
        tasks = [
            self.pool.apply_async(_timed_task, (method, fc, queries, start_at, duration, j * len(queries) // clients))
            for j in range(clients)
        ]
        out = [t.get() for t in tasks]
        done = sum(d for d, _ in out)
        cpu = sum(c for _, c in out)
        return done / duration, (cpu / done * 1000 if done else None)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def quality(results: list[list[str]], truth: np.ndarray, cat: Catalogue) -> dict[str, float]:
    """Mean recall@k and the fraction of queries that returned exactly k rows."""
    recalls, exact = [], []
    for got, want in zip(results, truth, strict=True):
        want_skus = {cat.sku(i) for i in want}
        recalls.append(len(set(got) & want_skus) / len(want_skus))
        exact.append(len(got) == K)
    return {"recall_at_10": round(float(np.mean(recalls)), 4), "exactly_k": round(float(np.mean(exact)), 4)}


def bench_sklearn(cat: Catalogue, units: np.ndarray, queries: np.ndarray, mask: np.ndarray, refit: bool):
    """The notebooks' method: NearestNeighbors(metric="cosine") over the whole store, k neighbours per query,
    then the filter (the notebooks had none). ``refit`` fits the model again for every query, as they did."""
    from sklearn.neighbors import NearestNeighbors

    model = NearestNeighbors(n_neighbors=K, metric="cosine").fit(cat.vectors)
    results, latencies = [], []
    for q in queries:
        t = time.perf_counter()
        if refit:
            model = NearestNeighbors(n_neighbors=K, metric="cosine").fit(cat.vectors)
        _, idx = model.kneighbors(q[np.newaxis], n_neighbors=K)
        kept = [i for i in idx[0] if mask[i]]
        latencies.append((time.perf_counter() - t) * 1000)
        results.append([cat.sku(i) for i in kept])
    return results, latencies


def bench_numpy(cat: Catalogue, units: np.ndarray, queries: np.ndarray, mask: np.ndarray):
    """Exact search in process with NumPy over the filtered rows (matrix prepared once per filter)."""
    rows = np.flatnonzero(mask)
    sub = np.ascontiguousarray(units[rows])
    results, latencies = [], []
    for q in queries:
        t = time.perf_counter()
        sims = sub @ q
        part = np.argpartition(-sims, K - 1)[:K]
        best = rows[part[np.argsort(-sims[part], kind="stable")]]
        latencies.append((time.perf_counter() - t) * 1000)
        results.append([cat.sku(i) for i in best])
    return results, latencies


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=EXAMPLES, help="<class>/<image> folder to derive vectors from")
    parser.add_argument(
        "--precision", default="float32", help="featurizer precision of the real embeddings (bfloat16 is faster)"
    )
    parser.add_argument("--n", type=int, default=100_000, help="catalogue size (default 100k)")
    parser.add_argument("--full", action="store_true", help="full scale: 1M products")
    parser.add_argument("--queries", type=int, default=200, help="queries per filter class")
    parser.add_argument("--baseline-queries", type=int, default=50, help="queries per class for scikit-learn")
    parser.add_argument("--numpy-queries", type=int, default=200, help="queries per class for NumPy")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per throughput measurement")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-search"), help="throwaway server")
    parser.add_argument("--reuse", action="store_true", help="reuse a catalogue loaded by a previous run")
    parser.add_argument("--keep-server", action="store_true", help="leave the benchmark server running")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="embedding cache (outside the repo)")
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--max-wait", type=float, default=900, help="longest wait for a quiet machine (s)")
    parser.add_argument("--name", help="result file name (default search-<N>)")
    args = parser.parse_args(argv)
    if args.full:
        args.n = 1_000_000

    real, _paths, labels = cached_embeddings(args.images, args.precision, args.cache_dir, args.weights)
    log(f"{len(real)} real embeddings, {len(set(labels))} classes from {args.images}")
    cat, counts = build_catalogue(real, labels, args.n, args.seed)
    units = cat.vectors  # already unit length
    fcs = filter_classes(cat, counts)
    queries = {
        fc.name: query_vectors(real, labels, cat, counts, qc, args.queries, args.seed + 100 + j)
        for j, (fc, _, qc) in enumerate(fcs)
    }
    log("ground truth (NumPy, exact)")
    truth = {fc.name: exact_topk(units, queries[fc.name], K, mask) for fc, mask, _ in fcs}

    url = start_server(args.home)
    key = config_key(args, f"{Path(args.images).resolve()}:{len(real)}:{args.precision}")
    load = load_database(url, cat, key, args.reuse)
    prewarm(url)

    quiet = {"quiet": None, "load_at_start": load_average()} if args.no_wait else wait_for_quiet(max_wait=args.max_wait)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    clients = Clients(url, max(CONCURRENCY))
    rows: list[dict[str, Any]] = []
    for fc, mask, _ in fcs:
        qs, gt = queries[fc.name], truth[fc.name]
        entry: dict[str, Any] = {"filter": fc.name, "category": fc.category, "matching_rows": fc.matches}
        for method in ("imgsearch", "naive"):
            clients.latency(method, fc, qs[: min(20, len(qs))])  # warm-up
            results, lat = clients.latency(method, fc, qs)
            m: dict[str, Any] = {**quality(results, gt, cat), **percentiles(lat)}
            m["throughput_qps"] = {}
            m["client_cpu_ms_per_query"] = {}
            for c in CONCURRENCY if method == "imgsearch" else (1, max(CONCURRENCY)):
                qps, cpu = clients.throughput(method, fc, qs, c, args.duration)
                m["throughput_qps"][str(c)] = round(qps, 1)
                m["client_cpu_ms_per_query"][str(c)] = None if cpu is None else round(cpu, 3)
            entry[method] = m
            log(f"{fc.name} {method}: {m}")
        nq = min(args.baseline_queries, len(qs))
        nn = min(args.numpy_queries, len(qs))
        results, lat = bench_numpy(cat, units, qs[:nn], mask)
        entry["numpy"] = {
            **quality(results, gt[:nn], cat),
            **percentiles(lat),
            "throughput_qps": round(1000 / np.mean(lat), 1),
            "queries": nn,
        }
        results, lat = bench_sklearn(cat, units, qs[:nq], mask, refit=False)
        entry["sklearn"] = {
            **quality(results, gt[:nq], cat),
            **percentiles(lat),
            "throughput_qps": round(1000 / np.mean(lat), 2),
            "queries": nq,
        }
        if fc.name == "none" and args.n <= 200_000:
            nr = min(nq, 20)
            results, lat = bench_sklearn(cat, units, qs[:nr], mask, refit=True)
            entry["sklearn_refit"] = {
                **quality(results, gt[:nr], cat),
                **percentiles(lat),
                "throughput_qps": round(1000 / np.mean(lat), 2),
                "queries": nr,
            }
        log(f"{fc.name}: numpy {entry['numpy']['p50_ms']} ms, sklearn {entry['sklearn']['p50_ms']} ms")
        rows.append(entry)
    clients.close()

    with __import__("imgsearch.db").db.psycopg_connect(url) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
                "('shared_buffers', 'maintenance_work_mem', 'work_mem', 'effective_cache_size', "
                "'max_parallel_maintenance_workers', 'server_version')"
            ).fetchall()
        )
        settings["pgvector"] = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[
            0
        ]

    result = {
        "benchmark": "search",
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(),
        "machine": machine(),
        "load_before": quiet,
        "load_after": load_average(),
        "server_settings": settings,
        "data": {
            "images": str(args.images),
            "real_vectors": len(real),
            "precision": args.precision,
            "classes": len(cat.classes),
            "n": cat.n,
            "seed": args.seed,
            "noise": NOISE,
            "in_stock_share": IN_STOCK_SHARE,
            "largest_category_share": round(float(counts.max() / counts.sum()), 4),
            "smallest_category_share": round(float(counts.min() / counts.sum()), 5),
            "queries_per_filter": args.queries,
            "throughput_seconds": args.duration,
        },
        "load": load,
        "filters": rows,
        "command": "python -m benchmarks.search " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    name = args.name or (f"search-{cat.n // 1000}k" if cat.n < 1_000_000 else f"search-{cat.n // 1_000_000}m")
    if not args.keep_server:
        stop_server(args.home)
    json_path, md_path = write_results(name, result, markdown(result))
    log(f"wrote {json_path} and {md_path}")


def markdown(r: dict[str, Any]) -> str:
    """The result as Markdown tables."""
    d, load, mach = r["data"], r["load"], r["machine"]
    lines = [
        f"# Search benchmark: {d['n']:,} products",
        "",
        f"{r['started']} on {mach['cpu']}, {mach['cores']} cores, {mach.get('memory_gib')} GiB; "
        f"PostgreSQL {r['server_settings'].get('server_version')}, pgvector {r['server_settings'].get('pgvector')}; "
        f"commit {r['commit']}. Load average before {r['load_before']['load_at_start']}, after {r['load_after']}.",
        f"Vectors derived from {d['real_vectors']} real embeddings of `{d['images']}` ({d['classes']} classes); "
        f"{d['queries_per_filter']} queries per filter, k = {K}. Command: `{r['command']}`.",
        "",
        "## imgsearch (query.search -> imgsearch_similar)",
        "",
    ]
    head = ["filter", "rows", "recall@10", "exactly k", "p50 ms", "p95 ms", "p99 ms"]
    head += [f"{c} client{'s' if c > 1 else ''} q/s" for c in CONCURRENCY]
    body = []
    for f in r["filters"]:
        m = f["imgsearch"]
        body.append(
            [f["filter"], f"{f['matching_rows']:,}", f"{m['recall_at_10']:.3f}", f"{m['exactly_k']:.2f}"]
            + [fmt(m[p], 2) for p in ("p50_ms", "p95_ms", "p99_ms")]
            + [fmt(m["throughput_qps"].get(str(c))) for c in CONCURRENCY]
        )
    lines += [md_table(head, body), "", "## The same queries by other methods", ""]
    head = ["filter", "method", "recall@10", "exactly k", "p50 ms", "p95 ms", "q/s (best)", "imgsearch speed-up"]
    body = []
    for f in r["filters"]:
        ours = max(f["imgsearch"]["throughput_qps"].values())
        for key, label in (
            ("sklearn", "notebooks: NearestNeighbors fitted once"),
            ("sklearn_refit", "notebooks: refit per query"),
            ("numpy", "NumPy exact, in process"),
            ("naive", "naive pgvector (ORDER BY <=> LIMIT k)"),
        ):
            if key not in f:
                continue
            m = f[key]
            qps = (
                m["throughput_qps"]
                if isinstance(m["throughput_qps"], float | int)
                else max(m["throughput_qps"].values())
            )
            body.append(
                [
                    f["filter"],
                    label,
                    f"{m['recall_at_10']:.3f}",
                    f"{m['exactly_k']:.2f}",
                    fmt(m["p50_ms"], 2),
                    fmt(m["p95_ms"], 2),
                    fmt(qps, 1),
                    f"{ours / qps:,.1f}x",
                ]
            )
    lines += [md_table(head, body), "", "## Catalogue", ""]
    lines += [
        md_table(
            ["rows", "COPY s", "HNSW build s", "HNSW index MB", "table MB", "total with indexes MB"],
            [
                [
                    f"{load['rows']:,}",
                    load["copy_s"],
                    load["hnsw_build_s"],
                    load["hnsw_index_mb"],
                    load["table_mb"],
                    load["total_with_indexes_mb"],
                ]
            ],
        )
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
