"""A real catalogue moved to the R-MAC pipeline by ``imgsearch reembed``, with the real VGG16 network, while it serves.

Why: benchmarks/reembed_switch.py measures the database side of a move at scale with synthetic vectors; this is the
whole move as a shop would run it, on real photos. The 2,524 Myntra catalogue photos are ingested through
``Catalogue.ingest`` (the default pipeline, local features and all) into a throwaway embedded server, then
``Catalogue.reembed("rmac")`` moves the catalogue while a thread asks ``Catalogue.similar`` for random products
without pause (searches by SKU use the stored vectors: they need no network, so they show what the catalogue's
visitors see while the network is busy). Recorded: ingestion's and the re-embedding's photos/s (same run, same
network and precision), how long the switch held searches and writers, the searches' p50/p99 and the share whose
first result has the product's category, per phase, and the catalogue-to-catalogue quality (macro and micro
precision@5 of ``similar``, each product asking for its 5 look-alikes, relevant when of the same type) before and
after the move.

    python -m benchmarks.reembed_pipeline --myntra ../shared/datasets/myntra-fashion-products \\
        --weights ../shared/models/vgg16_imagenet_notop.h5

Writes ``benchmarks/results/reembed-pipeline.{md,json}``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    PhasedSearches,
    git_commit,
    load_average,
    log,
    machine,
    md_table,
    write_results,
)
from imgsearch import Catalogue, Settings, embedded_server, schema
from imgsearch.sources import CatalogueEntry


def _entries(root: Path) -> list[CatalogueEntry]:
    with (root / "labels.csv").open(newline="") as fh:
        return [
            CatalogueEntry(sku=f"m{row['id']}", category=row["class"], images=(str((root / row["path"]).resolve()),))
            for row in csv.DictReader(fh)
        ]


def _precision_at_5(shop: Catalogue, entries: list[CatalogueEntry]) -> dict[str, float]:
    category = {e.sku: e.category for e in entries}
    per_label: dict[str, list[float]] = defaultdict(list)
    for e in entries:
        found = shop.similar(e.sku, k=5, in_stock_only=False)
        per_label[e.category].append(sum(category[r.sku] == e.category for r in found) / 5)
    every = [p for ps in per_label.values() for p in ps]
    return {
        "micro": round(float(np.mean(every)), 4),
        "macro": round(float(np.mean([np.mean(ps) for ps in per_label.values()])), 4),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="imgsearch-reembed-pipeline-"))
    entries = _entries(Path(args.myntra))[: args.limit]
    result: dict[str, Any] = {
        "commit": git_commit(),
        "machine": machine(),
        "load_at_start": load_average(),
        "photos": len(entries),
    }
    wall = time.monotonic()
    settings = Settings(home=home, weights=args.weights, scan_index_min_photos=0)
    try:
        with Catalogue(settings=settings) as shop, Catalogue(settings=settings) as visitors:
            schema.upgrade(shop.engine("admin", schema=False))
            t0 = time.monotonic()
            report = shop.ingest(entries)
            result["ingest_s"] = round(time.monotonic() - t0, 1)
            result["ingest_photos_per_s"] = round(report.embedded / result["ingest_s"], 2)
            result["precision"] = shop.featurizer.precision
            result["runtime"] = shop.featurizer.runtime
            log(f"ingested {report.embedded} photos in {result['ingest_s']} s")
            result["p_at_5_before"] = _precision_at_5(shop, entries)
            log(f"P@5 before: {result['p_at_5_before']}")

            category = {e.sku: e.category for e in entries}

            def search(rng: np.random.Generator) -> bool:  # 10 ms apart: a busy shop's share of two cores
                e = entries[int(rng.integers(0, len(entries)))]
                found = visitors.similar(e.sku, k=10, in_stock_only=False)
                return bool(found) and category[found[0].sku] == e.category

            searches = PhasedSearches(search, seed=3, pause=0.01)
            searches.start()
            time.sleep(5)
            searches.phase = "during the move"
            t0 = time.monotonic()
            moved = shop.reembed("rmac")
            result["reembed_s"] = round(time.monotonic() - t0, 1)
            result["reembed_photos_per_s"] = round(moved.embedded / result["reembed_s"], 2)
            result["switched"] = moved.switched
            result["failures"] = len(moved.failures)
            result["searches_held_ms"] = round((moved.held_seconds or 0) * 1000, 1)
            result["writers_held_ms"] = round((moved.writers_held_seconds or 0) * 1000, 1)
            searches.phase = "after"
            time.sleep(5)
            searches.finish()
            log(f"re-embedded {moved.embedded} photos in {result['reembed_s']} s, switched {moved.switched}")
            result["p_at_5_after"] = _precision_at_5(shop, entries)
            log(f"P@5 after: {result['p_at_5_after']}")
            result["space_after"] = shop.featurizer.space.model_name
            result["errors"] = searches.errors[:20]
            result["phases"] = searches.by_phase(("before", "during the move", "after"), "same_type_first")
    finally:
        embedded_server.stop(home, immediate=True)
        shutil.rmtree(home, ignore_errors=True)
    result["load_at_end"] = load_average()
    result["wall_s"] = round(time.monotonic() - wall, 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    before, after = result["p_at_5_before"], result["p_at_5_after"]
    rows = [
        [phase, p["searches"], p["p50_ms"], p["p99_ms"], p["same_type_first"]] for phase, p in result["phases"].items()
    ]
    return "\n".join(
        [
            "# A real catalogue moved to the R-MAC pipeline while it serves",
            "",
            f"`python -m benchmarks.reembed_pipeline` at commit {result['commit']}, {result['machine'].get('cpu')}, "
            f"VGG16 {result['runtime']} {result['precision']}, load at start {result['load_at_start']}, at end "
            f"{result['load_at_end']}; wall time {result['wall_s']} s.",
            "",
            f"{result['photos']:,} Myntra catalogue photos ingested with the default pipeline in "
            f"{result['ingest_s']} s "
            f"({result['ingest_photos_per_s']} photos/s, local features included), then moved to `rmac` by "
            f"`Catalogue.reembed` in {result['reembed_s']} s ({result['reembed_photos_per_s']} photos/s: every photo "
            f"read and embedded again, the indexes built again, the switch); switched: {result['switched']}, "
            f"{result['failures']} photos failed; the switch held searches {result['searches_held_ms']} ms and "
            f"writers {result['writers_held_ms']} ms. Failed searches: {len(result['errors'])}.",
            "",
            "Catalogue-to-catalogue quality, `similar(sku, k=5)` for every product, relevant when of its type:",
            "",
            md_table(
                ["vectors", "P@5 macro", "P@5 micro"],
                [["default pipeline", before["macro"], before["micro"]], ["rmac", after["macro"], after["micro"]]],
            ),
            "",
            "A second handle asked `similar` for random products all along (10 ms apart); `same type first`: the "
            "share whose first result has the product's type:",
            "",
            md_table(["phase", "searches", "p50 ms", "p99 ms", "same type first"], rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--myntra", required=True, help="The Myntra folder (labels.csv and the photos).")
    parser.add_argument("--weights", required=True, help="The VGG16 weights (.h5).")
    parser.add_argument("--limit", type=int, help="Only the first N photos (a quick try).")
    args = parser.parse_args()
    result = run(args)
    paths = write_results(
        "reembed-pipeline" if args.limit is None else "reembed-pipeline-sample", result, markdown(result)
    )
    log(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
