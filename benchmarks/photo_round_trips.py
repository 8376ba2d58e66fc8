"""What a verified photo search asks the database, before and after revision 0010: statements and time.

Before: the embedding-space check, the global candidates (``imgsearch_verification_candidates``), the active
vocabulary's id and the word candidates (``imgsearch_word_candidates``): four statements. After:
``imgsearch_photo_candidates`` does all of it in one. Both paths run on the same warm connection pool, on the
same query photos (their vectors and local features computed once, outside the timing), interleaved photo by
photo so that load hits both alike; the rest of the search (network, local features, verification) is the same
for both and left out. The catalogue is the sample catalogue (120 photos) loaded with the stand-in network
(``weights="fake"``: the database's work does not depend on the network), so the script runs anywhere:

    .venv/bin/python -m benchmarks.photo_round_trips [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from benchmarks.common import load_average, log, machine, md_table, start_server, stop_server, write_results
from imgsearch import Catalogue, Settings, catalogue, db, local_features, query, schema, visual_words
from imgsearch.config import DEFAULT_SCHEMA

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"


def _before(engine: Any, vector: Any, features: Any, space: Any) -> list[Any]:
    """The four statements of the search before revision 0010 (the library's pieces, as it called them)."""
    catalogue.check_space(engine, space)
    params = {
        "query": vector,
        "k": query.VERIFY_CANDIDATES,
        "extractor": local_features.EXTRACTOR,
        "categories": None,
        "in_stock_only": True,
        "max_price": None,
        "exclude": None,
    }
    rows = query._rows(engine, query._VERIFICATION_CANDIDATES, params)
    words = visual_words.word_candidates(
        engine, features, query.WORD_CANDIDATES, exclude_skus=sorted({r.sku for r in rows}), vector=vector
    )
    return [*rows, *words]


def _after(engine: Any, vector: Any, features: Any, space: Any) -> list[Any]:
    params = {
        "query": vector,
        "k": query.VERIFY_CANDIDATES,
        "extractor": local_features.EXTRACTOR,
        "word_n": query.WORD_CANDIDATES,
        "model": space.model_name,
        "weights_id": space.weights_id,
        "preprocessing": space.preprocessing_version,
        "categories": None,
        "in_stock_only": True,
        "max_price": None,
        "exclude": None,
    }
    params["vocabulary"], params["words"] = visual_words.photo_words(engine, features)
    return query._rows(engine, query._PHOTO_CANDIDATES, params)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-round-trips"))
    parser.add_argument("--name", default="photo-round-trips")
    args = parser.parse_args(argv)
    url = start_server(args.home)
    try:
        admin = db.create_engine(url)
        schema.upgrade(admin)
        admin.dispose()
        shop = Catalogue(url, settings=Settings(weights="fake", schema=DEFAULT_SCHEMA, category_index_min_products=0))
        report = shop.ingest(SAMPLE, index=False)
        log(f"loaded {report.added} products; vocabulary: {report.vocabulary is not None}")
        engine = shop.engine("reader")
        space = shop.featurizer.space
        photos = sorted(SAMPLE.glob("*/*.jpg"))[::6]
        prepared = [
            (shop.featurizer.embed_image(p), local_features.features_of(p, local_features.QUERY_KEYPOINTS))
            for p in photos
        ]
        statements = [0]
        event.listen(engine, "before_cursor_execute", lambda *_: statements.__setitem__(0, statements[0] + 1))
        for vector, features in prepared[:2]:  # warm: pool, vocabulary cache, plans
            _before(engine, vector, features, space)
            _after(engine, vector, features, space)
        times: dict[str, list[float]] = {"before": [], "after": []}
        counts: dict[str, list[int]] = {"before": [], "after": []}
        same = 0
        load_start = load_average()
        for _ in range(args.rounds):
            for vector, features in prepared:
                found = {}
                for label, run in (("before", _before), ("after", _after)):
                    statements[0] = 0
                    started = time.perf_counter()
                    rows = run(engine, vector, features, space)
                    times[label].append((time.perf_counter() - started) * 1000)
                    counts[label].append(statements[0])
                    found[label] = sorted((r.sku, r.photo) for r in rows)
                same += found["before"] == found["after"]
        runs = len(prepared) * args.rounds
        result = {
            "machine": machine(),
            "load_at_start": load_start,
            "load_at_end": load_average(),
            "photos": len(prepared),
            "rounds": args.rounds,
            "same_candidates": same,
            "searches": runs,
            "paths": {
                label: {
                    "statements": statistics.median(counts[label]),
                    "p50_ms": statistics.median(times[label]),
                    "p90_ms": statistics.quantiles(times[label], n=10)[-1],
                }
                for label in times
            },
        }
        table = md_table(
            ["path", "statements per search", "p50 ms", "p90 ms"],
            [
                [label, f"{v['statements']:.0f}", f"{v['p50_ms']:.2f}", f"{v['p90_ms']:.2f}"]
                for label, v in result["paths"].items()
            ],
        )
        markdown = (
            "# A verified photo search's database work, before and after revision 0010\n\n"
            + (__doc__ or "").split("\n\n")[0]
            + "\n\n"
            + f"{runs} searches per path ({len(prepared)} sample photos x {args.rounds} rounds, interleaved); the "
            f"same candidates (products and photos) from both paths in {same} of {runs}. Machine: "
            f"{result['machine']['cpu']}, {result['machine']['cores']} cores; load average {load_start} at the "
            f"start, {result['load_at_end']} at the end. Unix-socket connection to the embedded server: a "
            "network between the backend and the database adds its round-trip time to every statement.\n\n"
            + table
            + "\n"
        )
        write_results(args.name, result, markdown)
        print(markdown)
    finally:
        stop_server(args.home)


if __name__ == "__main__":
    main()
