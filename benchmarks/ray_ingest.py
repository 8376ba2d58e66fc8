"""Ingestion with the network on Ray against the local path, in one run on one machine: Ray's overhead here.

Both ingest the same photos (``imgsearch.ingest.ingest``, what ``imgsearch ingest`` runs) into their own fresh
schema on a throwaway embedded server; the Ray path with a local Ray instance and ``--concurrency`` model actors.
Results in ``benchmarks/results/ray-ingest.{json,md}``.

    .venv/bin/python -m benchmarks.ray_ingest --images ../shared/datasets/myntra-fashion-products --limit 200
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="<category>/<image> folder")
    parser.add_argument("--limit", type=int, default=200, help="photos (evenly spaced)")
    parser.add_argument("--concurrency", type=int, default=1, help="model actors on Ray")
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-ray"))
    parser.add_argument("--max-wait", type=float, default=300)
    args = parser.parse_args(argv)

    from imgsearch import db, ingest, schema
    from imgsearch.distributed import RayEmbedder
    from imgsearch.embedding import Featurizer

    entries = [e for e in ingest.scan_folder(args.images) if isinstance(e, ingest.CatalogueEntry)]
    step = max(1, len(entries) // args.limit)
    entries = entries[::step][: args.limit]
    url = start_server(args.home)
    featurizer = Featurizer(weights=args.weights)
    featurizer.warm_up()
    quiet = wait_for_quiet(max_wait=args.max_wait)
    result: dict[str, Any] = {
        "benchmark": "ray-ingest",
        "commit": git_commit(),
        "machine": machine(),
        "photos": len(entries),
        "precision": featurizer.precision,
        "quiet": quiet,
        "runs": {},
    }
    started = time.perf_counter()
    embedder = RayEmbedder(featurizer, concurrency=args.concurrency)
    result["ray_start_s"] = round(time.perf_counter() - started, 1)
    for name, chosen in (("local", None), ("ray", embedder)):
        engine = db.create_engine(url, schema=f"bench_{name}")
        schema.upgrade(engine)
        started = time.perf_counter()
        report = ingest.ingest(engine, entries, featurizer, embedder=chosen)
        seconds = time.perf_counter() - started
        result["runs"][name] = {
            "seconds": round(seconds, 1),
            "images_per_s": round(report.embedded / seconds, 2),
            "embedded": report.embedded,
            "failed": report.failed,
        }
        log(f"{name}: {result['runs'][name]}")
        schema.downgrade(engine, "base")
        engine.dispose()
    result["load_after"] = load_average()
    stop_server(args.home)
    runs = result["runs"]
    rows = [[n, r["embedded"], r["seconds"], r["images_per_s"]] for n, r in runs.items()]
    markdown = "\n".join(
        [
            "# Ingestion with the network on Ray against the local path",
            "",
            f"Commit {result['commit']}, {result['machine'].get('cpu')}, {result['machine'].get('cores')} cores, "
            f"{featurizer.precision}; load {quiet.get('load_at_start')} before, {result['load_after']} after. "
            f"{len(entries)} photos of {args.images.name}; Ray: a local instance, {args.concurrency} model actor(s), "
            f"started in {result['ray_start_s']} s (not counted below).",
            "",
            md_table(["path", "photos embedded", "seconds", "images/s"], rows),
            "",
            f"Ray / local: {runs['ray']['images_per_s'] / runs['local']['images_per_s']:.2f}",
        ]
    )
    write_results("ray-ingest", result, markdown)
    log(markdown)


if __name__ == "__main__":
    main()
