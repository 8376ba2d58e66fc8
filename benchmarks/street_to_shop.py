"""Shoppers' photos against the catalogue: quality on every evaluation set, and what verification costs.

Quality (``imgsearch eval --queries``'s code, :mod:`imgsearch.street_to_shop`): one catalogue holding every
set's products (each set's the others' distractors), searched with every query file; then the same with the
2,524 Myntra fashion photos added as distractors. Each report gives R@1/5/10 and MRR verified (the web page's
search) and by the global vector alone, from the same vectors in the same run.

Cost, in one run so that load hits all alike: a photo query warm, p50/p90, with and without verification
(interleaved per photo); ingestion photos/s with and without local features; bytes of local features per
photo, and what a million photos would take.

The evaluation sets are not in the repository (their photos are third-party data): ``--sets DIR`` holds one
folder per set with ``catalogue.csv`` (an imgsearch manifest) and ``queries.csv`` (``image,sku,kind``); see
docs/quality.md for where each set comes from and how it is built.

    python benchmarks/street_to_shop.py --sets /work/data/streetshop \\
        --myntra ../shared/datasets/myntra-fashion-products
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
from imgsearch import db, local_features, query, schema, street_to_shop
from imgsearch.config import Settings
from imgsearch.embedding import PIPELINES, Featurizer
from imgsearch.ingest import ingest

#: Sets whose catalogues make the shared catalogue, and the query files searched in it.
CATALOGUE_SETS = ("covers", "groceries")
QUERY_SETS = ("covers", "groceries", "groceries-val", "synthetic-covers", "synthetic-groceries")
#: Query files searched again with the Myntra photos in the catalogue as distractors.
HELD_SETS = ("covers", "groceries", "synthetic-fashion")


def quality(
    url: str, featurizer: Featurizer, sets: Path, myntra: Path | None, candidates: int, limit: int | None
) -> list[dict[str, Any]]:
    """Every query set against the shared catalogue, then with the Myntra photos as distractors."""
    catalogues: list[Path | str] = [sets / s / "catalogue.csv" for s in CATALOGUE_SETS]
    queries = [sets / s / "queries.csv" for s in QUERY_SETS if (sets / s / "queries.csv").exists()]
    runs = [("covers + groceries", catalogues, queries)]
    if myntra is not None:
        # The real phone photos again, and the fashion photos made from the Myntra catalogue itself.
        held = [sets / s / "queries.csv" for s in HELD_SETS if (sets / s / "queries.csv").exists()]
        # The Myntra photos as synthetic-fashion's manifest lists them (its queries name those SKUs), else the tree.
        fashion = sets / "synthetic-fashion" / "catalogue.csv"
        runs.append(("+ 2,524 Myntra fashion products", [*catalogues, fashion if fashion.exists() else myntra], held))
    out = []
    for label, cats, files in runs:
        log(f"quality: {label}")
        reports = street_to_shop.evaluate_queries(
            url, cats, files, featurizer, candidates=candidates, limit=limit, progress=log
        )
        out += [{**r.as_dict(), "catalogue": label, "load": load_average()} for r in reports]
    return out


def cost(url: str, featurizer: Featurizer, sets: Path, myntra: Path | None, photos: int) -> dict[str, Any]:
    """Query latency with and without verification, ingestion rate with and without local features."""
    with street_to_shop.throwaway_database(url, log) as engine:
        entries = []
        for s in CATALOGUE_SETS:
            entries += street_to_shop.catalogue_entries(sets / s / "catalogue.csv")
        ingest(engine, entries, featurizer)
        with engine.connect() as conn:
            sizes = [
                row[0]
                for row in conn.exec_driver_sql(
                    "SELECT octet_length(points) + octet_length(descriptors) FROM photo_features"
                )
            ]
        paths = []
        for s in ("covers", "groceries"):
            queries, _ = street_to_shop.read_labelled(sets / s / "queries.csv", {e.sku for e in entries})
            random.Random(0).shuffle(queries)
            paths += [q.image for q in queries[:photos]]
        for path in paths[:3]:  # warm: graphs traced, plans prepared
            query.search_image(engine, featurizer, path, 10, in_stock_only=False)
        timings: dict[str, list[float]] = {"global only": [], "verified": []}
        load_before = load_average()
        for path in paths:
            for label, verify in (("global only", False), ("verified", True)):
                started = time.perf_counter()
                query.search_image(engine, featurizer, path, 10, in_stock_only=False, verify=verify)
                timings[label].append((time.perf_counter() - started) * 1000)
        latency = {
            label: {"p50_ms": round(statistics.median(v), 1), "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 1)}
            for label, v in timings.items()
        }
    rates = {}
    if myntra is not None:
        files = sorted(p for p in myntra.rglob("*.jpg"))[:200]
        for label, local in (("vectors only", False), ("vectors + local features", True)):
            started = time.perf_counter()
            done = sum(1 for r in featurizer.embed_files(files, colour=True, local=local) if r.ok)
            rates[label] = round(done / (time.perf_counter() - started), 2)
    mean = statistics.mean(sizes)
    return {
        "query_photos": len(paths),
        "load_before_latency": load_before,
        "latency": latency,
        "ingest_images_per_s": rates,
        "load_after": load_average(),
        "feature_bytes": {"mean": round(mean), "max": max(sizes), "photos": len(sizes)},
        "feature_gib_per_million_photos": round(mean * 1e6 / 2**30, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    """The results as the Markdown page committed beside the JSON."""
    m = result["machine"]
    lines = [
        "# Shoppers' photos: quality on every set, and the cost of verification",
        "",
        f"Commit {result['commit']}, {m.get('cpu', '')}, {m.get('cores', '')} cores, precision {result['precision']}, "
        f"pipeline {result.get('pipeline', 'default')}; "
        f"{result['candidates']} candidates verified per photo"
        + (f"; at most {result['limit']} photos per query file (a seeded sample)" if result.get("limit") else "")
        + ". Produced by `benchmarks/street_to_shop.py`.",
        "",
        "## Quality",
        "",
        "R@k: the photographed product among the first k results; MRR over the first 10; global: the pipeline's VGG16 "
        "vector alone (no verification) from the same vectors; exact 1st: photos whose first result is a verified "
        "match; right: how often that first exact match is the photographed product.",
        "",
    ]
    rows = []
    for r in result["quality"]:
        name = Path(r["queries_file"]).parent.name
        for kind, d in [("all", r), *r["by_kind"].items()]:
            if kind == "all" and len(r["by_kind"]) == 1:
                continue
            rows.append(
                [
                    r["catalogue"],
                    f"{name} ({kind})",
                    d["queries"],
                    d["recall"]["@1"],
                    d["recall"]["@10"],
                    d["mrr"],
                    d["global_recall"]["@1"],
                    d["global_recall"]["@10"],
                    d["exact_first_rate"],
                    "-" if d["exact_first_precision"] is None else d["exact_first_precision"],
                ]
            )
    headers = ["catalogue", "queries", "n", "R@1", "R@10", "MRR", "global R@1", "global R@10", "exact 1st", "right"]
    lines += [md_table(headers, rows), ""]
    c = result.get("cost")
    if c:
        lines += [
            "## Cost (one run, interleaved)",
            "",
            f"Load before: {c['load_before_latency']}, after: {c['load_after']}.",
            "",
            md_table(
                ["photo query, warm", "p50 ms", "p90 ms"],
                [[k, v["p50_ms"], v["p90_ms"]] for k, v in c["latency"].items()],
            ),
            "",
            md_table(["ingestion (200 Myntra photos)", "photos/s"], list(c["ingest_images_per_s"].items())),
            "",
            f"Local features: {c['feature_bytes']['mean']} bytes per photo on average, {c['feature_bytes']['max']} "
            f"at most ({c['feature_bytes']['photos']} photos); {c['feature_gib_per_million_photos']} GiB per million "
            "photos.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=Path, required=True, help="folder of evaluation sets (see the docstring)")
    parser.add_argument("--myntra", type=Path, default=None, help="the Myntra folder tree, as distractors")
    parser.add_argument("--candidates", type=int, default=query.VERIFY_CANDIDATES)
    parser.add_argument("--photos", type=int, default=100, help="query photos per set for the latency")
    parser.add_argument("--limit", type=int, default=None, help="at most this many photos per query file (seeded)")
    parser.add_argument("--skip", choices=("quality", "cost"), action="append", default=[])
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-street"), help="throwaway server")
    parser.add_argument("--name", default="street-to-shop")
    parser.add_argument("--pipeline", choices=tuple(PIPELINES), default="default", help="how photos become vectors")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    featurizer = Featurizer(settings.weights, settings.batch_size, settings.precision, pipeline=args.pipeline)
    featurizer.warm_up()
    url = start_server(args.home)
    try:
        schema.upgrade(db.create_engine(url))
        result: dict[str, Any] = {
            "machine": machine(),
            "commit": git_commit(),
            "precision": featurizer.precision,
            "pipeline": args.pipeline,
            "candidates": args.candidates,
            "limit": args.limit,
            "extractor": local_features.EXTRACTOR,
        }
        if "quality" not in args.skip:
            result["quality"] = quality(url, featurizer, args.sets, args.myntra, args.candidates, args.limit)
        if "cost" not in args.skip:
            result["cost"] = cost(url, featurizer, args.sets, args.myntra, args.photos)
    finally:
        stop_server(args.home)
    json_path, md_path = write_results(args.name, result, markdown({"quality": [], **result}))
    log(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
