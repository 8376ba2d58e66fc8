"""Load test of ``imgsearch serve``: concurrent clients on loopback for a fixed time, searches by photo (the
network runs for each) and by vector (the database only), with latency percentiles and errors counted.

The service runs as a user would run it (``imgsearch serve`` in its own process, one worker per core by
default) against a throwaway embedded PostgreSQL holding a synthetic catalogue made from real embeddings (like
the search benchmark's) and the sample photos' embedding space. Photo queries are the sample photos; vector
queries are synthesized like the catalogue. Results in ``benchmarks/results/service-load.{json,md}``.

    .venv/bin/python -m benchmarks.service_load
    .venv/bin/python -m benchmarks.service_load --n 100000 --duration 60 --clients 8
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
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
    percentiles,
    start_server,
    stop_server,
    wait_for_quiet,
    write_results,
)
from benchmarks.search import build_catalogue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_catalogue(url: str, n: int, weights: str, precision: str, cache: Path) -> np.ndarray:
    """A synthetic catalogue of ``n`` products in the embedded server, recorded in the sample photos' embedding
    space; returns vectors to query with (made like the catalogue's, not in it)."""
    from imgsearch import catalogue, db, schema
    from imgsearch.embedding import Featurizer

    real, _, labels = cached_embeddings(EXAMPLES, precision, cache, weights)
    cat, _ = build_catalogue(real, labels, n + 500, seed=31)
    engine = db.create_engine(url)
    schema.upgrade(engine)
    catalogue.clear(engine)
    catalogue.ensure_space(engine, Featurizer(weights=weights, precision=precision).space)
    engine.dispose()
    with db.psycopg_connect(url, autocommit=True) as conn:
        conn.execute("DROP INDEX IF EXISTS ix_product_images_embedding")
        skus = [cat.sku(i) for i in range(n)]
        copy_catalogue(conn, skus, [cat.classes[c] for c in cat.category[:n]], cat.price, cat.in_stock, cat.vectors)
        build_photo_index(conn)
        conn.execute("VACUUM ANALYZE products")
        conn.execute("VACUUM ANALYZE product_images")
    return cat.vectors[n:]


def run_clients(base: str, clients: int, seconds: float, make_request: Any) -> dict[str, Any]:
    """``clients`` threads, each with its own connection, sending requests for ``seconds``."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures: dict[str, int] = {}
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=base, timeout=120) as http:
            while time.monotonic() < until:
                started = time.perf_counter()
                try:
                    response = make_request(http, rng)
                    elapsed = (time.perf_counter() - started) * 1000
                    with lock:
                        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                        if response.status_code == 200:
                            latencies.append(elapsed)
                except httpx.HTTPError as exc:
                    with lock:
                        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = sum(statuses.values())
    errors = done - statuses.get(200, 0) + sum(failures.values())
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": done,
        "per_s": round(statuses.get(200, 0) / seconds, 1),
        "errors": errors,
        "statuses": statuses,
        "transport_failures": failures,
        **(percentiles(latencies) if latencies else {}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="catalogue size")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the vector phase")
    parser.add_argument("--photo-clients", type=int, default=4, help="concurrent clients of the photo phase")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="service worker processes")
    parser.add_argument("--precision", default="auto", help="the service's model precision")
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-service"), help="throwaway server")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--max-wait", type=float, default=900)
    parser.add_argument("--name", default="service-load", help="result file name")
    args = parser.parse_args(argv)

    url = start_server(args.home)
    log(f"loading {args.n} products")
    queries = load_catalogue(url, args.n, args.weights, args.precision, args.cache_dir)
    photos = [p.read_bytes() for p in sorted(EXAMPLES.glob("*/*.jpg"))]
    port = _free_port()
    # The access log off: a line per request into a pipe nobody reads would stop the service.
    env = {**os.environ, "IMGSEARCH_HOME": str(args.home), "IMGSEARCH_PRECISION": args.precision}
    env["IMGSEARCH_ACCESS_LOG"] = "0"
    command = [sys.executable, "-m", "imgsearch", "--weights", args.weights, "serve", "--port", str(port)]
    service = subprocess.Popen([*command, "--workers", str(args.workers)], env=env, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).json().get("status") == "ok":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the service did not start: {service.stderr.read().decode() if service.stderr else ''}"
                )
            time.sleep(0.5)
        quiet = (
            {"quiet": None, "load_at_start": load_average()} if args.no_wait else wait_for_quiet(max_wait=args.max_wait)
        )

        def by_vector(http: httpx.Client, rng: np.random.Generator) -> httpx.Response:
            vector = queries[rng.integers(len(queries))]
            return http.post("/search", json={"vector": [float(x) for x in vector], "k": 10})

        def by_photo(http: httpx.Client, rng: np.random.Generator) -> httpx.Response:
            data = photos[rng.integers(len(photos))]
            return http.post("/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "10"})

        # Warm-up: every worker's model and connections.
        run_clients(base, args.workers * 2, 5, by_photo)
        log(f"vector searches: {args.clients} clients for {args.duration:.0f} s")
        vectors = run_clients(base, args.clients, args.duration, by_vector)
        log(f"photo searches: {args.photo_clients} clients for {args.duration:.0f} s")
        photos_result = run_clients(base, args.photo_clients, args.duration, by_photo)
        log("mixed: both at once")
        mixed_vectors: dict[str, Any] = {}
        background = threading.Thread(
            target=lambda: mixed_vectors.update(run_clients(base, args.clients, args.duration, by_vector))
        )
        background.start()
        mixed_photos = run_clients(base, args.photo_clients, args.duration, by_photo)
        background.join()
        metrics = httpx.get(f"{base}/metrics").text
    finally:
        service.terminate()
        service.wait(timeout=60)
        stop_server(args.home)

    result = {
        "benchmark": "service-load",
        "commit": git_commit(),
        "machine": machine(),
        "command": "python -m benchmarks.service_load " + " ".join(argv or sys.argv[1:]),
        "quiet": quiet,
        "load_after": load_average(),
        "products": args.n,
        "workers": args.workers,
        "precision": args.precision,
        "vector_searches": vectors,
        "photo_searches": photos_result,
        "mixed": {"vector_searches": mixed_vectors, "photo_searches": mixed_photos},
        "metrics_lines": len(metrics.splitlines()),
    }

    def row(name: str, r: dict[str, Any]) -> list[Any]:
        return [
            name,
            r["clients"],
            r["requests"],
            r["per_s"],
            f"{r.get('p50_ms', 0):.1f}",
            f"{r.get('p99_ms', 0):.1f}",
            r["errors"],
        ]

    rows = [
        row("vector searches (JSON)", vectors),
        row("photo searches (multipart)", photos_result),
        row("mixed: vector searches", mixed_vectors),
        row("mixed: photo searches", mixed_photos),
    ]
    markdown = "\n".join(
        [
            "# Load test of imgsearch serve",
            "",
            f"{args.n:,} products, {args.workers} worker(s), model in {args.precision}, {args.duration:.0f} s per "
            f"phase, clients on loopback. Commit {result['commit']}, {result['machine'].get('cpu')}, "
            f"{result['machine'].get('cores')} cores, load {quiet.get('load_at_start')} before, "
            f"{result['load_after']} after.",
            "",
            md_table(["phase", "clients", "requests", "per second", "p50 ms", "p99 ms", "errors"], rows),
            "",
            f"Command: `{result['command']}`",
        ]
    )
    write_results(args.name, result, markdown)
    log(markdown)


if __name__ == "__main__":
    main()
