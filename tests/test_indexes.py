"""Category indexes: built, listed and dropped safely, and used by the search functions without changing answers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, indexes, query, schema, sql
from imgsearch.catalogue import ProductRecord
from imgsearch.cli import main
from imgsearch.errors import InvalidQueryError, UnknownCategoryError
from tests.vectors import PHOTO_CLASSES, mixes

# Three of the sample catalogue's classes, grown to a catalogue big enough for the index walk: a query from
# one class searched within another is the hard case.
SIZES = {"shoes": 2500, "pants": 1200, "hat": 300}
ODD = "l'été; DROP TABLE products; -- " + "x" * 80  # quotes, SQL, non-ASCII, longer than an identifier


def _records(sample_vectors: np.ndarray, rng: np.random.Generator) -> tuple[list[ProductRecord], dict[str, np.ndarray]]:
    records, vectors = [], {}
    for category, n in SIZES.items():
        vectors[category] = mixes(sample_vectors[np.equal(PHOTO_CLASSES, category)], n, rng)
        records += [
            ProductRecord(sku=f"{category}-{i}", category=category, embedding=v, price=Decimal(i % 90 + 10))
            for i, v in enumerate(vectors[category])
        ]
    vectors["dress"] = mixes(sample_vectors[np.equal(PHOTO_CLASSES, "dress")], 40, rng)  # queries only
    records.append(ProductRecord(sku="odd-1", category=ODD, embedding=vectors["dress"][-1]))
    return records, vectors


@pytest.fixture(scope="module")
def filled(
    make_database: Callable[..., str], migrated_template: str, sample_vectors: np.ndarray
) -> Iterator[tuple[Engine, dict[str, np.ndarray]]]:
    engine = db.create_engine(make_database(template=migrated_template))
    records, vectors = _records(sample_vectors, np.random.default_rng(3))
    catalogue.upsert_products(engine, records)
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE products"))
        conn.commit()
    yield engine, vectors
    engine.dispose()


@pytest.fixture
def clean(filled: tuple[Engine, dict[str, np.ndarray]]) -> Iterator[tuple[Engine, dict[str, np.ndarray]]]:
    """The shared catalogue, with no category index before or after the test."""
    engine, _ = filled
    for existing in indexes.list_category_indexes(engine):
        indexes.drop_category_index(engine, existing.category)
    yield filled
    for existing in indexes.list_category_indexes(engine):
        indexes.drop_category_index(engine, existing.category)


def _index_scans(engine: Engine, index_name: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes WHERE indexrelname = :n"),
            {"n": index_name},
        ).scalar_one()


def _search_counting_scans(
    engine: Engine, index_name: str, queries: np.ndarray, categories: list[str]
) -> tuple[list[list[str]], int]:
    """Search on one session and return the results and how many scans ``index_name`` served for them."""
    before = _index_scans(engine, index_name)
    with engine.connect() as conn:
        found = [[r.sku for r in query.search(conn, q, 10, categories=categories)] for q in queries]
        # A session publishes its statistics when it goes idle after a transaction, at most once a second
        # unless forced: force it, so the counters are current once the commit returns.
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
        conn.commit()
    return found, _index_scans(engine, index_name) - before


def test_category_index_serves_searches_from_other_categories(clean: tuple[Engine, dict[str, np.ndarray]]) -> None:
    engine, vectors = clean
    queries = vectors["dress"][:20]
    exact = [[r.sku for r in query.search(engine, q, 10, categories="shoes", exact=True)] for q in queries]

    index = indexes.create_category_index(engine, "shoes")
    assert (index.category, index.products) == ("shoes", SIZES["shoes"]) and index.size_bytes > 0
    found, scans = _search_counting_scans(engine, index.index_name, queries, ["shoes"])

    assert scans >= len(queries)
    assert all(len(f) == 10 and all(s.startswith("shoes-") for s in f) for f in found)
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.95, recall

    # Two categories, one without an index: the catalogue-wide index answers, as before.
    found, scans = _search_counting_scans(engine, index.index_name, queries[:2], ["shoes", "pants"])
    assert scans == 0
    assert all(len(f) == 10 for f in found)

    # Both indexed: each category's own index is walked, and the answers are the exact ranking's.
    other = indexes.create_category_index(engine, "pants")
    before = _index_scans(engine, other.index_name)
    found, scans = _search_counting_scans(engine, index.index_name, queries[:10], ["shoes", "pants"])
    assert scans >= 10 and _index_scans(engine, other.index_name) - before >= 10
    exact = [[r.sku for r in query.search(engine, q, 10, categories=["shoes", "pants"], exact=True)] for q in queries]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact[:10], strict=True)])
    assert recall >= 0.95, recall


def test_create_is_idempotent_and_listed(clean: tuple[Engine, dict[str, np.ndarray]]) -> None:
    engine, _ = clean
    first = indexes.create_category_index(engine, "hat")
    assert indexes.create_category_index(engine, "hat") == first
    assert indexes.list_category_indexes(engine) == [first]
    assert first.index_name.startswith("ix_products_embedding_cat_")
    # The catalogue's own statistics still describe the catalogue-wide index.
    assert catalogue.stats(engine).index_name == "ix_product_images_embedding"


def test_category_names_are_data_not_sql(clean: tuple[Engine, dict[str, np.ndarray]]) -> None:
    engine, vectors = clean
    index = indexes.create_category_index(engine, ODD)
    assert indexes.list_category_indexes(engine) == [index]
    assert (index.category, index.products) == (ODD, 1)
    assert [r.sku for r in query.search(engine, vectors["dress"][0], 3, categories=ODD)] == ["odd-1"]
    assert catalogue.stats(engine).products == sum(SIZES.values()) + 1
    assert indexes.drop_category_index(engine, ODD) is True
    assert indexes.list_category_indexes(engine) == []


def test_unknown_categories(clean: tuple[Engine, dict[str, np.ndarray]]) -> None:
    engine, _ = clean
    with pytest.raises(UnknownCategoryError, match="no products in category 'socks'"):
        indexes.create_category_index(engine, "socks")
    assert indexes.list_category_indexes(engine) == []
    with pytest.raises(UnknownCategoryError, match="'pants' has no category index"):
        indexes.drop_category_index(engine, "pants")
    assert indexes.drop_category_index(engine, "pants", missing_ok=True) is False


def test_index_large_categories(clean: tuple[Engine, dict[str, np.ndarray]]) -> None:
    engine, _ = clean
    indexes.create_category_index(engine, "pants")
    seen: list[str] = []
    built = indexes.index_large_categories(engine, 1000, on_created=lambda i: seen.append(i.category))
    assert [i.category for i in built] == seen == ["shoes"]  # pants had one already; hat is too small
    assert [i.category for i in indexes.list_category_indexes(engine)] == ["pants", "shoes"]
    assert indexes.index_large_categories(engine, 1000) == []
    with pytest.raises(InvalidQueryError, match="at least 1"):
        indexes.index_large_categories(engine, 0)


def test_downgrade_removes_category_indexes(
    make_database: Callable[..., str], migrated_template: str, sample_vectors: np.ndarray
) -> None:
    engine = db.create_engine(make_database(template=migrated_template))
    records, _ = _records(sample_vectors, np.random.default_rng(5))
    catalogue.upsert_products(engine, records[-400:])
    indexes.create_category_index(engine, "hat")
    schema.downgrade(engine, "0001")
    with engine.connect() as conn:
        names = set(conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'products'")).scalars())
        functions = set(conn.execute(sa.text("SELECT proname FROM pg_proc WHERE proname LIKE 'imgsearch_%'")).scalars())
    assert not any(n.startswith("ix_products_embedding_cat_") for n in names)
    assert "imgsearch_create_category_index" not in functions and "imgsearch_similar" in functions
    schema.upgrade(engine)
    assert indexes.create_category_index(engine, "hat").products == SIZES["hat"]
    engine.dispose()


def test_cli(clean: tuple[Engine, dict[str, np.ndarray]]) -> None:
    engine, _ = clean
    url = engine.url.render_as_string(hide_password=False)

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, ["--database-url", url, "index", *args])
        assert result.exit_code == code, (result.output, result.exception)
        if code:
            assert result.stdout == ""  # the error line goes to stderr, alone
            return result.stderr
        return result.stdout

    assert "no category indexes" in run("list")
    assert run("create", "hat").startswith("indexed hat (300 products, ")
    assert "indexed shoes (2500 products" in run("create", "--min-products", "2000")
    assert "nothing to do" in run("create", "--min-products", "2000")
    listed = json.loads(run("list", "--format", "json"))
    assert [(i["category"], i["products"]) for i in listed] == [("hat", 300), ("shoes", 2500)]
    assert "total" in run("list")

    out = run("create", "pants", "socks", code=1)
    assert out.strip() == "Error: no products in category 'socks'; no index built"
    assert "pants" not in run("list")
    assert run("create", code=1).strip() == "Error: give CATEGORIES or --min-products (not both)"
    out = run("drop", "hat", "pants", code=1)
    assert out.strip() == "Error: no category index for 'pants'; nothing dropped"
    assert len(indexes.list_category_indexes(engine)) == 2
    assert run("drop", "hat", "pants", "--missing-ok").strip() == "dropped 1 category index"
    assert [i.category for i in indexes.list_category_indexes(engine)] == ["shoes"]


def _valid_category_indexes(engine: Engine) -> dict[str, bool]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(sql.command("category_index_states"))).all()
    return {r.category: r.valid for r in rows}


def test_maintenance_keeps_indexes_where_they_pay(clean: tuple[Engine, dict[str, np.ndarray]]) -> None:
    engine, vectors = clean
    # shoes are 62% of the catalogue: the catalogue-wide index serves them; pants are 30%; hat too small.
    built = indexes.maintain_category_indexes(engine, min_products=1000, max_share=0.5)
    assert [i.category for i in built] == ["pants"]
    seen: list[str] = []
    built = indexes.maintain_category_indexes(engine, min_products=250, max_share=0.7, on_created=seen.append)
    assert [i.category for i in built] == [i.category for i in seen] == ["shoes", "hat"]  # largest first
    assert indexes.maintain_category_indexes(engine, min_products=250, max_share=0.7) == []
    # A category index is dropped once its category falls below half the threshold, not at the threshold.
    indexes.maintain_category_indexes(engine, min_products=2000, max_share=0.7)
    assert sorted(_valid_category_indexes(engine)) == ["pants", "shoes"]
    indexes.maintain_category_indexes(engine, min_products=2402, max_share=0.7)
    assert sorted(_valid_category_indexes(engine)) == ["shoes"]
    # Searches still use them and answer the same.
    (shoes,) = indexes.list_category_indexes(engine)
    found, scans = _search_counting_scans(engine, shoes.index_name, vectors["dress"][:3], ["shoes"])
    assert scans >= 3 and all(len(f) == 10 for f in found)
    with pytest.raises(InvalidQueryError, match="max_share"):
        indexes.maintain_category_indexes(engine, max_share=0)


def test_maintenance_rebuilds_an_invalid_index(clean: tuple[Engine, dict[str, np.ndarray]]) -> None:
    engine, _ = clean
    (index,) = indexes.maintain_category_indexes(engine, min_products=1000, max_share=0.5)
    with engine.begin() as conn:  # what a failed or cancelled CREATE INDEX CONCURRENTLY leaves behind
        invalidate = "UPDATE pg_index SET indisvalid = false WHERE indexrelid = CAST(:name AS regclass)"
        conn.execute(sa.text(invalidate), {"name": index.index_name})
    assert _valid_category_indexes(engine) == {"pants": False}
    assert [i.category for i in indexes.maintain_category_indexes(engine, min_products=1000)] == ["pants"]
    assert _valid_category_indexes(engine) == {"pants": True}


def test_maintenance_builds_without_blocking_writes(clean: tuple[Engine, dict[str, np.ndarray]]) -> None:
    engine, vectors = clean
    builder = threading.Thread(
        target=indexes.maintain_category_indexes, args=(engine,), kwargs={"min_products": 2000, "max_share": 0.7}
    )
    builder.start()
    try:
        seen = ""
        with engine.connect() as conn:
            deadline = time.monotonic() + 60
            while not seen and builder.is_alive() and time.monotonic() < deadline:
                seen = (
                    conn.execute(
                        sa.text("SELECT command FROM pg_stat_progress_create_index WHERE phase LIKE 'building%'")
                    ).scalar_one_or_none()
                    or ""
                )
                conn.commit()
            # While the index is being built, a product is added, changed and removed without waiting.
            conn.execute(sa.text("SET lock_timeout = '1s'"))
            record = ProductRecord(sku="shoes-new", category="shoes", embedding=vectors["dress"][0], price=Decimal(5))
            catalogue.upsert_products(conn, [record])
            catalogue.set_stock(conn, {"shoes-new": False})
            catalogue.remove(conn, ["shoes-new"])
            conn.commit()
    finally:
        builder.join()
    assert seen == "CREATE INDEX CONCURRENTLY"
    assert _valid_category_indexes(engine) == {"shoes": True}
