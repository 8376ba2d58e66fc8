"""The photos' IVF index, a verified photo search's second source of nearest products (revision 0021): exact
under filters when every list is read, merged with the HNSW walk by distance, found by a search whose walk
misses the product, kept by ingestion as the catalogue grows, and taken back by the downgrade. A real
PostgreSQL with pgvector; vectors made here."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imgsearch import Catalogue, Settings, catalogue, db, local_features, output, query, scan_index, schema
from imgsearch.catalogue import ImageRecord, ProductRecord
from imgsearch.errors import ConfigurationError, DatabaseUnavailableError, InvalidQueryError

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
N = 400
DIM = 512


def _catalogue(seed: int = 0, count: int = N) -> tuple[list[ProductRecord], dict[str, np.ndarray]]:
    """Products in 8 clusters, a third with two photos; every fifth sold out; prices 1..40."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(8, DIM)))
    records, photos = [], {}
    for i in range(count):
        sku = f"p{i:04d}"
        vectors = [np.abs(centres[i % 8] + rng.normal(scale=0.6, size=DIM)) for _ in range(1 + (i % 3 == 0))]
        photos[sku] = np.stack([v / np.linalg.norm(v) for v in vectors])
        records.append(
            ProductRecord(
                sku=sku,
                category=f"c{i % 4}",
                price=Decimal(1 + i % 40),
                in_stock=i % 5 != 0,
                attributes={"brand": f"b{i % 7}"},
                images=tuple(ImageRecord(f"{sku}-{j}.jpg", v) for j, v in enumerate(photos[sku])),
            )
        )
    return records, photos


def _exact(photos: dict[str, np.ndarray], records: list[ProductRecord], q: np.ndarray, n: int, keep) -> list[str]:
    """The n products nearest to q by their nearest photo (cosine), among those ``keep`` accepts."""
    qn = q / np.linalg.norm(q)
    best = {r.sku: float((1 - photos[r.sku] @ qn).min()) for r in records if keep(r)}
    return sorted(best, key=lambda s: (best[s], s))[:n]


def _scan(engine: Engine, q: np.ndarray, n: int, probes: int | None = None, **filters: object) -> list[str]:
    with engine.begin() as conn:
        if probes is not None:
            conn.execute(sa.text("SELECT set_config('imgsearch.scan_probes', :p, true)"), {"p": str(probes)})
        rows = conn.execute(
            sa.text(
                "SELECT DISTINCT rank, sku FROM imgsearch_scan_candidates(CAST(:q AS vector), :n, :e, "
                "CAST(:categories AS text[]), :in_stock_only, :max_price, NULL, CAST(:filters AS jsonb)) ORDER BY rank"
            ),
            {
                "q": str(q.tolist()),
                "n": n,
                "e": local_features.EXTRACTOR,
                "categories": filters.get("categories"),
                "in_stock_only": filters.get("in_stock_only", True),
                "max_price": filters.get("max_price"),
                "filters": filters.get("filters"),
            },
        ).all()
    return [r.sku for r in rows]


@pytest.fixture(scope="module")
def filled(make_database: Callable[..., str], migrated_template: str) -> tuple[Engine, list, dict]:
    engine = db.create_engine(make_database(template=migrated_template))
    records, photos = _catalogue()
    catalogue.upsert_products(engine, records)
    yield engine, records, photos
    engine.dispose()


