"""Near-duplicate listings: planted copies of real photos (re-encoded, resized, cropped, mirrored) listed as other
products at other prices are found, grouped, sorted by price spread, and shown; unrelated products are not."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from pgvector.sqlalchemy import Vector
from PIL import Image, ImageOps

from imgsearch import catalogue, db, duplicates, output
from imgsearch.catalogue import ImageRecord, ProductRecord
from imgsearch.cli import main
from imgsearch.colour import colour_signature
from imgsearch.embedding import Featurizer
from imgsearch.errors import InvalidQueryError

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTOS = sorted(SAMPLE.glob("*/*.jpg"))
# Originals to copy: a dress, a shoe and a hat of the sample photos (indexes into PHOTOS).
ORIGINALS = {"dress": 0, "shoes": 72, "hat": 12}


def _variants(path: Path) -> dict[str, bytes]:
    """What a second listing of the same product often looks like: the same photo, edited."""
    image = Image.open(path).convert("RGB")
    w, h = image.size

    def encoded(im: Image.Image, quality: int = 90) -> bytes:
        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    return {
        "jpeg40": encoded(image, 40),
        "smaller": encoded(image.resize((w * 6 // 10, h * 6 // 10))),
        "cropped": encoded(image.crop((w // 20, h // 20, w - w // 20, h - h // 20))),
        "mirrored": encoded(ImageOps.mirror(image)),
    }


def _recoloured(path: Path) -> bytes:
    """The same photo with red and blue swapped: the same product in another colour, not a duplicate."""
    r, g, b = Image.open(path).convert("RGB").split()
    buffer = io.BytesIO()
    Image.merge("RGB", (b, g, r)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def planted(
    make_database: Callable[..., str], migrated_template: str, sample_vectors: np.ndarray, featurizer: Featurizer
) -> Iterator[tuple[str, dict[str, list[str]]]]:
    """The 120 sample products at 50.00 each, plus 4 edited copies of 3 of them listed as new products at
    other prices. Returns the database URL and, per original SKU, the SKUs of its copies."""
    url = make_database(template=migrated_template)
    engine = db.create_engine(url)
    catalogue.ensure_space(engine, featurizer.space)
    classes = [p.parent.name for p in PHOTOS]
    decode = featurizer.pipeline.preprocessing.decode

    def photo(source: Path | bytes, vector: np.ndarray | None = None) -> tuple[ImageRecord, ...]:
        pixels = decode(source)
        embedding = featurizer.embed_arrays(pixels[np.newaxis])[0] if vector is None else vector
        reference = str(source) if isinstance(source, Path) else ""
        return (ImageRecord(reference, embedding, colour=colour_signature(pixels)),)

    records = [
        ProductRecord(sku=f"{c}-{i}", category=c, price=Decimal("50.00"), images=photo(PHOTOS[i], v))
        for i, (c, v) in enumerate(zip(classes, sample_vectors, strict=True))
    ]
    copies: dict[str, list[str]] = {}
    for category, i in ORIGINALS.items():
        assert classes[i] == category
        original = f"{category}-{i}"
        copies[original] = []
        for n, (kind, data) in enumerate(_variants(PHOTOS[i]).items()):
            sku = f"copy-{kind}-{original}"
            price = Decimal("50.00") - Decimal(10 * (n + 1)) if category != "hat" else Decimal("50.00")
            in_stock = kind != "mirrored"
            records.append(
                ProductRecord(sku=sku, category=category, images=photo(data), price=price, in_stock=in_stock)
            )
            copies[original].append(sku)
        # The same product in another colour, cheaper: alike to VGG16, but not a duplicate listing.
        records.append(
            ProductRecord(sku=f"blue-{original}", category=category, images=photo(_recoloured(PHOTOS[i])), price=5)
        )
    catalogue.upsert_products(engine, records)
    engine.dispose()
    yield url, copies


def test_planted_copies_are_grouped_by_price_spread(planted: tuple[str, dict[str, list[str]]]) -> None:
    url, copies = planted
    engine = db.create_engine(url)
    groups = duplicates.find_duplicate_groups(engine)
    found = [{item.sku for item in group.listings} for group in groups]
    for original, skus in copies.items():
        assert {original, *skus} in found, (original, found)  # every copy, and nothing else, in one group
    assert len(groups) == len(copies)  # no unrelated sample photos grouped, no colour variant
    # What the colour check is for: VGG16 alone would take the recoloured photos for duplicates.
    alone = duplicates.find_duplicate_groups(engine, duplicates.DEFAULT_MAX_DISTANCE, max_colour_distance=2.0)
    assert any(sku.startswith("blue-") for group in alone for sku in (item.sku for item in group.listings))
    # The biggest price spread first: the dress and the shoe (50.00 down to 10.00), then the hat (no spread).
    assert [g.spread for g in groups] == [Decimal("40.00"), Decimal("40.00"), Decimal("0.00")]
    assert all(g.listings[0].price <= g.listings[-1].price for g in groups)  # cheapest first
    assert all(g.max_distance <= duplicates.DEFAULT_MAX_DISTANCE for g in groups)
    # Only the categories asked for; only the groups with a price gap.
    assert [len(g.listings) for g in duplicates.find_duplicate_groups(engine, categories=["hat"])] == [5]
    assert len(duplicates.find_duplicate_groups(engine, min_price_gap="30")) == 2
    engine.dispose()


def test_pairs_come_from_the_photo_index(planted: tuple[str, dict[str, list[str]]]) -> None:
    url, _ = planted
    engine = db.create_engine(url)
    scans = sa.text("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'ix_product_images_embedding'")
    with engine.connect() as conn:
        before = conn.execute(scans).scalar_one()
    pairs = duplicates.near_duplicate_pairs(engine)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
    with engine.connect() as conn:
        after = conn.execute(scans).scalar_one()
    assert after - before >= 120  # a k-NN walk per photo, not a join of every photo with every other
    # Exactly the pairs an exhaustive comparison finds (in NumPy, from the stored vectors and colours).
    statement = sa.text(
        "SELECT p.sku, p.category, i.embedding, i.colour FROM products p JOIN product_images i ON i.product_id = p.id "
        "ORDER BY p.sku"
    ).columns(embedding=Vector(512), colour=Vector(44))
    with engine.connect() as conn:
        rows = conn.execute(statement).all()
    exact = {
        (a.sku, b.sku)
        for i, a in enumerate(rows)
        for b in rows[i + 1 :]
        if a.category == b.category
        and 1 - float(np.dot(a.embedding, b.embedding)) <= duplicates.DEFAULT_MAX_DISTANCE
        and float(np.linalg.norm(np.subtract(a.colour, b.colour))) <= duplicates.DEFAULT_MAX_COLOUR_DISTANCE
    }
    assert {tuple(sorted((p.sku_a, p.sku_b))) for p in pairs} == exact
    assert all(p.distance <= duplicates.DEFAULT_MAX_DISTANCE for p in pairs)
    assert [p.distance for p in pairs] == sorted(p.distance for p in pairs)
    with pytest.raises(InvalidQueryError, match="max_distance"):
        duplicates.near_duplicate_pairs(engine, 3.0)
    engine.dispose()


def _cli(url: str, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--database-url", url, "duplicates", *args])
    assert result.exit_code == 0, result.output
    return result


def test_the_command(planted: tuple[str, dict[str, list[str]]], tmp_path: Path) -> None:
    url, _ = planted
    table = _cli(url).stdout
    assert table.startswith("group 1: 5 products, price spread 40.00")
    assert "SOLD OUT" in table  # the mirrored copies are sold out, and shown as such
    groups = json.loads(_cli(url, "--format", "json").stdout)
    assert [g["group"] for g in groups] == [1, 2, 3] and groups[0]["spread"] == 40.0
    assert list(groups[0]["products"][0]) == ["sku", "name", "category", "price", "in_stock", "image"]
    rows = list(csv.DictReader(io.StringIO(_cli(url, "--format", "csv").stdout)))
    assert tuple(rows[0]) == output.DUPLICATE_FIELDS and len(rows) == 15
    sheet = tmp_path / "dups.png"
    result = _cli(url, "--category", "shoes", "--sheet", str(sheet))
    assert f"contact sheet: {sheet}" in result.stderr
    with Image.open(sheet) as image:
        assert image.size == (4 * 224 + 5 * 10, 2 * 280 + 3 * 10)  # one group of 5: a row of 4 and one more
    nothing = CliRunner().invoke(main, ["--database-url", url, "duplicates", "--max-distance", "0.0001"])
    assert nothing.exit_code == 0 and nothing.stdout == "" and "no near-duplicate products found" in nothing.stderr
