"""Shared helpers for the benchmark scripts: machine description, quiet-machine wait, embedding cache,
a throwaway embedded server, and writing results (JSON + Markdown) into ``benchmarks/results/``."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
EXAMPLES = REPO / "examples" / "catalogue"
DEFAULT_CACHE = Path("~/.cache/imgsearch-bench").expanduser()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}

# Extra settings for the benchmark's own server, appended to the imgsearch.conf the embedded server writes.
BENCH_SERVER_CONFIG = """
# benchmark server: room for a 1M-vector HNSW graph in memory while it is built, and a hot cache
shared_buffers = '6GB'
maintenance_work_mem = '8GB'
effective_cache_size = '16GB'
max_parallel_maintenance_workers = 1
max_wal_size = '8GB'
checkpoint_timeout = '30min'
synchronous_commit = off
"""


def log(message: str) -> None:
    """Progress line on stderr with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def wait_for_quiet(threshold: float = 0.7, poll: float = 30.0, max_wait: float = 900.0) -> dict[str, Any]:
    """Wait until the 1-minute load average is below ``threshold`` (at most ``max_wait`` seconds).

    Returns what happened, for the result file: the load when the run started and whether it was quiet.
    """
    started = time.monotonic()
    while True:
        load = load_average()
        if load[0] < threshold:
            return {"quiet": True, "waited_s": round(time.monotonic() - started), "load_at_start": load}
        if time.monotonic() - started >= max_wait:
            log(f"machine not quiet after {max_wait:.0f} s (load {load}); running anyway")
            return {"quiet": False, "waited_s": round(time.monotonic() - started), "load_at_start": load}
        log(f"load {load}: waiting for < {threshold}")
        time.sleep(poll)


def machine() -> dict[str, Any]:
    """CPU, cores, memory and software versions of this machine."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        info["cpu_features"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def git_commit() -> str:
    """The checked-out commit (the benchmark code that produced a result)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def image_folder(root: Path) -> tuple[list[Path], list[str]]:
    """Images of a ``<class>/<image>`` folder tree, sorted, with their class (the folder name)."""
    paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise SystemExit(f"no images under {root}")
    labels = [p.parent.name for p in paths]
    return paths, labels


def labels_from_csv(root: Path, paths: Sequence[Path]) -> list[str] | None:
    """Classes from ``labels.csv`` (columns ``path``, ``class``) when the folder has one."""
    labels_file = Path(root) / "labels.csv"
    if not labels_file.exists():
        return None
    with labels_file.open(newline="") as fh:
        by_path = {row["path"]: row["class"] for row in csv.DictReader(fh)}
    rel = [str(p.relative_to(root)) for p in paths]
    if not all(r in by_path for r in rel):
        return None
    return [by_path[r] for r in rel]


def subset(paths: list[Path], limit: int | None) -> list[Path]:
    """At most ``limit`` of ``paths``, evenly spaced (so every class keeps its share); all when ``limit`` is None."""
    if limit is None or limit >= len(paths):
        return paths
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]


def _cache_file(root: Path, paths: list[Path], precision: str, weights: str, cache_dir: Path) -> Path:
    from imgsearch.images import PREPROCESSING_VERSION

    rel = [str(p.relative_to(root)) for p in paths]
    sizes = [p.stat().st_size for p in paths]
    fingerprint = repr((str(root), rel, sizes, precision, weights, PREPROCESSING_VERSION))
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    return cache_dir / f"{root.name}-{precision}-{key}.npz"


def cached_embeddings(
    root: Path, precision: str, cache_dir: Path, weights: str, batch_size: int = 32, limit: int | None = None
) -> tuple[np.ndarray, list[str], list[str]]:
    """Embeddings of the images under ``root`` (``limit``: an evenly spaced subset) with the project's
    featurizer, cached in ``cache_dir``.

    Returns ``(vectors, relative paths, classes)``. The cache key is the folder, its file list and sizes, the
    precision, the weights and the featurizer's preprocessing version, so a change to any of them is embedded
    again. A subset is taken from the whole folder's cache when that exists. The cache lives outside the
    repository.
    """
    root = Path(root).resolve()
    all_paths, _ = image_folder(root)
    paths = subset(all_paths, limit)
    labels = labels_from_csv(root, paths) or [p.parent.name for p in paths]
    rel = [str(p.relative_to(root)) for p in paths]
    cache_dir.mkdir(parents=True, exist_ok=True)
    for candidate in (
        _cache_file(root, paths, precision, weights, cache_dir),
        _cache_file(root, all_paths, precision, weights, cache_dir),
    ):
        if candidate.exists():
            data = np.load(candidate, allow_pickle=False)
            position = {r: i for i, r in enumerate(data["paths"])}
            keep = [r for r in rel if r in position]
            idx = [position[r] for r in keep]
            return data["vectors"][idx], keep, [str(data["labels"][i]) for i in idx]
    cache = _cache_file(root, paths, precision, weights, cache_dir)
    from imgsearch.embedding import Featurizer

    log(f"embedding {len(paths)} images of {root} ({precision}); cached in {cache}")
    featurizer = Featurizer(weights=weights, batch_size=batch_size, precision=precision)
    vectors = np.zeros((len(paths), 512), np.float32)
    ok = np.zeros(len(paths), bool)
    for i, result in enumerate(featurizer.embed_files(paths)):
        if result.vector is not None:
            vectors[i] = result.vector
            ok[i] = True
    vectors, rel, labels = (
        vectors[ok],
        [r for r, o in zip(rel, ok, strict=True) if o],
        [lab for lab, o in zip(labels, ok, strict=True) if o],
    )
    np.savez(cache, vectors=vectors, paths=np.array(rel), labels=np.array(labels))
    return vectors, rel, labels


