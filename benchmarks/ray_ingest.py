"""Ingestion with the network on Ray against the local path, in one run on one machine: Ray's overhead here, and
what more model actors on the same cores give.

Every run ingests the same photos (``imgsearch.ingest.ingest``, what ``imgsearch ingest`` runs) into its own
fresh schema on a throwaway embedded server: the local path, then the Ray path on one local Ray instance with
each of ``--actors`` model actors. Rates per actor (images/s divided by actors) say whether actors scale on
these cores. The load average is recorded before every run and after the last (the CPU may be shared).
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
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="model actors of each Ray run")
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--commit-every", type=int, default=256, help="products per commit (and per Ray dataset)")
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
        "actors": args.actors,
        "commit_every": args.commit_every,
        "runs": {},
    }
    runs: list[tuple[str, int, RayEmbedder | None]] = [("local", 1, None)]
    for actors in args.actors:
        started = time.perf_counter()
        embedder = RayEmbedder(featurizer, concurrency=actors)
        result.setdefault("ray_start_s", round(time.perf_counter() - started, 1))  # the first one starts Ray
        runs.append((f"ray, {actors} actor{'s' if actors > 1 else ''}", actors, embedder))
    for name, actors, chosen in runs:
        engine = db.create_engine(url, schema=f"bench_{len(result['runs'])}")
        schema.upgrade(engine)
        load_before = load_average()
        started = time.perf_counter()
        report = ingest.ingest(engine, entries, featurizer, commit_every=args.commit_every, embedder=chosen)
        seconds = time.perf_counter() - started
        rate = report.embedded / seconds
        result["runs"][name] = {
            "actors": actors if chosen is not None else None,
            "seconds": round(seconds, 1),
            "images_per_s": round(rate, 2),
            # The local path is one process using every core; a Ray run's rate shared among its actors.
            "images_per_s_per_actor": round(rate / actors, 2),
            "embedded": report.embedded,
            "failed": report.failed,
            "load_before": load_before,
        }
        log(f"{name}: {result['runs'][name]}")
        schema.downgrade(engine, "base")
        engine.dispose()
    result["load_after"] = load_average()
    stop_server(args.home)
    done = result["runs"]
    rows = [
        [
            n,
            r["actors"] or "-",
            r["embedded"],
            r["seconds"],
            r["images_per_s"],
            r["images_per_s_per_actor"],
            r["load_before"],
        ]
        for n, r in done.items()
    ]
    local = done["local"]["images_per_s"]
    ratios = [f"{n} / local: {r['images_per_s'] / local:.2f}" for n, r in done.items() if n != "local"]
    markdown = "\n".join(
        [
            "# Ingestion with the network on Ray against the local path",
            "",
            f"Commit {result['commit']}, {result['machine'].get('cpu')}, {result['machine'].get('cores')} cores, "
            f"{featurizer.precision}; load {quiet.get('load_at_start')} at the start, {result['load_after']} after "
            f"the last run. {len(entries)} photos of {args.images.name}, committed {args.commit_every} at a time; "
            f"Ray: a local instance started in {result['ray_start_s']} s (not counted below); its actors load VGG16 "
            "for every commit batch, within the runs (counted).",
            "",
            md_table(
                ["path", "model actors", "photos embedded", "seconds", "images/s", "images/s per actor", "load before"],
                rows,
            ),
            "",
            "; ".join(ratios),
        ]
    )
    write_results("ray-ingest", result, markdown)
    log(markdown)


if __name__ == "__main__":
    main()