def test_reading_every_list_gives_the_exact_nearest_products_under_every_filter(filled) -> None:
    engine, records, photos = filled
    assert scan_index.status(engine) is None
    assert _scan(engine, np.ones(DIM), 5) == []  # no index yet: the walk alone serves
    built = scan_index.build(engine, lists=8)
    assert (built.lists, built.valid, built.photos) == (8, True, sum(len(v) for v in photos.values()))
    rng = np.random.default_rng(7)
    cases = [
        ({}, lambda r: r.in_stock),
        ({"in_stock_only": False}, lambda r: True),
        ({"categories": ["c1", "c3"]}, lambda r: r.in_stock and r.category in ("c1", "c3")),
        ({"max_price": 10}, lambda r: r.in_stock and r.price <= 10),
        ({"filters": '{"brand": "b3"}'}, lambda r: r.in_stock and r.attributes["brand"] == "b3"),
    ]
    by_sku = {r.sku: r for r in records}
    for filters, keep in cases:
        for _ in range(3):
            q = np.abs(rng.normal(size=DIM))
            found = _scan(engine, q, 10, probes=8, **filters)
            # The exact ranking's first products: every product whose nearest photo is among the 4n photos
            # nearest to the query (40n when those hold fewer than n) and passes the filters, at most n.
            order = sorted(((float(1 - v @ q / np.linalg.norm(q)), sku) for sku, vs in photos.items() for v in vs))
            reached = list(dict.fromkeys(sku for _, sku in order[:40] if keep(by_sku[sku])))
            if len(reached) < 10:
                reached = list(dict.fromkeys(sku for _, sku in order[:400] if keep(by_sku[sku])))
            assert len(found) == min(10, len(reached)) == 10, (filters, found)
            assert found == _exact(photos, records, q, len(found), keep), filters
    # With pgvector's advice (the square root of the lists), most of the exact ones.
    recall = [
        len(set(_scan(engine, q, 10)) & set(_exact(photos, records, q, 10, lambda r: r.in_stock))) / 10
        for q in np.abs(rng.normal(size=(10, DIM)))
    ]
    assert np.mean(recall) >= 0.8, recall
    assert _scan(engine, np.ones(DIM), 10, probes=0) == []  # turned off
    with pytest.raises(sa.exc.DBAPIError, match="scan_probes must be a whole number"):
        _scan(engine, np.ones(DIM), 10, probes="many")  # type: ignore[arg-type]


def test_a_photo_search_whose_walk_misses_the_product_finds_it_through_the_scan(filled) -> None:
    engine, records, photos = filled
    if scan_index.status(engine) is None:
        scan_index.build(engine, lists=8)
    q = photos["p0123"][0] + 0.01
    features = local_features.LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), 10, 10)
    walked = query.search_verified(engine, q, features, 5)
    assert walked[0].sku == "p0123"
    expected = _exact(photos, records, q, 5, lambda r: r.in_stock)
    assert [r.sku for r in walked] == expected
    # A walk that finds nothing (as from a phone photo among many look-alikes): the scan still proposes them.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION imgsearch_verification_candidates(query vector, n integer, "
                "extractor text, categories text[] DEFAULT NULL, in_stock_only boolean DEFAULT true, "
                "max_price numeric DEFAULT NULL, exclude_skus text[] DEFAULT NULL, filters jsonb DEFAULT NULL) "
                "RETURNS TABLE (rank bigint, sku text, name text, category text, price numeric, in_stock boolean, "
                "image text, distance double precision, photo text, width integer, height integer, points bytea, "
                "descriptors bytea) LANGUAGE sql AS 'SELECT NULL::bigint, NULL, NULL, NULL, NULL::numeric, "
                "NULL::boolean, NULL, NULL::float8, NULL, NULL::int, NULL::int, NULL::bytea, NULL::bytea "
                "WHERE false'"
            )
        )
    try:
        found = query.search_verified(engine, q, features, 5)
        assert [r.sku for r in found] == expected
        assert found[0].image == "p0123-0.jpg" and found[0].distance == pytest.approx(walked[0].distance, abs=1e-6)
        scan_index.drop(engine)
        assert query.search_verified(engine, q, features, 5) == []
    finally:
        with engine.begin() as conn:
            from imgsearch import sql

            sql.execute(conn, sql.current("imgsearch_verification_candidates"))
        scan_index.build(engine, lists=8)


def test_ingestion_builds_it_once_the_catalogue_is_large_enough_and_again_after_growth(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan_index, "PHOTOS_PER_LIST", 50)
    records, _ = _catalogue(count=150)  # 200 photos
    catalogue.upsert_products(engine, records[:90])  # 120 photos
    assert scan_index.maintain(engine, min_photos=150) is None
    catalogue.upsert_products(engine, records)
    built = scan_index.maintain(engine, min_photos=150)
    assert built is not None and (built.lists, built.photos) == (4, 200)
    assert scan_index.maintain(engine, min_photos=150) is None  # not grown twofold since
    more, _ = _catalogue(seed=1, count=300)
    catalogue.upsert_products(engine, [ProductRecord(**{**r.__dict__, "sku": "x" + r.sku}) for r in more[:150]])
    rebuilt = scan_index.maintain(engine, min_photos=150)
    assert rebuilt is not None and rebuilt.lists == 8
    with pytest.raises(InvalidQueryError, match="lists must be between"):
        scan_index.build(engine, lists=0)


