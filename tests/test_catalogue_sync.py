"""The catalogue real shops have: several photos per product (folders, repeated manifest rows, an images column),
photos on a web server (URLs, fetched with care and skipped when unchanged), and full syncs (prune)."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, ingest, query, schema
from imgsearch.catalogue import ImageRecord, ProductRecord
from imgsearch.cli import main
from imgsearch.embedding import Featurizer
from imgsearch.errors import InvalidQueryError, SchemaError
from imgsearch.fetch import Fetcher
from tests.vectors import PHOTO_CLASSES, mixes

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
# Distinct products of one kind, not clumps of near-copies: HNSW graphs over tight clumps can strand a walk in the
# wrong clump, which no ef_search setting repairs (docs/filtered-search.md).
PRODUCT_SPREAD = 0.4
PHOTOS = {c: sorted((SAMPLE / c).glob("*.jpg")) for c in ("dress", "shoes", "hat", "skirt")}


def counts(result: Result) -> dict[str, int]:
    match = re.search(r"added (\d+), updated (\d+), unchanged (\d+), failed (\d+) \((\d+) images", result.stdout)
    assert match, result.output
    return dict(zip(["added", "updated", "unchanged", "failed", "embedded"], map(int, match.groups()), strict=True))


# --- several photos per product -------------------------------------------------------------------------------


def test_a_folder_of_product_folders(run: Callable[..., Result], engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "shop"
    (root / "dress" / "b").mkdir(parents=True)
    (root / "dress" / "c").mkdir()
    shutil.copy(PHOTOS["dress"][0], root / "dress" / "a.jpg")  # one photo: dress/a
    shutil.copy(PHOTOS["dress"][1], root / "dress" / "b" / "1-front.jpg")  # a folder of photos: dress/b
    shutil.copy(PHOTOS["dress"][2], root / "dress" / "b" / "2-back.jpg")
    shutil.copy(PHOTOS["dress"][3], root / "dress" / "c.jpg")  # dress/c twice: a file and a folder
    shutil.copy(PHOTOS["dress"][4], root / "dress" / "c" / "x.jpg")
    result = run("ingest", "--quiet", str(root), expect=1)
    assert counts(result)["added"] == 2 and counts(result)["embedded"] == 3
    assert result.stderr.count("failed: dress/c ") == 2 and "2 files give this SKU" in result.stderr
    product = catalogue.get_product(engine, "dress/b")
    assert product is not None
    assert product.images == (str(root / "dress" / "b" / "1-front.jpg"), str(root / "dress" / "b" / "2-back.jpg"))

    # Every photo got its colour signature at ingestion (for the near-duplicate report).
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT bool_and(colour IS NOT NULL) FROM product_images")).scalar_one()

    # Searching with the back photo finds dress/b once, by that photo, at distance 0.
    back = catalogue.get_photo_vectors(engine, "dress/b")[1]
    results = query.search(engine, back, 5)
    assert [r.sku for r in results] == ["dress/b", "dress/a"]
    assert results[0].image == product.images[1] and results[0].distance < 1e-5


def test_photos_stored_without_a_colour_get_one_without_being_embedded_again(
    run: Callable[..., Result], engine: Engine, tmp_path: Path
) -> None:
    # Photos moved over from a catalogue made before colour signatures existed have none.
    root = tmp_path / "shop"
    (root / "hat").mkdir(parents=True)
    for photo in PHOTOS["hat"][:3]:
        shutil.copy(photo, root / "hat" / photo.name)
    run("ingest", "--quiet", str(root))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE product_images SET colour = NULL"))
    again = run("ingest", "--quiet", str(root))
    assert counts(again)["embedded"] == 0 and counts(again)["updated"] == 3
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM product_images WHERE colour IS NOT NULL")).scalar_one() == 3


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sku", "name", "category", "price", "in_stock", "image", "images"])
        writer.writeheader()
        writer.writerows(rows)


def test_photos_from_repeated_rows_and_an_images_column(
    run: Callable[..., Result], engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    names = []
    for i, photo in enumerate(PHOTOS["shoes"][:4]):
        shutil.copy(photo, folder / f"{i}.jpg")
        names.append(f"photos/{i}.jpg")
    manifest = tmp_path / "feed.csv"
    base = {"name": "Boot", "category": "shoes", "price": "59.00", "in_stock": "yes"}
    rows = [
        {**base, "sku": "boot", "image": names[0], "images": ""},
        {**base, "sku": "boot", "image": "", "images": f"{names[1]}|{names[2]}"},
        {**base, "sku": "sandal", "name": "Sandal", "image": names[3], "images": ""},
    ]
    _write_manifest(manifest, rows)
    first = run("ingest", "--quiet", "--manifest", str(manifest))
    assert counts(first) == {"added": 2, "updated": 0, "unchanged": 0, "failed": 0, "embedded": 4}
    assert catalogue.get_product(engine, "boot").images == tuple(str(tmp_path / n) for n in names[:3])

    # Unchanged: nothing embedded. Another order: positions change, nothing embedded.
    assert counts(run("ingest", "--quiet", "--manifest", str(manifest)))["embedded"] == 0
    rows[1]["images"] = f"{names[2]}|{names[1]}"
    _write_manifest(manifest, rows)
    reordered = run("ingest", "--quiet", "--manifest", str(manifest))
    assert counts(reordered) == {"added": 0, "updated": 1, "unchanged": 1, "failed": 0, "embedded": 0}
    assert catalogue.get_product(engine, "boot").images[1] == str(tmp_path / names[2])

    # One file replaced: only that photo is embedded again.
    before = catalogue.get_photo_vectors(engine, "boot")
    shutil.copy(PHOTOS["hat"][0], folder / "0.jpg")
    changed = run("ingest", "--quiet", "--manifest", str(manifest))
    assert counts(changed)["embedded"] == 1
    after = catalogue.get_photo_vectors(engine, "boot")
    assert not np.allclose(before[0], after[0]) and np.allclose(before[1:], after[1:])

    # A photo that left the feed is kept unless --prune-images says otherwise: never removed silently.
    rows[1]["images"] = names[1]
    _write_manifest(manifest, rows)
    kept = run("ingest", "--quiet", "--manifest", str(manifest))
    assert "pruned" not in kept.stdout and len(catalogue.get_product(engine, "boot").images) == 3
    pruned = run("ingest", "--quiet", "--prune-images", "--manifest", str(manifest))
    assert "pruned 1 photo no longer listed" in pruned.stdout
    assert catalogue.get_product(engine, "boot").images == (str(tmp_path / names[0]), str(tmp_path / names[1]))


@pytest.fixture(scope="module")
def many_photos(
    make_database: Callable[..., str], migrated_template: str, sample_vectors: np.ndarray
) -> Iterator[tuple[Engine, list[ProductRecord]]]:
    """2,400 products of 1 to 4 photos each (mixes of the sample photos' real vectors), 3 categories, 80% in
    stock: enough for the photo index to be walked."""
    engine = db.create_engine(make_database(template=migrated_template))
    rng = np.random.default_rng(12)
    records = []
    for i in range(2400):
        category = ("dress", "shoes", "hat")[i % 3]
        real = sample_vectors[np.equal(PHOTO_CLASSES, category)]
        photos = mixes(real, int(rng.integers(1, 5)), rng, noise=PRODUCT_SPREAD)
        records.append(
            ProductRecord(
                sku=f"p{i:04d}",
                category=category,
                price=Decimal(int(rng.integers(5, 200))),
                in_stock=bool(rng.random() < 0.8),
                images=tuple(ImageRecord(f"https://cdn.example/p{i}/{j}.jpg", v) for j, v in enumerate(photos)),
            )
        )
    catalogue.upsert_products(engine, records)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE products"))
        conn.execute(sa.text("ANALYZE product_images"))
    yield engine, records
    engine.dispose()


def _exact(records: list[ProductRecord], queries: np.ndarray, k: int, keep: Callable[[ProductRecord], bool]) -> list:
    """The k best products by their closest photo to any query, in NumPy."""
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scored = []
    for r in records:
        if keep(r):
            photos = np.stack([p.embedding for p in r.images])
            photos = photos / np.linalg.norm(photos, axis=1, keepdims=True)
            distances = 1 - unit @ photos.T
            best = np.unravel_index(np.argmin(distances), distances.shape)
            scored.append((float(distances[best]), r.sku, r.images[best[1]].image))
    return sorted(scored)[:k]


@pytest.mark.parametrize("categories", [None, ["hat"]])
def test_one_row_per_product_exactly_k_and_the_matching_photo(
    many_photos: tuple[Engine, list[ProductRecord]], sample_vectors: np.ndarray, categories: list[str] | None
) -> None:
    engine, records = many_photos
    rng = np.random.default_rng(3)
    # Photos of the kinds the shop sells (docs/filtered-search.md measures queries from elsewhere).
    real = sample_vectors[np.isin(PHOTO_CLASSES, ["dress", "shoes", "hat"])]
    recalls = []
    with engine.connect() as conn:
        conn.execute(sa.text("SET imgsearch.exact_search_below = 0"))  # the photo index, even for small filters
        for q in mixes(real, 20, rng):
            got = query.search(conn, q, 10, categories=categories)
            keep = lambda r: r.in_stock and (categories is None or r.category in categories)  # noqa: E731
            want = _exact(records, q[np.newaxis], 10, keep)
            assert len(got) == 10 and len({r.sku for r in got}) == 10  # exactly k, one row per product
            recalls.append(len({r.sku for r in got} & {sku for _, sku, _ in want}) / 10)
            by_sku = {sku: (d, image) for d, sku, image in _exact(records, q[np.newaxis], 2400, keep)}
            for r in got:  # each row: the product's best photo, at its exact distance
                assert r.image == by_sku[r.sku][1] and abs(r.distance - by_sku[r.sku][0]) < 1e-5
        conn.rollback()
    assert np.mean(recalls) >= 0.95


def test_similar_to_a_product_uses_all_its_photos(many_photos: tuple[Engine, list[ProductRecord]]) -> None:
    engine, records = many_photos
    target = next(r for r in records if len(r.images) == 4)
    got = query.similar_to_sku(engine, target.sku, 10)
    photos = np.stack([p.embedding for p in target.images])
    want = _exact(records, photos, 10, lambda r: r.in_stock and r.sku != target.sku)
    assert len(set(r.sku for r in got) & {sku for _, sku, _ in want}) >= 9
    assert target.sku not in {r.sku for r in got}
    # The same search from Python with the photos' vectors: the same answer.
    assert query.search(engine, photos, 10, exclude_skus=[target.sku]) == got
    with pytest.raises(InvalidQueryError, match="give 1 to 100 query vectors"):
        query.search(engine, np.ones((101, 512)), 10)


def test_downgrade_refuses_products_with_several_photos(
    engine: Engine, database_url: str, sample_vectors: np.ndarray
) -> None:
    photos = tuple(ImageRecord(f"/p/{i}.jpg", v) for i, v in enumerate(sample_vectors[:2]))
    catalogue.upsert_products(engine, [ProductRecord(sku="two", category="c", images=photos)])
    message = "1 products have several photos; the older schema holds one per product"
    with pytest.raises(SchemaError, match=message):
        schema.downgrade(engine, "0004")
    result = CliRunner().invoke(main, ["--database-url", database_url, "db", "downgrade", "0004", "--yes"])
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {message}") and "Traceback" not in result.output
    assert schema.current_revision(engine) == schema.head_revision()
    catalogue.upsert_products(engine, [ProductRecord(sku="two", category="c", images=photos[:1])], prune_images=True)
    schema.downgrade(engine, "0004")
    with engine.connect() as conn:
        image, sku = conn.execute(sa.text("SELECT image, sku FROM products")).one()
    assert (image, sku) == ("/p/0.jpg", "two")
    schema.upgrade(engine)
    assert catalogue.get_product(engine, "two").images == ("/p/0.jpg",)


# --- photos on a web server ------------------------------------------------------------------------------------


class _Photos(BaseHTTPRequestHandler):
    """Serves the sample photos by name, with ETags, and a few misbehaving paths; counts what it is asked."""

    files: ClassVar[dict[str, bytes]] = {}
    downloads: ClassVar[list[str]] = []
    not_modified: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        if name == "slow.jpg":
            time.sleep(2)
        if name == "moved.jpg":
            self.send_response(302)
            self.send_header("Location", "/0.jpg")
            self.end_headers()
            return
        if name == "huge.jpg":  # over the downloader's size cap
            self._send(b"\xff" * 3_000_000, "image/jpeg")
            return
        if name == "page.jpg":  # a web page where a photo should be: the decoder refuses it
            self._send(b"<html><body>Sorry, this product is no longer available</body></html>", "text/html")
            return
        if name == "short.jpg":  # promises more than it sends
            data = self.files["0.jpg"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        if name not in self.files:
            self.send_error(404)
            return
        data = self.files[name]
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.not_modified.append(name)
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.downloads.append(name)
        self._send(data, "image/jpeg", etag)

    def _send(self, data: bytes, kind: str, etag: str | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def cdn() -> Iterator[str]:
    _Photos.files = {f"{i}.jpg": p.read_bytes() for i, p in enumerate(PHOTOS["skirt"][:3])}
    _Photos.downloads, _Photos.not_modified = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Photos)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_photos_from_urls(engine: Engine, fake_featurizer: Featurizer, cdn: str) -> None:
    entries = [
        ingest.CatalogueEntry("a", "skirt", (f"{cdn}/0.jpg", f"{cdn}/1.jpg")),
        ingest.CatalogueEntry("b", "skirt", (f"{cdn}/moved.jpg",)),  # redirected to 0.jpg
        ingest.CatalogueEntry("c", "skirt", (f"{cdn}/2.jpg", f"{cdn}/missing.jpg")),  # one photo of two
        ingest.CatalogueEntry("d", "skirt", (f"{cdn}/slow.jpg",)),
        ingest.CatalogueEntry("e", "skirt", (f"{cdn}/page.jpg",)),
        ingest.CatalogueEntry("f", "skirt", (f"{cdn}/short.jpg",)),
        ingest.CatalogueEntry("g", "skirt", (f"{cdn}/huge.jpg",)),
    ]
    fetcher = Fetcher(timeout=0.5, retries=1, backoff=0.01, max_bytes=2_000_000)
    report = ingest.ingest(engine, entries, fake_featurizer, fetcher=fetcher)
    failures = {(f.sku, f.source.rsplit("/", 1)[-1]): f.reason for f in report.failures}
    assert set(failures) == {
        ("c", "missing.jpg"),
        ("d", "slow.jpg"),
        ("e", "page.jpg"),
        ("f", "short.jpg"),
        ("g", "huge.jpg"),
    }
    assert "too large" in failures["g", "huge.jpg"]
    assert "404" in failures["c", "missing.jpg"] and "time" in failures["d", "slow.jpg"]
    assert "not an image" in failures["e", "page.jpg"]
    assert (report.added, report.embedded) == (3, 4)
    product = catalogue.get_product(engine, "a")
    assert product is not None and product.images == (f"{cdn}/0.jpg", f"{cdn}/1.jpg")  # URLs stored as given
    assert np.allclose(catalogue.get_photo_vectors(engine, "b"), catalogue.get_photo_vectors(engine, "a")[:1])

    # Again: the server answers 304 for every photo it has; nothing is downloaded or embedded.
    _Photos.downloads.clear()
    again = ingest.ingest(engine, entries[:3], fake_featurizer, fetcher=fetcher)
    assert (again.embedded, again.unchanged) == (0, 3) and _Photos.downloads == []
    assert sorted(_Photos.not_modified) == ["0.jpg", "0.jpg", "1.jpg", "2.jpg"]
    # A photo replaced on the server: downloaded and embedded again, the others not.
    _Photos.files["1.jpg"] = PHOTOS["hat"][0].read_bytes()
    changed = ingest.ingest(engine, entries[:1], fake_featurizer, fetcher=fetcher)
    assert changed.embedded == 1 and _Photos.downloads == ["1.jpg"]
    fetcher.close()


def test_a_manifest_of_urls_through_the_command_line(
    run: Callable[..., Result], engine: Engine, tmp_path: Path, cdn: str
) -> None:
    manifest = tmp_path / "feed.csv"
    _write_manifest(
        manifest,
        [
            {
                "sku": "u",
                "name": "U",
                "category": "skirt",
                "price": "1",
                "in_stock": "1",
                "image": f"{cdn}/0.jpg",
                "images": f"{cdn}/1.jpg",
            }
        ],
    )
    assert counts(run("ingest", "--quiet", "--manifest", str(manifest)))["embedded"] == 2
    assert counts(run("ingest", "--quiet", "--manifest", str(manifest)))["embedded"] == 0


# --- full syncs ------------------------------------------------------------------------------------------------


def test_prune_makes_the_catalogue_equal_to_the_feed(
    run: Callable[..., Result], engine: Engine, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = []
    for i, photo in enumerate(PHOTOS["hat"][:10]):
        shutil.copy(photo, photos / f"{i}.jpg")
        rows.append(
            {
                "sku": f"h{i}",
                "name": f"Hat {i}",
                "category": "hat",
                "price": "10",
                "in_stock": "1",
                "image": f"photos/{i}.jpg",
                "images": "",
            }
        )
    feed = tmp_path / "feed.csv"
    _write_manifest(feed, rows)
    run("ingest", "--quiet", "--manifest", str(feed))

    _write_manifest(feed, rows[:9])  # h9 left the feed: sold out
    sold_out = run("ingest", "--quiet", "--manifest", str(feed), "--prune=sold-out")
    assert "marked sold out 1 of 10 products missing from the source" in sold_out.stdout
    assert catalogue.get_product(engine, "h9").in_stock is False
    _write_manifest(feed, rows[:8])  # h8 and h9 left: removed
    removed = run("ingest", "--quiet", "--manifest", str(feed), "--prune")
    assert "removed 2 of 10 products missing from the source" in removed.stdout
    assert catalogue.get_product(engine, "h8") is None and catalogue.stats(engine).products == 8

    _write_manifest(feed, rows[:2])  # a truncated feed: 6 of 8 products would go
    refused = run("ingest", "--quiet", "--manifest", str(feed), "--prune", expect=1)
    assert refused.stderr == (
        "Error: the feed would remove 6 of 8 products (75%), more than the 20% allowed: a truncated feed? Check it, "
        "or force it: nothing was changed (--force to prune anyway)\n"
    )
    assert catalogue.stats(engine).products == 8
    assert run("ingest", "--quiet", "--manifest", str(feed), "--prune", "--max-prune-share", "0.8").exit_code == 0
    assert catalogue.stats(engine).products == 2
    _write_manifest(feed, rows[:1])
    forced = run("ingest", "--quiet", "--manifest", str(feed), "--prune", "--force")
    assert "removed 1 of 2" in forced.stdout and catalogue.stats(engine).products == 1
