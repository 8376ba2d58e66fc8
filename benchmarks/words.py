"""Photo and words together: does fusing the words' ranking with the photo's beat either alone?

The catalogue is the Myntra sample (2,524 studio photos, their real VGG16 vectors), each product named as a shop
would name it from its labels (``"Men's Navy Blue Tshirts"``: gender, base colour, article type) with its usage
and season as attributes. A query is a product's own photo (the product itself excluded from the results) and
words a shopper would add to it; a result is relevant when it has what photo and words ask together:

- ``same colour``: the words are the product's colour ("navy blue"); relevant: same article type and colour.
- ``other colour``: "like this, but in red": the words are another colour that products of the same type have;
  relevant: same article type, that colour. The photo alone points at the wrong colour, the words alone at any
  type.
- ``gender``: the words are "men" or "women" (the product's); relevant: same article type and gender.

Each query is answered photo-only (``imgsearch.query.search``), words-only (``search_words``) and fused
(``search(text=...)``) at every ``text_weight`` of ``WEIGHTS``, k = 5, through the project's own path
(products upserted into an embedded PostgreSQL). Reported: precision@5 (relevant results / 5) per method. The
weight is chosen on the first half of the ``same colour`` queries only (``tune``), then reported on the other half
and on the two other sets, which it never saw. Writes ``benchmarks/results/words.json`` and ``.md``.

    .venv/bin/python -m benchmarks.words
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEFAULT_CACHE,
    REPO,
    cached_embeddings,
    git_commit,
    load_average,
    log,
    machine,
    md_table,
    start_server,
    stop_server,
    write_results,
)

K = 5
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SETS = ("same colour", "other colour", "gender")


def products(root: Path, paths: list[str]) -> list[dict[str, str]]:
    """The labels of each photo (``labels.csv``), in the order of ``paths``."""
    with (root / "labels.csv").open(newline="") as fh:
        by_path = {row["path"]: row for row in csv.DictReader(fh)}
    return [by_path[p] for p in paths]


def name(label: dict[str, str]) -> str:
    owner = {"Men": "Men's", "Women": "Women's", "Boys": "Boys'", "Girls": "Girls'"}.get(label["gender"], "")
    return " ".join(x for x in (owner, label["baseColour"], label["articleType"]) if x)


def make_queries(labels: list[dict[str, str]], seed: int, per_set: int) -> dict[str, list[tuple[int, str, set[int]]]]:
    """Per set: (product index, words, relevant product indexes), for queries with at least k relevant products."""
    rng = np.random.default_rng(seed)
    by_type_colour: dict[tuple[str, str], set[int]] = defaultdict(set)
    by_type_gender: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, label in enumerate(labels):
        by_type_colour[label["articleType"], label["baseColour"]].add(i)
        by_type_gender[label["articleType"], label["gender"]].add(i)
    queries: dict[str, list[tuple[int, str, set[int]]]] = {s: [] for s in SETS}
    for i in rng.permutation(len(labels)):
        label = labels[i]
        kind, colour = label["articleType"], label["baseColour"]
        same = by_type_colour[kind, colour] - {i}
        if colour and len(same) >= K:
            queries["same colour"].append((int(i), colour.lower(), same))
        others = [
            c for (t, c), members in by_type_colour.items() if t == kind and c and c != colour and len(members) >= K
        ]
        if others:
            other = others[rng.integers(len(others))]
            queries["other colour"].append((int(i), other.lower(), by_type_colour[kind, other]))
        gender = label["gender"]
        mates = by_type_gender[kind, gender] - {i}
        if gender in ("Men", "Women") and len(mates) >= K:
            queries["gender"].append((int(i), gender.lower(), mates))
    return {s: q[: 2 * per_set if s == "same colour" else per_set] for s, q in queries.items()}


def precision(found: list[str], relevant: set[int]) -> float:
    return sum(1 for sku in found[:K] if int(sku[1:]) in relevant) / K


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("../shared/datasets/myntra-fashion-products"))
    parser.add_argument("--precision", default="bfloat16", help="featurizer precision of the embeddings")
    weights = os.environ.get("IMGSEARCH_VGG16_WEIGHTS", str(REPO.parent / "shared/models/vgg16_imagenet_notop.h5"))
    parser.add_argument("--weights", default=weights, help="VGG16 weights (part of the embedding cache's key)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--queries", type=int, default=300, help="queries per set (the tuning set: twice that)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)

    from imgsearch import catalogue, db, query, schema
    from imgsearch.catalogue import ProductRecord

    wall, load_start, started = time.perf_counter(), load_average(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    vectors, paths, _ = cached_embeddings(args.images, args.precision, args.cache_dir, args.weights)
    labels = products(args.images.resolve(), paths)
    queries = make_queries(labels, args.seed, args.queries)
    log({s: len(q) for s, q in queries.items()})
    home = Path(tempfile.mkdtemp(prefix="imgsearch-words-"))
    url = start_server(home)
    try:
        engine = db.create_engine(url)
        schema.upgrade(engine)
        records = [
            ProductRecord(
                sku=f"m{i:05d}",
                category=label["masterCategory"] or "other",
                name=name(label),
                price=Decimal(20),
                image=paths[i],
                embedding=vectors[i],
                attributes={k: label[k] for k in ("usage", "season") if label[k]},
            )
            for i, label in enumerate(labels)
        ]
        catalogue.upsert_products(engine, records)
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE products")
            conn.commit()
        methods = ["photo", "words", *(f"fused {w}" for w in WEIGHTS)]
        scores: dict[str, dict[str, list[float]]] = {s: {m: [] for m in methods} for s in SETS}
        for set_name, items in queries.items():
            for i, words, relevant in items:
                sku = f"m{i:05d}"
                common = {"exclude_skus": [sku], "in_stock_only": False}
                found = {"photo": [r.sku for r in query.search(engine, vectors[i], K, **common)]}
                found["words"] = [r.sku for r in query.search_words(engine, words, K, **common)]
                for w in WEIGHTS:
                    fused = query.search(engine, vectors[i], K, text=words, text_weight=w, **common)
                    found[f"fused {w}"] = [r.sku for r in fused]
                for method, skus in found.items():
                    scores[set_name][method].append(precision(skus, relevant))
            log(f"{set_name}: " + ", ".join(f"{m} {np.mean(v):.3f}" for m, v in scores[set_name].items()))
        engine.dispose()
    finally:
        stop_server(home)
        shutil.rmtree(home, ignore_errors=True)
    half = len(queries["same colour"]) // 2
    tune = {m: float(np.mean(v[:half])) for m, v in scores["same colour"].items()}
    chosen = max(WEIGHTS, key=lambda w: (tune[f"fused {w}"], -abs(w - 0.5)))
    rows: dict[str, dict[str, Any]] = {"same colour (tuning half)": {m: round(v, 4) for m, v in tune.items()}}
    rows["same colour (held out)"] = {m: round(float(np.mean(v[half:])), 4) for m, v in scores["same colour"].items()}
    for set_name in SETS[1:]:
        rows[set_name] = {m: round(float(np.mean(v)), 4) for m, v in scores[set_name].items()}
    counts = {"same colour (tuning half)": half, "same colour (held out)": len(queries["same colour"]) - half}
    counts.update({s: len(queries[s]) for s in SETS[1:]})
    result = {
        "benchmark": "words",
        "command": "python -m benchmarks.words " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": started,
        "wall_s": round(time.perf_counter() - wall, 1),
        "commit": git_commit(),
        "machine": machine(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "k": K,
        "chosen_weight": chosen,
        "queries": counts,
        "precision_at_5": rows,
    }
    lines = [
        "# Photo and words together: precision@5",
        "",
        f"`{result['command']}` at commit {result['commit']}, {started}, {result['wall_s']} s; load average "
        f"{load_start} at the start, {result['load_average_end']} at the end. Myntra's 2,524 studio photos (real "
        "VGG16 vectors, bfloat16), each product named from its labels (gender, base colour, article type); a query "
        "is a product's photo (itself excluded) plus words; relevant: same article type and the colour (or gender) "
        "the words say. The weight of the words in the fused ranking is chosen on the tuning half only "
        f"(**{chosen}**); the other rows never saw it.",
        "",
    ]
    headers = ["queries", "n", "photo", "words", *(f"fused {w}" for w in WEIGHTS)]
    table = [
        [set_name, counts[set_name], *(f"{v[m]:.3f}" for m in ["photo", "words", *(f"fused {w}" for w in WEIGHTS)])]
        for set_name, v in rows.items()
    ]
    lines += [md_table(headers, table), ""]
    for set_name, v in rows.items():
        best_alone = max(v["photo"], v["words"])
        lines.append(
            f"- {set_name}: fused at {chosen} {v[f'fused {chosen}']:.3f} against photo {v['photo']:.3f} and words "
            f"{v['words']:.3f}: {'better than both' if v[f'fused {chosen}'] > best_alone else '**not better**'}"
        )
    json_path, md_path = write_results("words", result, "\n".join(lines) + "\n")
    log(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