def test_revision_0021_upgrades_a_populated_catalogue_and_takes_it_back(
    make_database: Callable[..., str],
) -> None:
    engine = db.create_engine(make_database())
    schema.upgrade(engine, "0020")
    records, _ = _catalogue(count=60)
    catalogue.upsert_products(engine, records)
    statement = sa.text(
        "SELECT p.sku, p.price, p.attributes::text, i.image, i.embedding::text FROM products p "
        "JOIN product_images i ON i.product_id = p.id ORDER BY i.id"
    )
    with engine.connect() as conn:
        before = conn.execute(statement).all()
    schema.upgrade(engine)
    scan_index.build(engine, lists=2)
    with engine.connect() as conn:
        assert conn.execute(statement).all() == before
    schema.downgrade(engine, "0020")
    with engine.connect() as conn:
        assert conn.execute(statement).all() == before
        assert conn.execute(sa.text("SELECT to_regproc('imgsearch_scan_candidates')")).scalar() is None
        assert conn.execute(sa.text("SELECT to_regclass('ix_product_images_scan')")).scalar() is None
    schema.upgrade(engine)
    engine.dispose()


def test_the_command_builds_and_drops_it(run, engine: Engine) -> None:
    records, _ = _catalogue(count=30)
    catalogue.upsert_products(engine, records)
    assert re.fullmatch(
        r"scan index: 3 lists over 40 photos \(\d+\.\d KiB\)\n", run("index", "scan", "--lists", "3").output
    )
    assert scan_index.status(engine).lists == 3  # type: ignore[union-attr]
    assert "\nscan index: 3 lists (IVF, for shoppers' photos), " in run("stats").output
    assert json.loads(run("stats", "--format", "json").output)["scan_index"]["lists"] == 3
    assert run("index", "scan", "--drop").output == "dropped the photos' scan index\n"
    assert json.loads(run("stats", "--format", "json").output)["scan_index"] is None
    assert run("index", "scan", "--drop").output == "nothing to drop: there is no scan index\n"
    assert "lists over 40 photos" in run("index", "scan").output  # one list per 1,000 photos, at least one
    assert scan_index.status(engine).lists == 1  # type: ignore[union-attr]
    failed = run("index", "scan", "--lists", "0", expect=2)
    assert "Invalid value for '--lists'" in failed.output
    # Emptying the catalogue (to re-ingest with another model) drops the lists learnt from the old vectors too.
    assert run("db", "reset", "--yes").output == "catalogue emptied\n"
    assert scan_index.status(engine) is None


def test_a_python_ingest_builds_it_once_the_catalogue_is_large_enough(
    database_url: str, fake_weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    def add(category: str) -> None:
        (tmp_path / category).mkdir()
        for photo in sorted((SAMPLE / category).glob("*.jpg"))[:5]:
            shutil.copy(photo, tmp_path / category / photo.name)

    add("dress")
    add("hat")
    with pytest.raises(ConfigurationError, match="IMGSEARCH_SCAN_INDEX_MIN_PHOTOS must be 0 or more, got -1"):
        Settings(scan_index_min_photos=-1)
    with Catalogue(database_url, settings=Settings(weights=fake_weights, scan_index_min_photos=0)) as off:
        said: list[str] = []
        assert off.ingest(tmp_path, warn=said.append).scan_index is None  # 0: never by itself, and nothing to say
        assert off.scan_index_status() is None and said == []
        off.reset()
    with Catalogue(database_url, settings=Settings(weights=fake_weights, scan_index_min_photos=12)) as shop:
        first = shop.ingest(tmp_path)
        assert first.added == 10 and first.scan_index is None and shop.scan_index_status() is None
        add("shoes")
        second = shop.ingest(tmp_path)
        assert second.added == 5 and second.scan_index is not None
        assert "\nscan index: 1 lists over 15 photos (" in output.format_ingest_summary(second)
        assert (second.scan_index.lists, second.scan_index.photos) == (1, 15)
        assert shop.scan_index_status() == second.scan_index
        assert shop.ingest(tmp_path).scan_index is None  # nothing changed: nothing built
        assert shop.ingest(tmp_path, index=False).scan_index is None
        assert shop.drop_scan_index() and shop.scan_index_status() is None

        # A build that fails (a lock not granted in time, say) is a warning: the products are stored.
        def fail(engine: Engine, lists: int | None = None) -> scan_index.ScanIndex:
            raise DatabaseUnavailableError("canceling statement due to lock timeout")

        monkeypatch.setattr(scan_index, "build", fail)
        add("shirt")
        warnings: list[str] = []
        report = shop.ingest(tmp_path, warn=warnings.append)
        assert report.added == 5 and report.scan_index is None and shop.stats().products == 20
        assert warnings == [
            "the photos' scan index not built (canceling statement due to lock timeout); run imgsearch index scan later"
        ]
