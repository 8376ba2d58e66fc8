"""Catalogue ingestion through the CLI and the library: real images, real VGG16 weights, real PostgreSQL."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from PIL import Image
from sqlalchemy.engine import Engine

from imgsearch import catalogue, ingest, query
from imgsearch.cli import main
from imgsearch.embedding import Featurizer

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CATALOGUE = REPO / "examples" / "catalogue"

Invoke = Callable[..., Result]


@pytest.fixture
def invoke(database_url: str, fake_weights: str) -> Invoke:
    """Run the CLI in-process against the test's fresh database."""

    def run(*args: str, expect: int | None = 0) -> Result:
        result = CliRunner().invoke(main, ["--database-url", database_url, "--weights", fake_weights, *args])
        if expect is not None:
            assert result.exit_code == expect, result.output
        return result

    return run


def summary(result: Result) -> dict[str, int]:
    match = re.search(
        r"added (\d+), updated (\d+), unchanged (\d+), failed (\d+) \((\d+) images embedded", result.stdout
    )
    assert match, result.output
    return dict(zip(["added", "updated", "unchanged", "failed", "embedded"], map(int, match.groups()), strict=True))


def _copy_sample(dst: Path, per_category: int = 2, categories: tuple[str, ...] = ("dress", "shoes", "hat")) -> Path:
    for category in categories:
        (dst / category).mkdir(parents=True)
        for image in sorted((SAMPLE_CATALOGUE / category).glob("*.jpg"))[:per_category]:
            shutil.copy(image, dst / category / image.name)
    return dst


def test_ingest_sample_folder_then_rerun_embeds_nothing(invoke: Invoke, engine: Engine) -> None:
    first = invoke("ingest", "--quiet", str(SAMPLE_CATALOGUE))
    assert summary(first) == {"added": 120, "updated": 0, "unchanged": 0, "failed": 0, "embedded": 120}

    stats = catalogue.stats(engine)
    assert stats.products == 120 and stats.in_stock == 120
    assert stats.by_category == {c.name: (12, 12) for c in SAMPLE_CATALOGUE.iterdir() if c.is_dir()}
    assert stats.space is not None and stats.space.dimension == 512

    # Every product's nearest neighbour is itself, at distance ~0.
    with engine.connect() as conn:
        skus = conn.execute(sa.text("SELECT sku FROM products ORDER BY sku")).scalars().all()
    for sku in skus[::6]:
        vector = catalogue.get_embedding(engine, sku)
        assert vector is not None and abs(np.linalg.norm(vector) - 1) < 1e-4
        best = query.search(engine, vector, 1)[0]
        assert best.sku == sku and best.distance < 1e-5
    product = catalogue.get_product(engine, "shoes/" + sorted((SAMPLE_CATALOGUE / "shoes").glob("*.jpg"))[0].stem)
    assert product is not None and product.category == "shoes" and product.image_sha256

    second = invoke("ingest", "--quiet", str(SAMPLE_CATALOGUE))
    assert summary(second) == {"added": 0, "updated": 0, "unchanged": 120, "failed": 0, "embedded": 0}


def test_manifest_ingest_updates_metadata_and_reembeds_changed_images(
    invoke: Invoke, engine: Engine, tmp_path: Path
) -> None:
    folder = _copy_sample(tmp_path / "imgs")
    images = sorted(folder.rglob("*.jpg"))
    manifest = tmp_path / "products.csv"

    def write(rows: list[dict[str, str]]) -> None:
        with manifest.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["sku", "name", "category", "price", "in_stock", "image", "colour"])
            writer.writeheader()
            writer.writerows(rows)

    rows = [
        {
            "sku": f"SKU-{i}",
            "name": f"Item {i}",
            "category": p.parent.name,
            "price": f"{10 + i}.50",
            "in_stock": "yes",
            "image": str(p.relative_to(tmp_path)) if i % 2 else str(p),  # relative and absolute paths
            "colour": "red",
        }
        for i, p in enumerate(images)
    ]
    write(rows)
    first = invoke("ingest", "--quiet", "--manifest", str(manifest))
    assert summary(first)["added"] == len(images)
    assert "colour" not in first.stderr  # an extra column is an attribute, not a warning
    assert catalogue.get_product(engine, "SKU-1").attributes == {"colour": "red"}
    assert catalogue.get_product(engine, "SKU-1").price == pytest.approx(11.5)

    # Metadata change only: updated, nothing embedded.
    rows[0]["price"] = "5"
    rows[1]["in_stock"] = "false"
    write(rows)
    second = invoke("ingest", "--quiet", "--manifest", str(manifest))
    assert summary(second) == {"added": 0, "updated": 2, "unchanged": len(images) - 2, "failed": 0, "embedded": 0}
    assert not catalogue.get_product(engine, "SKU-1").in_stock

    # A changed image is embedded again and its vector replaced.
    before = catalogue.get_embedding(engine, "SKU-2")
    shutil.copy(images[-1], images[2])
    third = invoke("ingest", "--quiet", "--manifest", str(manifest))
    assert summary(third) == {"added": 0, "updated": 1, "unchanged": len(images) - 1, "failed": 0, "embedded": 1}
    after = catalogue.get_embedding(engine, "SKU-2")
    assert before is not None and after is not None and not np.allclose(before, after)


