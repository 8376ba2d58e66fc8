"""Hostile input through the command line: every bad item is one error line (and one row of --errors), every good
item lands, nothing hangs and nothing escapes as a traceback (tests/hostile.py describes the corpus)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from imgsearch import catalogue
from imgsearch.cli import main
from tests import hostile


@pytest.fixture
def run(database_url: str, fake_weights: str):
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, ["--database-url", database_url, "--weights", fake_weights, *args])

    return invoke


def _failures(result: Result, errors: Path) -> list[tuple[str, str]]:
    lines = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    with errors.open(newline="", encoding="utf-8") as fh:
        rows = [(row["sku"], row["reason"]) for row in csv.DictReader(fh)]
    assert len(lines) == len(rows)  # the same failures on screen and in the file, one line each
    return rows


def _match(expected: list[tuple[str | None, str]], reported: list[tuple[str, str]]) -> None:
    """Each expected failure is reported exactly once, and nothing else is."""
    left = list(reported)
    for sku, reason in expected:
        label = "" if sku is None else sku.encode("unicode_escape", "backslashreplace").decode("ascii")
        found = [r for r in left if r[0] in (sku or "", label) and re.search(reason, r[1])]
        assert found, (sku, reason, left)
        left.remove(found[0])
    assert left == [], left


def test_a_hostile_folder(run, engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "catalogue"
    cases = hostile.image_folder(root)
    errors = tmp_path / "errors.csv"
    result = run("ingest", "--quiet", "--errors", str(errors), str(root))
    assert (result.exit_code == 1 and result.exception is None) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    expected = [(sku, e.reason) for sku, e in cases.items() if e.reason]
    expected.append(("shoes/twin", cases["shoes/twin"].reason))  # both files of the pair are reported
    _match(expected, _failures(result, errors))
    for sku, outcome in cases.items():
        if outcome.reason is None:
            assert catalogue.get_embedding(engine, sku) is not None, sku
    assert catalogue.stats(engine).products == sum(e.reason is None for e in cases.values())


def test_a_hostile_manifest_and_stock_file(run, engine: Engine, tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    hostile.image_folder(shop)
    body, outcomes = hostile.manifest(shop)
    (shop / "products.csv").write_bytes(body)
    errors = tmp_path / "errors.csv"
    result = run("ingest", "--quiet", "--errors", str(errors), "--manifest", str(shop / "products.csv"))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    _match([(sku, reason) for sku, reason in outcomes if reason], _failures(result, errors))
    landed = [sku for sku, reason in outcomes if reason is None]
    for sku in landed:
        assert catalogue.get_product(engine, sku) is not None, sku
    assert catalogue.stats(engine).products == len(landed)
    assert catalogue.get_product(engine, "swallowed") is None
    assert len(catalogue.get_product(engine, "two-photos").images) == 2
    assert catalogue.get_product(engine, "ok-2").name == 'O\'Neil "Best" shoe; DROP TABLE products;--'
    assert catalogue.get_product(engine, "ok-4").name == "A name\nover two lines"

    stock, must_land, reasons = hostile.stock_file()
    (tmp_path / "stock.csv").write_bytes(stock)
    stock_errors = tmp_path / "stock-errors.csv"
    result = run("stock", "--csv", str(tmp_path / "stock.csv"), "--errors", str(stock_errors))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    with stock_errors.open(encoding="utf-8") as fh:
        reported = sorted(row["reason"] for row in csv.DictReader(fh))
    assert len(reported) == len(reasons) == len([x for x in result.stderr.splitlines() if x.startswith("failed:")])
    for reason in reasons:
        assert any(re.search(reason, r) for r in reported), (reason, reported)
    for sku, flag in must_land.items():
        assert catalogue.get_product(engine, sku).in_stock is flag


def test_unwritable_errors_file_is_one_line_before_any_work(run, engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "catalogue"
    hostile.image_folder(root)
    result = run("ingest", "--quiet", "--errors", str(tmp_path / "no-such-dir" / "errors.csv"), str(root))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot write ") and len(result.stderr.splitlines()) == 1
    assert catalogue.is_empty(engine)  # refused before anything was ingested


def test_endless_and_ambiguous_inputs_are_one_line_errors(run, engine: Engine, tmp_path: Path) -> None:
    # A manifest or stock file that never ends (a device): refused at the line-length limit, not read whole.
    for args in (["ingest", "--quiet", "--manifest", "/dev/zero"], ["stock", "--csv", "/dev/zero"]):
        result = run(*args)
        assert result.exit_code == 1 and "longer than" in result.stderr, result.output
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
    # A header naming a column twice: which one is the SKU? Refused, nothing stored.
    photo = next((Path(__file__).resolve().parent.parent / "examples" / "catalogue" / "hat").glob("*.jpg"))
    twice = tmp_path / "twice.csv"
    twice.write_text(f"sku,sku,category,image\na,b,hat,{photo}\n")
    result = run("ingest", "--quiet", "--manifest", str(twice))
    assert result.exit_code == 1 and "names a column twice: sku" in result.stderr, result.output
    assert catalogue.is_empty(engine)
    # Prices in one grammar: ASCII digits and a decimal point; grouping, underscores and other digits refused.
    prices = tmp_path / "prices.csv"
    rows = [
        ("plain", "1000"),
        ("cents", "12.50"),
        ("underscore", "1_000"),
        ("comma", "1,000"),
        ("wide", "\uff11\uff12"),
    ]
    prices.write_text("sku,category,price,image\n" + "".join(f'{sku},hat,"{price}",{photo}\n' for sku, price in rows))
    result = run("ingest", "--quiet", "--manifest", str(prices))
    assert result.exit_code == 1
    assert sorted(line.split()[1] for line in result.stderr.splitlines()) == ["comma", "underscore", "wide"]
    assert catalogue.get_product(engine, "plain").price == 1000 and catalogue.get_product(engine, "cents") is not None
    # A correctly quoted SKU holding a line break is named for what it is, not as an open quote.
    newline = tmp_path / "newline.csv"
    newline.write_text(f'sku,category,image\n"two\nlines",hat,{photo}\nafter,hat,{photo}\n')
    result = run("ingest", "--quiet", "--manifest", str(newline))
    assert result.exit_code == 1 and "sku contains a line break" in result.stderr, result.output
    assert catalogue.get_product(engine, "after") is not None


def test_endless_stdin_is_refused_at_the_limit(database_url: str, fake_weights: str) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "imgsearch", "--database-url", database_url, "--weights", fake_weights]
    with open("/dev/zero", "rb") as zero:
        done = subprocess.run([*command, "search", "-"], stdin=zero, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().endswith("image data too large (over 104857600 bytes)")
    assert len(done.stderr.splitlines()) == 1


def test_a_photo_over_the_pixel_limit_is_one_line_without_the_image_librarys_warning(
    run, engine: Engine, tmp_path: Path
) -> None:
    from PIL import Image

    catalogue.upsert_products(engine, [catalogue.ProductRecord(sku="x", category="c", embedding=[1.0] * 512)])
    big = tmp_path / "big.png"
    Image.new("1", (10_000, 10_000)).save(big)  # 100 megapixels, a few kilobytes
    result = run("search", str(big))
    assert result.exit_code == 1 and "image too large" in result.stderr, result.output
    assert "Warning" not in result.stderr and len(result.stderr.splitlines()) == 1
