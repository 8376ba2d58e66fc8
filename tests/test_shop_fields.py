"""The shop's own product id and page address: given by the feed, kept, changed and cleared as it says, and carried
into every answer so that a result joins back to the shop's database (revision 0017)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import Result
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, duplicates, query, schema
from imgsearch.catalogue import ProductRecord
from imgsearch.errors import InvalidProductError

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTOS = sorted((SAMPLE / "shoes").glob("*.jpg"))[:4]


def _feed(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _fields(engine: Engine) -> dict[str, tuple[str | None, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sku, shop_product_id, page_url FROM products ORDER BY sku")).all()
    return {sku: (product_id, url) for sku, product_id, url in rows}


def test_the_feed_sets_changes_keeps_and_clears_them_and_every_answer_carries_them(
    run: Callable[..., Result], engine: Engine, tmp_path: Path
) -> None:
    rows = [
        {
            "sku": f"s{i}",
            "category": "shoes",
            "price": "10.00",
            "image": str(photo),
            "shop_product_id": f"{1000 + i}",
            "page_url": f"https://shop.example/p/{1000 + i}",
        }
        for i, photo in enumerate(PHOTOS)
    ]
    rows[3]["page_url"] = "javascript:alert(1)"  # not a page address: that row fails, the others are stored
    failed = run("ingest", "--quiet", "--manifest", str(_feed(tmp_path / "a.csv", rows)), expect=1)
    assert "page_url must be an http:// or https:// address" in failed.stderr and "Traceback" not in failed.output
    assert _fields(engine) == {f"s{i}": (f"{1000 + i}", f"https://shop.example/p/{1000 + i}") for i in range(3)}

    # Every answer carries them: the Python API, the CLI's JSON and CSV, look-ups and duplicate groups.
    found = query.similar_to_sku(engine, "s0", 2, in_stock_only=False)
    assert {(r.sku, r.shop_product_id, r.page_url) for r in found} == {
        (f"s{i}", f"{1000 + i}", f"https://shop.example/p/{1000 + i}") for i in (1, 2)
    }
    vector = catalogue.get_photo_vectors(engine, "s0")[0]
    first = query.search(engine, vector, 1)[0]
    assert (first.sku, first.shop_product_id) == ("s0", "1000")
    records = json.loads(run("similar", "s0", "-k", "2", "--format", "json").stdout)
    assert {(r["sku"], r["shop_product_id"], r["page_url"]) for r in records} == {
        (r.sku, r.shop_product_id, r.page_url) for r in found
    }
    assert "shop_product_id,page_url" in run("similar", "s0", "-k", "1", "--format", "csv").stdout.splitlines()[0]
    product = catalogue.get_product(engine, "s2")
    assert product is not None and (product.shop_product_id, product.page_url) == (
        "1002",
        "https://shop.example/p/1002",
    )
    groups = duplicates.find_duplicate_groups(engine, max_distance=2.0)
    assert {item.shop_product_id for group in groups for item in group.listings} <= {"1000", "1001", "1002"}

    # A new id changes it; an empty cell clears it; a feed without the column keeps what is stored.
    rows = rows[:3]
    rows[0]["shop_product_id"] = "2000"
    rows[1]["page_url"] = ""
    again = run("ingest", "--quiet", "--manifest", str(_feed(tmp_path / "b.csv", rows)))
    assert "updated 2," in again.stdout
    assert _fields(engine) == {
        "s0": ("2000", "https://shop.example/p/1000"),
        "s1": ("1001", None),
        "s2": ("1002", "https://shop.example/p/1002"),
    }
    plain = [{k: v for k, v in row.items() if k not in ("shop_product_id", "page_url")} for row in rows]
    kept = run("ingest", "--quiet", "--manifest", str(_feed(tmp_path / "c.csv", plain)))
    assert "unchanged 3," in kept.stdout and _fields(engine)["s0"] == ("2000", "https://shop.example/p/1000")


def test_python_records_keep_clear_and_refuse(engine: Engine) -> None:
    vectors = np.random.default_rng(0).normal(size=(2, 512)).astype(np.float32)
    catalogue.upsert_products(
        engine,
        [
            ProductRecord(sku="a", category="c", embedding=vectors[0], shop_product_id="A-1", page_url="http://x.y/a"),
            ProductRecord(sku="b", category="c", embedding=vectors[1]),
        ],
    )
    assert _fields(engine) == {"a": ("A-1", "http://x.y/a"), "b": (None, None)}
    # A metadata-only update that does not mention them keeps them; a blank clears.
    catalogue.upsert_products(engine, [ProductRecord(sku="a", category="c", price=Decimal("5"))])
    assert _fields(engine)["a"] == ("A-1", "http://x.y/a")
    catalogue.upsert_products(engine, [ProductRecord(sku="a", category="c", price=Decimal("5"), page_url=" ")])
    assert _fields(engine)["a"] == ("A-1", None)
    for bad, message in (
        ({"page_url": "ftp://x.y/a"}, "page_url must be"),
        ({"page_url": "https://x.y/a b"}, "page_url must be"),
        ({"shop_product_id": "x" * 256}, "shop_product_id is 256 characters"),
        ({"shop_product_id": 12}, "shop_product_id must be text"),
    ):
        with pytest.raises(InvalidProductError, match=message):
            catalogue.upsert_products(engine, [ProductRecord(sku="a", category="c", **bad)])  # type: ignore[arg-type]
    assert _fields(engine)["a"] == ("A-1", None)


def test_0017_adds_them_to_a_populated_catalogue_and_takes_them_back(make_database: Callable[..., str]) -> None:
    engine = db.create_engine(make_database())
    schema.upgrade(engine, "0016")
    vectors = np.random.default_rng(1).normal(size=(30, 512)).astype(np.float32)
    catalogue.upsert_products(
        engine, [ProductRecord(sku=f"p{i}", category="c", price=Decimal(i), embedding=v) for i, v in enumerate(vectors)]
    )

    def rows() -> list[tuple]:
        with engine.connect() as conn:
            statement = "SELECT p.sku, p.category, p.price, i.embedding::text FROM products p JOIN product_images i "
            return [tuple(r) for r in conn.execute(sa.text(statement + "ON i.product_id = p.id ORDER BY p.sku"))]

    before = rows()
    found = [r.sku for r in query.search(engine, vectors[3], 5)]
    schema.upgrade(engine)
    assert rows() == before and _fields(engine) == {f"p{i}": (None, None) for i in range(30)}
    assert [r.sku for r in query.search(engine, vectors[3], 5)] == found
    catalogue.upsert_products(engine, [ProductRecord(sku="p3", category="c", price=Decimal(3), shop_product_id="9")])
    assert query.search(engine, vectors[3], 1)[0].shop_product_id == "9"
    schema.downgrade(engine, "0016")
    assert rows() == before
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("products", schema="imgsearch")}
    assert not {"shop_product_id", "page_url"} & columns
    assert [r.sku for r in query.search(engine, vectors[3], 5)] == found
    engine.dispose()
