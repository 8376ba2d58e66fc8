"""The shop's words: full-text search over names, categories, text attributes and descriptions, by words alone, as a
filter of every search and as a second ranking fused with the photo's (revision 0019)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import Result
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, query, schema
from imgsearch.catalogue import ProductRecord
from imgsearch.errors import InvalidQueryError
from tests.test_service import Service

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTOS = sorted((SAMPLE / "shoes").glob("*.jpg"))[:3]
KINDS = ["linen shirt", "denim jacket", "wool jumper", "silk dress", "leather boots"]
COLOURS = ["red", "navy", "white", "black"]


def _products(n: int = 400) -> tuple[list[ProductRecord], np.ndarray]:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(5, 512))
    kinds = rng.integers(5, size=n)
    vectors = (centres[kinds] + 1.5 * rng.normal(size=(n, 512))).astype(np.float32)
    records = [
        ProductRecord(
            sku=f"w{i:04d}",
            name=f"{COLOURS[i % 4].title()} {KINDS[kinds[i]]}",
            category=KINDS[kinds[i]].split()[1] + "s",
            price=Decimal(10 + i % 50),
            in_stock=i % 5 != 0,
            embedding=vectors[i],
            attributes={"brand": ["Acme", "Zenith"][i % 2], "fit": "slim" if i % 3 == 0 else "regular"},
            description="Made in Portugal from organic cotton." if i % 7 == 0 else None,
        )
        for i in range(n)
    ]
    return records, vectors


@pytest.fixture(scope="module")
def shop(make_database: Callable[..., str], migrated_template: str) -> Iterator[tuple[Engine, np.ndarray]]:
    engine = db.create_engine(make_database(template=migrated_template))
    records, vectors = _products()
    catalogue.upsert_products(engine, records)
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE products"))
        conn.commit()
    yield engine, vectors
    engine.dispose()


def test_words_alone_find_names_categories_attributes_and_descriptions(shop: tuple[Engine, np.ndarray]) -> None:
    engine, _ = shop
    found = query.search_words(engine, "red linen shirts", 10, in_stock_only=False)  # stemmed: shirts = shirt
    assert len(found) == 10 and all(r.name.startswith("Red linen shirt") for r in found)
    assert all(r.distance is None and r.attributes["brand"] in ("Acme", "Zenith") for r in found)
    assert [r.rank for r in found] == list(range(1, 11))
    # Attributes and descriptions are words too, and every filter applies.
    zenith = query.search_words(engine, "zenith slim", 50, categories=["jackets"], max_price=30)
    assert zenith and all(
        r.attributes == {"brand": "Zenith", "fit": "slim"} and r.category == "jackets" and r.price <= 30 and r.in_stock
        for r in zenith
    )
    organic = query.search_words(engine, "organic portugal", 100, in_stock_only=False)
    assert len(organic) == len(range(0, 400, 7))
    assert query.search_words(engine, '"linen jacket"', 5) == []  # a phrase no product has
    # A page further down by cursor.
    first = query.search_words(engine, "wool", 5)
    second = query.search_words(engine, "wool", 5, cursor=first[-1].cursor)
    assert [r.sku for r in first + second] == [r.sku for r in query.search_words(engine, "wool", 10)]
    for bad, message in (("the", "nothing to search for"), ("", "1 to 1000"), ("a\x00b", "NUL")):
        with pytest.raises(InvalidQueryError, match=message):
            query.search_words(engine, bad, 5)


def test_words_filter_every_search_or_rank_with_the_photo(shop: tuple[Engine, np.ndarray]) -> None:
    engine, vectors = shop
    q = vectors[3]
    # As a filter: the visual ranking among the products matching the words, exactly k of them.
    only = query.search(engine, q, 10, text="denim", text_filter=True, in_stock_only=False)
    exact = query.search(engine, q, 10, text="denim", text_filter=True, in_stock_only=False, exact=True)
    assert len(only) == 10 and all("denim" in r.name for r in only)
    assert [r.sku for r in only] == [r.sku for r in exact]
    assert [r.distance for r in only] == sorted(r.distance for r in only)
    # As a ranking: fused with the photo's. Weight 0 is the photo's ranking; every result has its distance.
    visual = [r.sku for r in query.search(engine, q, 10)]
    assert [r.sku for r in query.search(engine, q, 10, text="denim", text_weight=0)] == visual
    fused = query.search(engine, q, 10, text="navy denim")
    assert len(fused) == 10 and all(r.distance is not None for r in fused)
    words_first = query.search(engine, q, 10, text="navy denim", text_weight=1)
    assert all(r.name == "Navy denim jacket" for r in words_first)
    # Words that score the products alike (all named "Navy denim jacket") rank them alike: the photo orders them.
    assert [r.sku for r in fused] == [r.sku for r in query.search(engine, q, 10, text="navy denim", text_filter=True)]
    with pytest.raises(InvalidQueryError, match="text_weight"):
        query.search(engine, q, 10, text="denim", text_weight=2)


def test_the_language_setting_reads_the_words_again(make_database: Callable[..., str], migrated_template: str) -> None:
    engine = db.create_engine(make_database(template=migrated_template))
    records, _ = _products(20)
    catalogue.upsert_products(engine, records)
    assert query.search_words(engine, "linens", 20, in_stock_only=False)  # english stems linens to linen
    assert query.set_text_language(engine, "simple") == 20
    assert query.search_words(engine, "linens", 20, in_stock_only=False) == []  # simple does not
    assert query.search_words(engine, "linen", 20, in_stock_only=False)
    with pytest.raises(InvalidQueryError, match="no text search configuration"):
        query.set_text_language(engine, "klingon")
    # Stock syncs never run the words' trigger, so they stay HOT: tests/test_schema.py checks it at head.
    engine.dispose()


def test_the_cli_searches_by_words_alone_or_with_a_photo(
    run: Callable[..., Result], engine: Engine, tmp_path: Path
) -> None:
    rows = [
        {"sku": "a", "name": "Linen shirt", "category": "shirts", "image": str(PHOTOS[0]), "description": ""},
        {"sku": "b", "name": "Denim jacket", "category": "jackets", "image": str(PHOTOS[1]), "description": ""},
        {
            "sku": "c",
            "name": "Sneaker",
            "category": "shoes",
            "image": str(PHOTOS[2]),
            "description": "Canvas upper,\nlinen lining",
        },
    ]
    with (tmp_path / "feed.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run("ingest", "--quiet", "--manifest", str(tmp_path / "feed.csv"))
    found = json.loads(run("search", "--text", "linen", "--format", "json").stdout)
    assert [r["sku"] for r in found] == ["a", "c"] and found[0]["distance"] is None  # the name weighs more
    table = run("search", "--text", "linen").stdout
    assert "Linen shirt" in table
    filtered = json.loads(run("search", str(PHOTOS[1]), "--text", "linen", "--text-filter", "--format", "json").stdout)
    assert {r["sku"] for r in filtered} == {"a", "c"} and all(r["distance"] is not None for r in filtered)
    fused = json.loads(run("search", str(PHOTOS[1]), "--text", "linen", "-k", "3", "--format", "json").stdout)
    assert {r["sku"] for r in fused} == {"a", "b", "c"}
    assert "give a photo" in run("search", expect=2).output
    refused = run("search", "--text", "the", expect=None)
    assert refused.exit_code != 0 and "nothing to search for" in refused.output and "Traceback" not in refused.output


def test_http_words_alone_and_with_a_vector(shop: tuple[Engine, np.ndarray], fake_weights: str) -> None:
    engine, vectors = shop
    service = Service(engine.url.render_as_string(hide_password=False), fake_weights)
    try:
        alone = service.client.post("/v1/search", json={"text": "wool jumper", "k": 5, "where": {"brand": "Acme"}})
        assert alone.status_code == 200, alone.text
        assert all("wool jumper" in r["name"] and r["attributes"]["brand"] == "Acme" for r in alone.json())
        body = {"vector": vectors[0].tolist(), "k": 5, "text": "silk", "text_filter": True}
        filtered = service.client.post("/v1/search", json=body)
        assert filtered.status_code == 200 and all("silk" in r["name"] for r in filtered.json())
        for bad in (
            {"text": "the"},
            {"text": 5},
            {"text": "silk", "text_weight": "x"},
            {"text": "silk", "max_distance": 1},
        ):
            refused = service.client.post("/v1/search", json=bad)
            assert refused.status_code in (400, 422) and "error" in refused.json(), refused.text
    finally:
        service.close()


def test_0019_computes_the_words_of_a_populated_catalogue_and_takes_them_back(
    make_database: Callable[..., str],
) -> None:
    engine = db.create_engine(make_database())
    schema.upgrade(engine, "0018")
    records, vectors = _products(30)
    catalogue.upsert_products(engine, [replace(r, description=None) for r in records])  # no such column yet

    def rows() -> list[tuple]:
        with engine.connect() as conn:
            statement = (
                "SELECT p.sku, p.name, p.attributes::text, p.updated_at, i.embedding::text FROM products p "
                "JOIN product_images i ON i.product_id = p.id ORDER BY p.sku"
            )
            return [tuple(r) for r in conn.execute(sa.text(statement))]

    before = rows()
    found = [r.sku for r in query.search(engine, vectors[3], 5)]
    schema.upgrade(engine)
    assert rows() == before  # the words were computed; nothing else changed, updated_at included
    assert {r.sku for r in query.search_words(engine, "linen", 30, in_stock_only=False)} == {
        r.sku for r in records if "linen" in (r.name or "")
    }
    schema.downgrade(engine, "0018")
    assert rows() == before
    assert [r.sku for r in query.search(engine, vectors[3], 5)] == found
    engine.dispose()
