"""Load test of ``imgsearch serve`` set up as it faces the internet: every request with an API key, a rate limit
per key, CORS on, the access log on; 200 concurrent clients for 60 s mixing searches by photo, by vector and by
SKU, plus a group of clients that share one key and overrun its budget on purpose.

Reports per kind of request the answers by status, p50/p95/p99 of the answered ones, transport failures, and the
service's memory (resident set of the server and its workers) after a warm-up and at the end. The target: no
error but the deliberate 429s, memory flat (end <= 1.2x warm). Results in
``benchmarks/results/service-internet.{json,md}``.

    .venv/bin/python -m benchmarks.service_internet
    .venv/bin/python -m benchmarks.service_internet --n 100000 --duration 60
"""

from __future__ import annotations

import argparse
import os
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
from benchmarks.service_load import _free_port, load_catalogue

ORIGIN = "https://shop.example"


def _rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants (the service and its workers), in KiB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, StopIteration):
            continue
    return total


class Group:
    """Clients of one kind: each loops on its request until the deadline, counting what it gets."""

    def __init__(self, name: str, clients: int, make_request: Any, keys: list[str]) -> None:
        self.name, self.clients, self.make_request, self.keys = name, clients, make_request, keys
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.failures: dict[str, int] = {}
        self.lock = threading.Lock()

    def run(self, base: str, until: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        key = self.keys[seed % len(self.keys)]
        headers = {"Authorization": f"Bearer {key}", "Origin": ORIGIN}
        with httpx.Client(base_url=base, timeout=120, headers=headers) as http:
            while time.monotonic() < until:
                started = time.perf_counter()
                try:
                    response = self.make_request(http, rng)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failures[type(exc).__name__] = self.failures.get(type(exc).__name__, 0) + 1
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                with self.lock:
                    self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                    if response.status_code == 200:
                        self.latencies.append(elapsed)
                if response.status_code == 429:  # a well-behaved client waits as told
                    time.sleep(min(float(response.headers.get("retry-after", "1")), 2.0))

    def summary(self, seconds: float) -> dict[str, Any]:
        answered = self.statuses.get(200, 0)
        return {
            "clients": self.clients,
            "requests": sum(self.statuses.values()),
            "answered_per_s": round(answered / seconds, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "transport_failures": self.failures,
            **(percentiles(self.latencies) if self.latencies else {}),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--photo-clients", type=int, default=20, help="clients searching by photo")
    parser.add_argument("--vector-clients", type=int, default=100, help="clients searching by vector")
    parser.add_argument("--sku-clients", type=int, default=60, help="clients asking for a product's neighbours")
    parser.add_argument("--greedy-clients", type=int, default=20, help="clients sharing one key, over its budget")
    parser.add_argument("--rate-limit", type=int, default=60, help="requests a minute per key and worker")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="service worker processes")
    parser.add_argument("--precision", default="auto", help="the service's model precision")
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-internet"), help="throwaway server")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--max-wait", type=float, default=900)
    parser.add_argument("--name", default="service-internet", help="result file name")
    args = parser.parse_args(argv)

    from imgsearch import Catalogue

    url = start_server(args.home)
    log(f"loading {args.n} products")
    queries = load_catalogue(url, args.n, args.weights, args.precision, args.cache_dir)
    photos = [p.read_bytes() for p in sorted(EXAMPLES.glob("*/*.jpg"))]
    with Catalogue(url) as shop:
        skus = [r.sku for r in shop.search(queries[0], k=500, in_stock_only=False)]
        own = [shop.create_key(f"client-{i}", "search")[1] for i in range(args.photo_clients + args.vector_clients)]
        own_sku = [shop.create_key(f"sku-client-{i}", "search")[1] for i in range(args.sku_clients)]
        shared = [shop.create_key("greedy", "search")[1]]
    port = _free_port()
    log_path = args.home / "access.log"
    env = {**os.environ, "IMGSEARCH_HOME": str(args.home), "IMGSEARCH_PRECISION": args.precision}
    command = [sys.executable, "-m", "imgsearch", "--weights", args.weights, "serve", "--port", str(port)]
    command += ["--workers", str(args.workers), "--rate-limit", str(args.rate_limit), "--cors-origin", ORIGIN]
    with log_path.open("wb") as access_log:  # the access log on, to a file, as a deployment keeps it
        service = subprocess.Popen(command, env=env, stderr=access_log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start: {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        quiet = (
            {"quiet": None, "load_at_start": load_average()} if args.no_wait else wait_for_quiet(max_wait=args.max_wait)
        )

        def by_vector(http: httpx.Client, rng: np.random.Generator) -> httpx.Response:
            vector = queries[rng.integers(len(queries))]
            return http.post("/v1/search", json={"vector": [float(x) for x in vector], "k": 10})

        def by_photo(http: httpx.Client, rng: np.random.Generator) -> httpx.Response:
            data = photos[rng.integers(len(photos))]
            return http.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "10"})

        def by_sku(http: httpx.Client, rng: np.random.Generator) -> httpx.Response:
            return http.get(f"/v1/products/{skus[rng.integers(len(skus))]}/similar", params={"k": 10})

        groups = [
            Group("photo searches", args.photo_clients, by_photo, own[: args.photo_clients]),
            Group("vector searches", args.vector_clients, by_vector, own[args.photo_clients :]),
            Group("similar by SKU", args.sku_clients, by_sku, own_sku),
            Group("similar by SKU, one shared key over its budget", args.greedy_clients, by_sku, shared),
        ]
        warm = Group("warm-up", args.workers * 2, by_photo, own)
        warm_until = time.monotonic() + 10
        warm_threads = [threading.Thread(target=warm.run, args=(base, warm_until, s)) for s in range(warm.clients)]
        for t in warm_threads:
            t.start()
        for t in warm_threads:
            t.join()
        log(f"{sum(g.clients for g in groups)} clients for {args.duration:.0f} s")
        started = time.monotonic()
        until = started + args.duration
        threads = [
            threading.Thread(target=g.run, args=(base, until, seed)) for g in groups for seed in range(g.clients)
        ]
        for t in threads:
            t.start()
        memory: list[tuple[float, int]] = []
        while time.monotonic() < until:
            memory.append((round(time.monotonic() - started, 1), _rss_kib(service.pid)))
            time.sleep(2.0)
        for t in threads:
            t.join()
        memory.append((round(time.monotonic() - started, 1), _rss_kib(service.pid)))
    finally:
        service.terminate()
        service.wait(timeout=60)
        stop_server(args.home)

    # Memory "after warm-up": once the load has run 10 s (every worker's pools and caches filled).
    warm_kib = next(kib for at, kib in memory if at >= 10.0)
    end_kib = memory[-1][1]
    summaries = {g.name: g.summary(args.duration) for g in groups}
    unexpected = {
        name: sum(v for code, v in s["statuses"].items() if code not in ("200", "429"))
        + sum(s["transport_failures"].values())
        for name, s in summaries.items()
    }
    access_lines = sum(1 for _ in log_path.open("rb"))
    result = {
        "benchmark": "service-internet",
        "commit": git_commit(),
        "machine": machine(),
        "command": "python -m benchmarks.service_internet " + " ".join(argv or sys.argv[1:]),
        "quiet": quiet,
        "load_after": load_average(),
        "products": args.n,
        "workers": args.workers,
        "precision": args.precision,
        "rate_limit_per_minute": args.rate_limit,
        "duration_s": args.duration,
        "groups": summaries,
        "errors_other_than_429": unexpected,
        "memory_kib": memory,
        "rss_warm_mib": round(warm_kib / 1024, 1),
        "rss_end_mib": round(end_kib / 1024, 1),
        "rss_end_over_warm": round(end_kib / warm_kib, 3),
        "access_log_lines": access_lines,
    }
    rows = [
        [
            name,
            s["clients"],
            s["requests"],
            s["answered_per_s"],
            f"{s.get('p50_ms', 0):.0f}",
            f"{s.get('p95_ms', 0):.0f}",
            f"{s.get('p99_ms', 0):.0f}",
            s["statuses"].get("429", 0),
            unexpected[name],
        ]
        for name, s in summaries.items()
    ]
    headers = ["clients of", "clients", "requests", "answered/s", "p50 ms", "p95 ms", "p99 ms", "429", "other errors"]
    markdown = "\n".join(
        [
            "# imgsearch serve facing the internet: keys, rate limits, CORS, access log, 200 clients",
            "",
            f"{args.n:,} products, {args.workers} worker(s), model in {args.precision}, every request with its own "
            f"client's key (`--rate-limit {args.rate_limit}` a minute per key and worker, `--cors-origin`, the "
            f"access log written to a file), {sum(g.clients for g in groups)} clients on loopback for "
            f"{args.duration:.0f} s after a 10 s warm-up. Commit {result['commit']}, {result['machine'].get('cpu')}, "
            f"{result['machine'].get('cores')} cores, load {quiet.get('load_at_start')} before, "
            f"{result['load_after']} after. A client told 429 waits its `Retry-After` (at most 2 s).",
            "",
            md_table(headers, rows),
            "",
            f"Memory of the service (server and workers, resident): {result['rss_warm_mib']} MiB after 10 s of load, "
            f"{result['rss_end_mib']} MiB at the end ({result['rss_end_over_warm']}x; target <= 1.2x). "
            f"Access log: {access_lines:,} lines.",
            "",
            f"Command: `{result['command']}`",
        ]
    )
    write_results(args.name, result, markdown)
    log(markdown)


if __name__ == "__main__":
    main()