def _hostile_folder(root: Path) -> dict[str, str]:
    """Good photos plus every kind of bad file a catalogue folder can hold; returns bad sku -> expected reason."""
    _copy_sample(root, per_category=2, categories=("dress", "shoes"))
    good = sorted((root / "dress").glob("*.jpg"))[0].read_bytes()
    (root / "dress" / "empty.jpg").write_bytes(b"")
    (root / "dress" / "text.jpg").write_text("this is not a picture")
    (root / "dress" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "dress" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50)
    Image.new("1", (15000, 15000)).save(root / "shoes" / "bomb.png")  # 225 Mpixel: over Pillow's safety limit
    (root / "shoes" / "notes.txt").write_text("supplier notes")
    (root / "stray.jpg").write_bytes(good)
    (root / ".DS_Store").write_bytes(b"junk")
    return {
        "dress/empty": "empty",
        "dress/text": "not an image|cannot identify",
        "dress/truncated": "truncated|corrupt",
        "dress/corrupt": "corrupt|cannot identify|not an image",
        "shoes/bomb": "too large|decompression|pixels",
        "shoes/notes": "not a supported image type",
    }


def test_hostile_files_are_reported_and_the_rest_ingested(invoke: Invoke, engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "catalogue"
    expected = _hostile_folder(root)
    errors = tmp_path / "errors.csv"
    result = invoke("ingest", "--quiet", "--errors", str(errors), str(root), expect=1)
    counts = summary(result)
    assert counts["added"] == 4 and counts["failed"] == len(expected) + 1  # + the stray file outside a category

    with errors.open() as fh:
        reported = {row["sku"] or row["source"]: row["reason"] for row in csv.DictReader(fh)}
    for sku, reason in expected.items():
        assert re.search(reason, reported[sku], re.IGNORECASE), (sku, reported[sku])
        assert sku in result.stderr
    assert any("not inside a category folder" in r for r in reported.values())
    assert catalogue.stats(engine).products == 4


def test_bad_manifest_rows_are_reported(invoke: Invoke, engine: Engine, tmp_path: Path) -> None:
    folder = _copy_sample(tmp_path / "imgs", per_category=1, categories=("dress",))
    image = next(folder.rglob("*.jpg")).relative_to(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "sku,name,category,price,in_stock,image\n"
        f"OK-1,Fine,dress,12.50,true,{image}\n"
        f",No sku,dress,1,true,{image}\n"
        f"NOCAT,No category,,1,true,{image}\n"
        f"BADPRICE,Bad price,dress,twelve,true,{image}\n"
        f"NEGPRICE,Negative,dress,-3,true,{image}\n"
        f"BADSTOCK,Bad stock,dress,1,maybe,{image}\n"
        f"DUP,First,dress,1,true,{image}\n"
        f"DUP,Second,dress,2,true,{image}\n"
        "MISSING,Missing file,dress,1,true,imgs/nope.jpg\n"
    )
    errors = tmp_path / "errors.csv"
    result = invoke("ingest", "--quiet", "--manifest", str(manifest), "--errors", str(errors), expect=1)
    assert summary(result)["added"] == 2 and summary(result)["failed"] == 7
    with errors.open() as fh:
        reasons = [(row["sku"], row["reason"]) for row in csv.DictReader(fh)]
    text = "\n".join(f"{s}: {r}" for s, r in reasons)
    for needle in (
        "missing sku",
        "NOCAT: missing category",
        "BADPRICE: price must be a number",
        "NEGPRICE: price must be between",
        "BADSTOCK: in_stock must be",
        "DUP: the rows of this SKU disagree: name Second here, First at",
        "MISSING: ",
    ):
        assert needle in text, text
    assert [p.sku for p in [catalogue.get_product(engine, "OK-1")] if p] == ["OK-1"]


def test_unusable_manifest_is_one_clear_error(invoke: Invoke, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("sku,name,price\nA,B,1\n")
    result = invoke("ingest", "--manifest", str(manifest), expect=1)
    assert "missing required columns: category, image" in result.stderr
    assert "Traceback" not in result.output


def test_interrupted_ingest_resumes_without_reembedding(
    engine: Engine, fake_featurizer: Featurizer, tmp_path: Path
) -> None:
    folder = _copy_sample(tmp_path / "c", per_category=4, categories=("dress", "shoes", "hat"))

    def stop_after_two(progress: ingest.Progress) -> None:
        if progress.done == 8:  # two batches of four committed (progress also comes photo by photo)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest.ingest(engine, ingest.scan_folder(folder), fake_featurizer, commit_every=4, progress=stop_after_two)
    assert catalogue.stats(engine).products == 8  # two committed batches survive

    report = ingest.ingest(engine, ingest.scan_folder(folder), fake_featurizer, commit_every=4)
    assert (report.added, report.unchanged, report.embedded, report.failed) == (4, 8, 4, 0)


def test_progress_counts_photos_as_they_are_embedded_and_never_passes_its_totals(
    engine: Engine, fake_featurizer: Featurizer, tmp_path: Path
) -> None:
    # A manifest of 6 products with 9 photos, one unreadable photo and one row the reader refuses (counted in
    # neither total): progress moves with every photo embedded, not once per batch, and ends exactly at its totals.
    from imgsearch import Catalogue

    folder = _copy_sample(tmp_path / "c", per_category=3, categories=("dress", "shoes"))
    photos = sorted(folder.glob("*/*.jpg"))
    (folder / "broken.jpg").write_bytes(b"not an image")
    rows = ["sku,name,category,price,in_stock,images"]
    rows += [f"p{i},P{i},{p.parent.name},10,true,{p}" for i, p in enumerate(photos[:3])]
    rows += [f"q{i},Q{i},{p.parent.name},10,true,{p}|{photos[i - 1]}" for i, p in enumerate(photos[3:5])]
    rows += [f"r0,R0,dress,10,true,{photos[5]}|{folder / 'broken.jpg'}", "bad,,,oops,maybe,"]
    manifest = _write(tmp_path / "feed.csv", "\n".join(rows) + "\n")
    events: list[ingest.Progress] = []
    shop = Catalogue(engine, featurizer=fake_featurizer)
    report = shop.ingest(manifest, commit_every=2, progress=events.append, index=False)
    assert report.added == 6 and report.failed == 2  # the refused row and the broken photo
    last = events[-1]
    assert (last.done, last.total, last.photos, last.total_photos) == (6, 6, 9, 9)
    assert all(e.done <= e.total and e.photos <= e.total_photos for e in events)  # type: ignore[operator]
    assert [e.photos for e in events] == sorted(e.photos for e in events)
    assert len([e for e in events if e.done < 6]) >= 4  # within batches too: more events than the 3 batches
    again: list[ingest.Progress] = []
    shop.ingest(manifest, commit_every=2, progress=again.append, index=False)  # nothing embedded: still counted
    assert (again[-1].photos, again[-1].total_photos, again[-1].embedded) == (9, 9, 0)
    url = engine.url.render_as_string(hide_password=False)
    logged = CliRunner().invoke(
        main, ["--database-url", url, "--weights", "fake", "ingest", "--manifest", str(manifest)]
    )
    assert logged.stderr.splitlines()[0].startswith("9/9 photos (6/6 products)"), logged.stderr


def test_embedding_space_mismatch_is_refused(invoke: Invoke, engine: Engine, tmp_path: Path) -> None:
    folder = _copy_sample(tmp_path / "c", per_category=1, categories=("dress",))
    invoke("ingest", "--quiet", str(folder))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE embedding_space SET preprocessing_version = 'v0-old'"))
    result = invoke("ingest", "--quiet", str(folder), expect=1)
    assert "different embedding space" in result.stderr and "re-ingest" in result.stderr
    invoke("db", "reset", "--yes")
    assert summary(invoke("ingest", "--quiet", str(folder)))["added"] == 1


def test_stock_remove_and_stats_commands(invoke: Invoke, engine: Engine, tmp_path: Path) -> None:
    folder = _copy_sample(tmp_path / "c", per_category=2, categories=("dress", "shoes"))
    invoke("ingest", "--quiet", str(folder))
    skus = sorted(p.sku for p in [catalogue.get_product(engine, s) for s in _skus(folder)] if p)
    assert len(skus) == 4

    assert "1 product changed" in invoke("stock", "--out", skus[0]).stdout
    assert not catalogue.get_product(engine, skus[0]).in_stock
    stock_csv = tmp_path / "stock.csv"
    stock_csv.write_text(f"sku,in_stock\n{skus[0]},true\n{skus[1]},false\n")
    invoke("stock", "--csv", str(stock_csv))
    assert catalogue.get_product(engine, skus[0]).in_stock and not catalogue.get_product(engine, skus[1]).in_stock

    # A stock file is applied but for its unknown SKUs and unusable rows, each reported; exit status 1.
    stock_csv.write_text(f"sku,in_stock\n{skus[2]},false\nNO-SUCH,false\n{skus[3]},perhaps\n")
    result = invoke("stock", "--csv", str(stock_csv), expect=1)
    assert f"failed: NO-SUCH ({stock_csv}): unknown SKU" in result.stderr
    assert f"failed: {skus[3]} ({stock_csv}:4): in_stock must be true or false" in result.stderr
    assert result.stdout == "1 product changed, 0 already as given, 2 failed\n"
    assert not catalogue.get_product(engine, skus[2]).in_stock and catalogue.get_product(engine, skus[3]).in_stock
    # Prices too, with the stock or alone ("none" removes a price).
    stock_csv.write_text(f"sku,in_stock,price\n{skus[0]},,12.50\n{skus[1]},true,none\n")
    assert invoke("stock", "--csv", str(stock_csv)).stdout == "2 products changed, 0 already as given\n"
    assert catalogue.get_product(engine, skus[0]).price == Decimal("12.50")
    assert catalogue.get_product(engine, skus[1]).price is None and catalogue.get_product(engine, skus[1]).in_stock
    invoke("stock", "--out", skus[1])
    # SKUs on the command line are all or nothing: an unknown one changes nothing.
    result = invoke("stock", "--in", skus[2], "NO-SUCH", expect=1)
    assert "unknown SKU: NO-SUCH" in result.stderr and not catalogue.get_product(engine, skus[2]).in_stock

    stats = invoke("stats").stdout
    assert re.search(r"total\s+4\s+2", stats) and "vector index: ix_product_images_embedding" in stats

    assert "removed 1 product" in invoke("remove", skus[3]).stdout
    assert catalogue.get_product(engine, skus[3]) is None
    assert "unknown SKU" in invoke("remove", skus[3], expect=1).stderr
    invoke("remove", "--missing-ok", skus[3])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _skus(folder: Path) -> list[str]:
    return [p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.jpg")]


def test_python_cli_entry_point_matches_installed_command() -> None:
    env = {**os.environ, "COLUMNS": "100"}
    installed = Path(sys.executable).parent / "imgsearch"
    via_script = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "--help"], capture_output=True, text=True, env=env
    )
    via_command = subprocess.run([str(installed), "--help"], capture_output=True, text=True, env=env)
    assert via_script.returncode == 0 and via_command.returncode == 0
    assert via_script.stdout == via_command.stdout and "Usage: imgsearch" in via_script.stdout


def test_no_database_and_no_schema_are_one_line_errors(make_database: Callable[..., str]) -> None:
    runner = CliRunner()
    unreachable = runner.invoke(main, ["--database-url", "postgresql://nobody@127.0.0.1:1/none", "stats"])
    assert unreachable.exit_code == 1 and "cannot connect to the database" in unreachable.stderr
    assert "Traceback" not in unreachable.output
    empty = runner.invoke(main, ["--database-url", make_database(), "stats"])
    assert empty.exit_code == 1 and "imgsearch db upgrade" in empty.stderr
    sqlite = runner.invoke(main, ["--database-url", "sqlite:///x.db", "stats"])
    assert sqlite.exit_code == 1 and "needs PostgreSQL" in sqlite.stderr
