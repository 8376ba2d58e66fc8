"""Build the street-to-shop evaluation sets (catalogue photos + real shoppers' photos) from their public sources.

Why: docs/quality.md's shopper-photo figures come from two public data sets whose photos may not be copied into
the repository. This turns local copies of them into the folder of sets that ``imgsearch eval --queries``,
``benchmarks/street_to_shop.py``, ``benchmarks/candidates_scale.py`` and ``benchmarks/global_candidates.py``
read: one folder per set holding ``catalogue.csv`` (an imgsearch manifest: sku,name,category,price,in_stock,
image) and ``queries.csv`` (``image,sku,kind``: a shopper's photo and the SKU of the product it shows).

Sources (see docs/quality.md for licences):

* ``--covers``: the ``dvd_covers`` folder of the Stanford Mobile Visual Search data set, as copied in GitHub
  ``kdatsenko/scalable-vocabulary-tree-image-recognition`` at d4516d0 (``git archive HEAD dvd_covers``).
  ``Reference/NNN.jpg`` is product ``dvd-NNN``; the photos of the same name under ``Canon``, ``Droid``, ``E63``
  and ``Palm`` are its 400 shopper photos (kind ``printed``).
* ``--groceries``: the ``dataset`` folder of GitHub ``marcusklasson/GroceryStoreDataset`` at fc80ba9 (MIT).
  Each of the 81 classes is one product whose catalogue photo is its iconic image; the ``test`` split's 2,485
  phone photos make set ``groceries`` and the ``val`` split's 296 make ``groceries-val``; kind ``packaged`` for
  the ``Packages`` branch, ``produce`` for fruit and vegetables.

    python -m benchmarks.streetshop_sets --covers /work/data/raw/covers/dvd_covers \\
        --groceries /work/data/raw/groceries/dataset --out /work/data/streetshop
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

MANIFEST = ("sku", "name", "category", "price", "in_stock", "image")
QUERY_COLUMNS = ("image", "sku", "kind")
COVER_PHONES = ("Canon", "Droid", "E63", "Palm")
GROCERY_SPLITS = {"groceries": "test.txt", "groceries-val": "val.txt"}


def _write(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def covers(source: Path, out: Path) -> tuple[int, int]:
    """The DVD covers: 100 reference scans as the catalogue, four phones' photos of them as queries."""
    references = sorted((source / "Reference").glob("*.jpg"))
    if not references:
        raise SystemExit(f"{source}: no Reference/*.jpg (expected the dvd_covers folder)")
    catalogue = [
        {
            "sku": f"dvd-{p.stem}",
            "name": f"DVD cover {p.stem}",
            "category": "dvd-covers",
            "price": "9.99",
            "in_stock": "true",
            "image": str(p.resolve()),
        }
        for p in references
    ]
    queries = [
        {"image": str((source / phone / p.name).resolve()), "sku": f"dvd-{p.stem}", "kind": "printed"}
        for phone in COVER_PHONES
        for p in references
        if (source / phone / p.name).is_file()
    ]
    _write(out / "covers" / "catalogue.csv", MANIFEST, catalogue)
    _write(out / "covers" / "queries.csv", QUERY_COLUMNS, queries)
    return len(catalogue), len(queries)


def groceries(source: Path, out: Path) -> dict[str, tuple[int, int]]:
    """The Grocery Store classes: iconic images as the catalogue, the test and validation photos as queries."""
    classes = source / "classes.csv"
    if not classes.is_file():
        raise SystemExit(f"{source}: no classes.csv (expected the GroceryStoreDataset dataset folder)")
    with classes.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    by_id: dict[str, dict[str, str]] = {}
    catalogue = []
    for name, class_id, coarse, _coarse_id, iconic, *_ in rows:
        sku = f"grocery-{name.lower()}"
        kind = "packaged" if iconic.strip("/").split("/")[1] == "Packages" else "produce"
        by_id[class_id] = {"sku": sku, "kind": kind}
        catalogue.append(
            {
                "sku": sku,
                "name": name.replace("-", " "),
                "category": coarse.lower(),
                "price": "2.50",
                "in_stock": "true",
                "image": str((source / iconic.strip("/")).resolve()),
            }
        )
    counts = {}
    for set_name, split in GROCERY_SPLITS.items():
        queries = []
        for line in (source / split).read_text().splitlines():
            if not line.strip():
                continue
            path, class_id, _coarse_id = (part.strip() for part in line.split(","))
            product = by_id[class_id]
            queries.append({"image": str((source / path).resolve()), "sku": product["sku"], "kind": product["kind"]})
        _write(out / set_name / "catalogue.csv", MANIFEST, catalogue)
        _write(out / set_name / "queries.csv", QUERY_COLUMNS, queries)
        counts[set_name] = (len(catalogue), len(queries))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--covers", type=Path, required=True, help="the dvd_covers folder")
    parser.add_argument("--groceries", type=Path, required=True, help="GroceryStoreDataset's dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="where the sets' folders are written")
    args = parser.parse_args()
    products, photos = covers(args.covers, args.out)
    print(f"covers: {products} products, {photos} photos")
    for name, (products, photos) in groceries(args.groceries, args.out).items():
        print(f"{name}: {products} products, {photos} photos")


if __name__ == "__main__":
    main()