#: How a naive query orders the photos so that the HNSW index serves it: the index's own expression (revision
#: 0008 indexes half-precision vectors), with the query vector as its parameter.
NAIVE_ORDER = "i.embedding::halfvec(512) <=> %s::halfvec(512)"


def stored_query_vectors(engine: Any, categories: list[str] | None, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` stored photo vectors (of ``categories``, as a shopper browsing them would send; all when None)
    plus a little noise, so that the queries are not in the catalogue."""
    import sqlalchemy as sa
    from pgvector.sqlalchemy import Vector

    where = "WHERE category = ANY(:c)" if categories else ""
    statement = sa.text(f"SELECT embedding FROM product_images {where} ORDER BY random() LIMIT :n").columns(
        embedding=Vector(512)
    )
    with engine.connect() as conn:
        stored = conn.execute(statement, {"c": categories, "n": count}).scalars()
        base = np.stack([np.asarray(v, dtype=np.float32) for v in stored])
    return base + rng.normal(scale=0.02, size=base.shape).astype(np.float32)


def build_photo_index(conn: Any) -> None:
    """Build the catalogue-wide photo index after a bulk load (the head revision's definition)."""
    from imgsearch import sql

    conn.execute(sql.command("create_photo_index"))


def start_server(home: Path, extra_config: str = BENCH_SERVER_CONFIG) -> str:
    """Start an embedded server in a throwaway ``home`` with the benchmark settings; return its URL."""
    from imgsearch import embedded_server

    home = Path(home)
    conf = embedded_server.data_dir(home) / "imgsearch.conf"
    if not conf.exists():
        # First start writes the default imgsearch.conf; add the benchmark settings and restart.
        embedded_server.start(home)
        embedded_server.stop(home)
        with conf.open("a") as fh:
            fh.write(extra_config)
    return embedded_server.start(home)


def stop_server(home: Path) -> None:
    """Stop the benchmark's embedded server."""
    from imgsearch import embedded_server

    embedded_server.stop(Path(home))


def write_results(name: str, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``benchmarks/results/<name>.json`` and ``<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and mean of latencies in milliseconds."""
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def copy_catalogue(
    conn: Any,
    skus: Sequence[str],
    categories: Sequence[str],
    prices: Sequence[float],
    in_stock: Sequence[bool],
    vectors: np.ndarray,
    colours: np.ndarray | None = None,
    chunk: int = 50_000,
) -> None:
    """Load products with one photo each into imgsearch's tables by binary COPY (a psycopg connection whose
    search_path is imgsearch's schema, as ``imgsearch.db.psycopg_connect`` gives). Fast, and no index is
    touched when the caller dropped them first; the tables must be empty."""
    from decimal import Decimal

    from pgvector.psycopg import register_vector

    register_vector(conn)
    with conn.cursor() as cur:
        with cur.copy("COPY products (sku, name, category, price, in_stock) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "text", "numeric", "bool"])
            for i, sku in enumerate(skus):
                copy.write_row((sku, f"product {i}", categories[i], Decimal(f"{prices[i]:.2f}"), bool(in_stock[i])))
        ids = dict(cur.execute("SELECT sku, id FROM products").fetchall())
        for start in range(0, len(skus), chunk):
            columns = "product_id, image, category, embedding, colour"
            with cur.copy(f"COPY product_images ({columns}) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "text", "vector", "vector"])
                for i in range(start, min(len(skus), start + chunk)):
                    colour = None if colours is None else colours[i]
                    copy.write_row((ids[skus[i]], f"img/{i}.jpg", categories[i], vectors[i], colour))


class PhasedSearches(threading.Thread):
    """Searches without pause in a thread while the main thread changes something under them (a re-embedding, say).

    ``search(rng)`` runs one search and says whether it found what it should; each sample is recorded under the
    phase the main thread last set (``phase``), with its latency; a search that raises is recorded as an error.
    """

    def __init__(self, search: Callable[[np.random.Generator], bool], *, seed: int, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.search, self.seed, self.pause = search, seed, pause
        self.phase = "before"
        self.samples: list[tuple[str, float, bool]] = []
        self.errors: list[str] = []
        self._finished = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(self.seed)
        while not self._finished.is_set():
            phase = self.phase
            t0 = time.perf_counter()
            try:
                ok = self.search(rng)
            except Exception as exc:  # recorded: a search that fails during the change is a finding
                self.errors.append(f"{phase}: {exc}")
                continue
            self.samples.append((phase, (time.perf_counter() - t0) * 1000, ok))
            if self.pause:
                time.sleep(self.pause)

    def finish(self) -> None:
        """Stop searching and wait for the last search."""
        self._finished.set()
        self.join()

    def by_phase(self, phases: Sequence[str], ok_name: str, unmeasured: Sequence[str] = ()) -> dict[str, Any]:
        """Per phase: the searches, their latencies (p50/p95/p99/mean/max) and the share that found what they
        should, under ``ok_name`` (None for the phases in ``unmeasured``)."""
        summary: dict[str, Any] = {}
        for phase in phases:
            taken = [(ms, ok) for p, ms, ok in self.samples if p == phase]
            if taken:
                ms = [m for m, _ in taken]
                share = round(sum(ok for _, ok in taken) / len(taken), 3)
                summary[phase] = {
                    "searches": len(taken),
                    **percentiles(ms),
                    "max_ms": round(max(ms), 1),
                    ok_name: None if phase in unmeasured else share,
                }
        return summary
