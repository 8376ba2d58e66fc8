"""Searching from the command line: by photo, by SKU, cheaper alternatives, contact sheets, and bad input.

One catalogue for the whole module: the sample manifest (120 real photos, real VGG16 weights, real PostgreSQL),
ingested once through the CLI so that the module loads the network only once.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from imgsearch import output, sheet
from imgsearch.cli import main
from imgsearch.query import SearchResult
from tests.samples import SampleCatalogue

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
MANIFEST = EXAMPLES / "products.csv"
PHOTO = EXAMPLES / "catalogue" / "shoes" / "24535295-abe3-4613-91f6-a7fe87954662.jpg"
PHOTO_SKU = "shoes-24535295"  # PHOTO's product: 99.99, in stock

Invoke = Callable[..., Result]


def _manifest() -> dict[str, dict[str, str]]:
    with MANIFEST.open(newline="", encoding="utf-8") as fh:
        return {row["sku"]: row for row in csv.DictReader(fh)}


PRODUCTS = _manifest()


def _run(url: str, weights: str, args: tuple[str, ...], expect: int | None, input: bytes | None, **env: str) -> Result:
    result = CliRunner(env=env).invoke(main, ["--database-url", url, "--weights", weights, *args], input=input)
    if expect is not None:
        assert result.exit_code == expect, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def shop(sample_catalogue: SampleCatalogue) -> Path:
    """The copy of the sample shop (manifest and photos) the catalogue was ingested from; a test that takes its
    photos away puts them back."""
    return sample_catalogue.shop


@pytest.fixture(scope="module")
def catalogue_url(make_database: Callable[..., str], sample_catalogue: SampleCatalogue) -> str:
    """A database holding the sample manifest's 120 products."""
    # Categories of 12 products are worth an index here: the ingest kept them (each is 10% of the catalogue).
    assert "added 120," in sample_catalogue.ingest_output and "failed 0" in sample_catalogue.ingest_output
    assert sample_catalogue.ingest_output.count("indexed ") == 10
    return make_database(template=sample_catalogue.template)


@pytest.fixture(scope="module")
def cli(catalogue_url: str, fake_weights: str) -> Invoke:
    """Run the CLI in-process against the module's catalogue."""

    def invoke(*args: str, expect: int | None = 0, input: bytes | None = None) -> Result:
        return _run(catalogue_url, fake_weights, args, expect, input)

    return invoke


def as_json(result: Result) -> list[dict[str, Any]]:
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def skus(rows: list[dict[str, Any]]) -> list[str]:
    return [r["sku"] for r in rows]


@pytest.fixture(scope="module")
def ranking(cli: Invoke) -> list[dict[str, Any]]:
    """Every product, sold out or not, ranked by distance to PHOTO: the reference for the filter tests."""
    return as_json(cli("search", str(PHOTO), "-k", "120", "--include-out-of-stock", "--format", "json"))


def assert_one_line_error(result: Result, code: int, *fragments: str) -> None:
    """A non-zero exit with exactly one 'Error: ...' line holding ``fragments``, nothing on stdout, no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], result.stderr
    if code == 1:  # library and command errors: that line is all there is
        assert result.stderr.strip() == errors[0]


# --- formats --------------------------------------------------------------------------------------------------


def test_exclude_leaves_skus_out_of_photo_and_sku_searches(cli: Invoke) -> None:
    rows = as_json(cli("search", str(PHOTO), "-k", "3", "--format", "json"))
    fewer = as_json(cli("search", str(PHOTO), "-k", "3", "--exclude", rows[0]["sku"], "--format", "json"))
    assert rows[0]["sku"] not in skus(fewer) and len(fewer) == 3 and fewer[0]["sku"] == rows[1]["sku"]
    similar = as_json(cli("similar", PHOTO_SKU, "-k", "2", "--format", "json"))
    other = as_json(cli("similar", PHOTO_SKU, "-k", "2", "--exclude", similar[0]["sku"], "--format", "json"))
    assert skus(other)[0] == similar[1]["sku"]
    refused = cli("similar", PHOTO_SKU, "--cheaper", "--exclude", "x", expect=None)
    assert_one_line_error(refused, 1, "--cheaper already means")


def test_pages_follow_on_by_offset_and_by_cursor(cli: Invoke, ranking: list[dict[str, Any]]) -> None:
    args = ("--include-out-of-stock", "--no-verify", "--format", "json")
    whole = as_json(cli("search", str(PHOTO), "-k", "9", *args))
    second = as_json(cli("search", str(PHOTO), "-k", "3", "--offset", "3", *args))
    assert [(r["sku"], r["rank"]) for r in second] == [(r["sku"], r["rank"]) for r in whole[3:6]]
    third = as_json(cli("search", str(PHOTO), "-k", "3", "--cursor", second[-1]["cursor"], *args))
    assert [(r["sku"], r["rank"]) for r in third] == [(r["sku"], r["rank"]) for r in whole[6:9]]
    similar = as_json(cli("similar", PHOTO_SKU, "-k", "4", "--format", "json"))
    after = as_json(cli("similar", PHOTO_SKU, "-k", "2", "--cursor", similar[1]["cursor"], "--format", "json"))
    assert skus(after) == skus(similar[2:])
    table = cli("similar", PHOTO_SKU, "-k", "2", "--offset", "2").stdout.splitlines()
    assert [line.split()[0] for line in table[2:]] == ["3", "4"]  # the ranks go on
    assert_one_line_error(cli("similar", PHOTO_SKU, "--cursor", "nonsense", expect=None), 1, "cursor is not")
    both = cli("similar", PHOTO_SKU, "--cursor", similar[1]["cursor"], "--offset", "2", expect=None)
    assert_one_line_error(both, 1, "offset or cursor")
    assert_one_line_error(cli("similar", PHOTO_SKU, "--offset", "1000", expect=None), 2, "--offset")
    raw = as_json(cli("similar", PHOTO_SKU, "-k", "4", "--search-space", "raw", "--format", "json"))
    assert skus(raw) == skus(similar)  # untuned, the raw space is the active one
    assert_one_line_error(cli("similar", PHOTO_SKU, "--search-space", "tuned", expect=None), 2, "--search-space")


def test_max_distance_keeps_only_close_results(cli: Invoke) -> None:
    similar = as_json(cli("similar", PHOTO_SKU, "-k", "4", "--format", "json"))
    limit = str((similar[1]["distance"] + similar[2]["distance"]) / 2)  # between the 2nd and 3rd (rounded)
    assert as_json(cli("similar", PHOTO_SKU, "-k", "4", "--max-distance", limit, "--format", "json")) == similar[:2]
    exact = as_json(cli("search", str(PHOTO), "-k", "4", "--max-distance", "0", "--format", "json"))
    assert [(r["sku"], r["match"]) for r in exact] == [(PHOTO_SKU, "exact")]  # the proven match is kept
    refused = cli("similar", PHOTO_SKU, "--max-distance", "3", expect=None)
    assert refused.exit_code == 2 and "--max-distance" in refused.output and "Traceback" not in refused.output


def test_several_photos_of_one_thing_in_one_search(cli: Invoke) -> None:
    dress = EXAMPLES / "catalogue" / "dress" / "07cddef1-1fc8-47e4-a28a-613e60912590.jpg"
    both = as_json(cli("search", str(PHOTO), str(dress), "-k", "4", "--format", "json"))
    # Each photo proves its own product: both come first as exact matches, the rest follow as similar.
    assert {r["sku"] for r in both[:2]} == {PHOTO_SKU, "dress-07cddef1"}
    assert [r["match"] for r in both] == ["exact", "exact", "similar", "similar"]
    assert both[0]["inliers"] >= both[1]["inliers"] and all(r["distance"] < 1e-3 for r in both[:2])
    # Without verification: the nearest products to either photo, by distance.
    plain = as_json(cli("search", str(PHOTO), str(dress), "-k", "4", "--no-verify", "--format", "json"))
    assert {r["sku"] for r in plain[:2]} == {PHOTO_SKU, "dress-07cddef1"} and plain[0]["match"] is None
    assert_one_line_error(cli("search", str(PHOTO), str(dress), "--crop", "0,0,10,10", expect=None), 1, "--crop")
    too_many = cli("search", *[str(PHOTO)] * 6, expect=None)
    assert_one_line_error(too_many, 1, "at most 5 photos")


def test_a_photo_at_a_web_address_is_downloaded_and_searched(cli: Invoke) -> None:
    # The address is downloaded as ingestion downloads catalogue photos (//, the port and the query kept), not
    # read as a file path; a failed download is one line.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Photos(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PHOTO.read_bytes() if self.path == "/look.jpg?size=large" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Photos)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        by_url = as_json(cli("search", f"{base}/look.jpg?size=large", "-k", "3", "--format", "json"))
        by_file = as_json(cli("search", str(PHOTO), "-k", "3", "--format", "json"))
        assert skus(by_url) == skus(by_file) and by_url[0]["sku"] == PHOTO_SKU
        missing = cli("search", f"{base}/gone.jpg", expect=None)
        assert_one_line_error(missing, 1, f"{base}/gone.jpg", "404")
    finally:
        server.shutdown()
        server.server_close()


def test_json_has_the_documented_fields_and_the_query_photo_ranks_first(
    cli: Invoke, ranking: list[dict[str, Any]], shop: Path
) -> None:
    rows = as_json(cli("search", str(PHOTO), "--format", "json"))
    assert len(rows) == 8  # the default k
    assert all(list(row) == list(output.RESULT_FIELDS) for row in rows)
    assert [r["rank"] for r in rows] == list(range(1, 9))
    assert rows[0]["sku"] == PHOTO_SKU and abs(float(rows[0]["distance"])) < 1e-4
    distances = [float(r["distance"]) for r in rows]
    assert distances == sorted(distances) and all(0 <= d <= 2 for d in distances)
    for row in rows:
        product = PRODUCTS[str(row["sku"])]
        assert row["name"] == product["name"] and row["category"] == product["category"]
        assert Decimal(str(row["price"])) == Decimal(product["price"])
        assert row["in_stock"] is True
        assert row["image"] == str(shop / product["image"])  # where the photo is, from anywhere
    # Sold-out products are left out by default: the in-stock part of the full ranking, in order.
    assert skus(rows) == [r["sku"] for r in ranking if r["in_stock"]][:8]
    assert {r["in_stock"] for r in ranking} == {True, False} and len(ranking) == 120


def test_csv_has_a_header_and_the_same_rows_as_json(cli: Invoke) -> None:
    result = cli("search", str(PHOTO), "-k", "5", "--format", "csv", "--include-out-of-stock")
    lines = result.stdout.splitlines()
    assert lines[0] == ",".join(output.RESULT_FIELDS)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    expected = as_json(cli("search", str(PHOTO), "-k", "5", "--format", "json", "--include-out-of-stock"))
    assert len(rows) == 5 == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert row["rank"] == str(want["rank"]) and row["sku"] == want["sku"] and row["name"] == want["name"]
        assert row["price"] == f"{Decimal(str(want['price'])):.2f}"
        assert row["in_stock"] == str(want["in_stock"]).lower()
        assert float(row["distance"]) == pytest.approx(want["distance"], abs=1e-6)
        assert row["image"] == want["image"]


def test_table_fits_80_columns(cli: Invoke, ranking: list[dict[str, Any]]) -> None:
    lines = cli("search", str(PHOTO), "-k", "12", "--include-out-of-stock").stdout.splitlines()
    assert len(lines) == 2 + 12
    assert all(len(line) <= 80 for line in lines), lines
    # A search by photo says which result is the photographed product itself: the photo is in the catalogue.
    assert lines[0].split() == ["#", "sku", "name", "category", "price", "stock", "distance", "match", "image"]
    first = lines[2].split()
    assert first[:2] == ["1", PHOTO_SKU] and "0.0000" in first and "exact" in first
    for line, sku in zip(lines[2:], skus(ranking)[:12], strict=True):
        cell = line.split()[1]  # SKUs may be cut short to fit, never changed
        assert cell == sku or (cell.endswith("…") and sku.startswith(cell[:-1]))


def test_table_of_long_names_and_paths_fits_80_columns() -> None:
    results = [
        SearchResult(
            sku=f"SKU-{i}-" + "x" * 40,
            name="A remarkably long product name that goes on and on " * 2,
            category="outerwear-and-accessories-for-winter",
            price=Decimal("123456.78"),
            in_stock=i % 2 == 0,
            image=f"/srv/shop/images/2024/{'deep/' * 10}photo-{i}.jpg",
            distance=0.123456 * i,
        )
        for i in range(12)
    ]
    lines = output.format_results(results, "table").splitlines()
    assert len(lines) == 14 and all(len(line) <= 80 for line in lines), lines
    # Paths lose their beginning, keeping the end of the file name; the SKU keeps the most room.
    assert lines[2].endswith("…0.jpg")
    assert lines[2].split()[1].startswith("SKU-0-xxxxxxxxxx")
    assert lines[-1].split()[0] == "12" and "no" in lines[3].split()


# --- inputs ---------------------------------------------------------------------------------------------------


def test_stdin_gives_the_same_results_as_the_file(cli: Invoke) -> None:
    from_file = cli("search", str(PHOTO), "-k", "6", "--format", "json").stdout
    from_stdin = cli("search", "-", "-k", "6", "--format", "json", input=PHOTO.read_bytes()).stdout
    assert from_stdin == from_file


def test_a_png_query_with_transparency_and_exif_rotation_is_searchable(cli: Invoke, tmp_path: Path) -> None:
    # Same photo, re-encoded as RGBA PNG: still finds its product first.
    png = tmp_path / "query.png"
    Image.open(PHOTO).convert("RGBA").save(png)
    rows = as_json(cli("search", str(png), "-k", "1", "--format", "json"))
    assert rows[0]["sku"] == PHOTO_SKU and float(rows[0]["distance"]) < 0.05


# --- filters --------------------------------------------------------------------------------------------------


def test_ingest_kept_category_indexes(cli: Invoke) -> None:
    listed = json.loads(cli("index", "list", "--format", "json").stdout)
    assert len(listed) == 10 and {i["products"] for i in listed} == {12}
    assert "nothing to build" in cli("index", "auto", "--min-products", "12").stdout


def test_category_filter_is_honoured(cli: Invoke, ranking: list[dict[str, Any]]) -> None:
    rows = as_json(
        cli("search", str(PHOTO), "-k", "10", "--category", "hat", "--category", "dress", "--format", "json")
    )
    assert len(rows) == 10 and {r["category"] for r in rows} <= {"hat", "dress"}
    assert all(r["in_stock"] for r in rows)
    assert skus(rows) == [r["sku"] for r in ranking if r["category"] in ("hat", "dress") and r["in_stock"]][:10]


def test_max_price_is_inclusive_and_honoured(cli: Invoke, ranking: list[dict[str, Any]]) -> None:
    rows = as_json(cli("search", str(PHOTO), "-k", "15", "--max-price", "19.99", "--format", "json"))
    assert len(rows) == 15
    assert all(r["price"] is not None and Decimal(str(r["price"])) <= Decimal("19.99") for r in rows)
    assert any(Decimal(str(r["price"])) == Decimal("19.99") for r in rows)
    expected = [r for r in ranking if r["in_stock"] and Decimal(str(r["price"])) <= Decimal("19.99")]
    assert skus(rows) == skus(expected)[:15]


def test_a_price_limit_above_every_price_is_no_limit(cli: Invoke, ranking: list[dict[str, Any]]) -> None:
    # 1e200000 is a valid decimal but overflows PostgreSQL's numeric: it must mean "no limit", not a traceback.
    rows = as_json(cli("search", str(PHOTO), "-k", "5", "--max-price", "1e200000", "--format", "json"))
    assert skus(rows) == [r["sku"] for r in ranking if r["in_stock"] and r["price"] is not None][:5]


def test_include_out_of_stock_adds_sold_out_products(cli: Invoke, ranking: list[dict[str, Any]]) -> None:
    args = ("search", str(PHOTO), "-k", "40", "--category", "shoes", "--format", "json")
    in_stock = as_json(cli(*args))
    everything = as_json(cli(*args, "--include-out-of-stock"))
    sold_out = {sku for sku, p in PRODUCTS.items() if p["category"] == "shoes" and p["in_stock"] == "false"}
    assert len(sold_out) == 2
    assert set(skus(everything)) == {sku for sku, p in PRODUCTS.items() if p["category"] == "shoes"}
    assert set(skus(in_stock)) == set(skus(everything)) - sold_out
    assert all(r["in_stock"] for r in in_stock)
    assert skus(everything) == [r["sku"] for r in ranking if r["category"] == "shoes"]


def test_filters_with_no_match_are_an_empty_answer_not_an_error(cli: Invoke) -> None:
    args = ("search", str(PHOTO), "--category", "no-such-category")
    assert as_json(cli(*args, "--format", "json")) == []
    assert cli(*args, "--format", "csv").stdout == ",".join(output.RESULT_FIELDS) + "\n"
    table = cli(*args)
    assert table.stdout == "" and "no products match the filters" in table.stderr


# --- by SKU ---------------------------------------------------------------------------------------------------


def test_similar_excludes_the_sku_itself(cli: Invoke) -> None:
    rows = as_json(cli("similar", PHOTO_SKU, "-k", "200", "--include-out-of-stock", "--format", "json"))
    assert len(rows) == 119 and PHOTO_SKU not in skus(rows)
    in_stock = as_json(cli("similar", PHOTO_SKU, "-k", "5", "--format", "json"))
    assert len(in_stock) == 5 and all(r["in_stock"] for r in in_stock) and PHOTO_SKU not in skus(in_stock)
    # The stored vector of the photo's product is the photo's vector: same neighbours as searching by it.
    by_photo = as_json(cli("search", str(PHOTO), "-k", "6", "--format", "json"))
    assert skus(in_stock) == skus(by_photo)[1:]


def test_cheaper_returns_only_in_stock_strictly_cheaper_same_category(cli: Invoke) -> None:
    rows = as_json(cli("cheaper", PHOTO_SKU, "-k", "50", "--format", "json"))
    price = Decimal(PRODUCTS[PHOTO_SKU]["price"])
    expected = {
        sku
        for sku, p in PRODUCTS.items()
        if p["category"] == "shoes" and p["in_stock"] == "true" and Decimal(p["price"]) < price
    }
    # The sample has another in-stock pair at the same price and two cheaper sold-out pairs: all left out.
    assert any(p["price"] == PRODUCTS[PHOTO_SKU]["price"] for s, p in PRODUCTS.items() if s != PHOTO_SKU)
    assert set(skus(rows)) == expected and len(rows) == len(expected) == 8
    assert all(r["in_stock"] and Decimal(str(r["price"])) < price and r["category"] == "shoes" for r in rows)
    distances = [float(r["distance"]) for r in rows]
    assert distances == sorted(distances)

    assert as_json(cli("similar", PHOTO_SKU, "--cheaper", "-k", "50", "--format", "json")) == rows
    top3 = as_json(cli("cheaper", PHOTO_SKU, "-k", "3", "--format", "json"))
    assert skus(top3) == skus(rows)[:3]


def test_cheaper_in_any_category(cli: Invoke) -> None:
    sku = "dress-19e4de0d"  # 79.99
    rows = as_json(cli("cheaper", sku, "--any-category", "-k", "200", "--format", "json"))
    expected = {s for s, p in PRODUCTS.items() if p["in_stock"] == "true" and Decimal(p["price"]) < Decimal("79.99")}
    assert set(skus(rows)) == expected
    assert len({r["category"] for r in rows}) > 1


def test_cheaper_refuses_other_filters(cli: Invoke) -> None:
    result = cli("similar", PHOTO_SKU, "--cheaper", "--category", "hat", expect=1)
    assert_one_line_error(result, 1, "--cheaper")


# --- pictures -------------------------------------------------------------------------------------------------


def expected_sheet_size(n_results: int, columns: int = 4, tile: int = 224) -> tuple[int, int]:
    """The documented layout, computed independently of the module: 224-px tiles with a 56-px caption band,
    10-px margins, at most 4 columns, the query tile first."""
    tiles = n_results + 1
    cols = min(columns, tiles)
    rows = -(-tiles // cols)
    return cols * tile + (cols + 1) * 10, rows * (tile + 56) + (rows + 1) * 10


def cells(image: Image.Image, n_cells: int, columns: int) -> list[Image.Image]:
    """The picture areas of the grid's cells, in order."""
    out = []
    for i in range(n_cells):
        row, col = divmod(i, columns)
        x, y = 10 + col * 234, 10 + row * 290
        out.append(image.crop((x, y, x + 224, y + 224)))
    return out


def share_of(cell: Image.Image, colour: tuple[int, int, int]) -> float:
    colours = cell.convert("RGB").getcolors(224 * 224) or []
    return sum(n for n, c in colours if c == colour) / (224 * 224)


def open_png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.verify()  # a complete, valid file
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def test_search_sheet_is_a_png_with_one_tile_per_result(cli: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "results.png"
    result = cli("search", str(PHOTO), "-k", "5", "--sheet", str(path), "--image-root", str(EXAMPLES))
    assert f"contact sheet: {path}" in result.stderr
    image = open_png(path)
    assert image.size == expected_sheet_size(5) == (946, 590) == sheet.sheet_size(5)
    grid = cells(image, 8, columns=4)
    background = (236, 236, 236)
    for cell in grid[:6]:  # the query and 5 results: real pictures, no placeholders
        # (a photo may hold a few pixels of exactly the sheet's grey, never a whole cell of it)
        assert share_of(cell, background) < 0.05 and share_of(cell, (222, 222, 222)) < 0.2
    for cell in grid[6:]:  # the rest of the last row is empty
        assert share_of(cell, background) == 1
    # The query tile and the first result (the same photo) show the same picture (inside their borders).
    query_tile, first = (np.asarray(c)[2:-2, 2:-2] for c in grid[:2])
    assert np.array_equal(query_tile, first)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_sheet_size_follows_the_number_of_results(cli: Invoke, tmp_path: Path) -> None:
    for k, size in (("1", (478, 300)), ("8", (946, 880))):
        path = tmp_path / f"k{k}.png"
        cli("search", str(PHOTO), "-k", k, "--sheet", str(path), "--image-root", str(EXAMPLES))
        assert open_png(path).size == size == expected_sheet_size(int(k))


def test_missing_images_become_placeholders(cli: Invoke, tmp_path: Path, shop: Path) -> None:
    # The photos were moved away since they were ingested: every tile, the query's (a SKU's stored image)
    # included, is a placeholder, and the command still succeeds.
    path = tmp_path / "cheaper.png"
    (shop / "catalogue").rename(shop / "moved")
    try:
        result = cli("cheaper", PHOTO_SKU, "-k", "3", "--sheet", str(path), "--format", "json")
    finally:
        (shop / "moved").rename(shop / "catalogue")
    assert len(as_json(result)) == 3
    image = open_png(path)
    assert image.size == expected_sheet_size(3)
    assert all(share_of(cell, (222, 222, 222)) > 0.8 for cell in cells(image, 4, columns=4))


def test_similar_sheet_shows_the_skus_stored_image_and_sold_out_results(cli: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "similar.png"
    args = ("similar", PHOTO_SKU, "-k", "11", "--category", "shoes", "--include-out-of-stock")
    rows = as_json(cli(*args, "--format", "json", "--sheet", str(path), "--image-root", str(EXAMPLES)))
    assert len(rows) == 11
    image = open_png(path)
    assert image.size == expected_sheet_size(11) == (946, 880)
    grid = cells(image, 12, columns=4)
    assert share_of(grid[0], (222, 222, 222)) < 0.2  # the SKU's own photo, found under --image-root
    sold_out_red = (200, 30, 30)
    for row, cell in zip(rows, grid[1:], strict=True):
        # The SOLD OUT badge covers about 3% of the picture.
        assert (share_of(cell, sold_out_red) > 0.01) == (not row["in_stock"]), row["sku"]


def test_histogram_is_a_png(cli: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "dist.png"
    result = cli("search", str(PHOTO), "-k", "8", "--histogram", str(path))
    assert f"distance histogram: {path}" in result.stderr
    assert open_png(path).size == (640, 360)


def test_sheet_pictures_are_upright_letterboxed_and_transparency_is_white(tmp_path: Path) -> None:
    # A wide red picture whose EXIF says "rotate 90°": shown upright it is tall, so it fills the tile's height
    # and leaves white bands left and right.
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (300, 100), (220, 0, 0)).save(rotated, exif=exif)
    # A transparent PNG with an opaque blue square in the middle.
    cutout = tmp_path / "cutout.png"
    picture = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    picture.paste((0, 0, 255, 255), (50, 50, 150, 150))
    picture.save(cutout)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really")
    results = [
        SearchResult(f"S{i}", None, "c", None, True, str(image), 0.1 * i)
        for i, image in enumerate((cutout, corrupt), start=1)
    ]
    path = sheet.write_contact_sheet(results, tmp_path / "s.png", query_image=rotated.read_bytes())
    image = open_png(path).convert("RGB")
    assert image.size == expected_sheet_size(2)
    query_tile, cutout_tile, corrupt_tile = cells(image, 3, columns=3)
    assert query_tile.getpixel((112, 112))[0] > 180 and query_tile.getpixel((112, 5))[0] > 180  # full height
    assert query_tile.getpixel((20, 112)) == (255, 255, 255)  # letterboxed on white
    assert cutout_tile.getpixel((10, 10)) == (255, 255, 255) and cutout_tile.getpixel((112, 112))[2] > 200
    assert share_of(corrupt_tile, (222, 222, 222)) > 0.8


def test_failed_sheet_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgsearch.errors import ImgsearchError

    target = tmp_path / "sheet.png"
    target.write_bytes(b"previous sheet")

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half a file")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ImgsearchError, match="No space left on device"):
        sheet.write_contact_sheet([], target, query_image=PHOTO)
    assert target.read_bytes() == b"previous sheet"
    assert os.listdir(tmp_path) == ["sheet.png"]


# --- errors ---------------------------------------------------------------------------------------------------


def test_unknown_sku(cli: Invoke) -> None:
    for command in (("similar",), ("similar", "--cheaper"), ("cheaper",)):
        assert_one_line_error(cli(*command, "NO-SUCH-SKU", expect=None), 1, "unknown SKU NO-SUCH-SKU")


def test_unreadable_images(cli: Invoke, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a photo at all")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(PHOTO.read_bytes()[:2000])
    empty = tmp_path / "empty.png"
    empty.touch()
    cases = {
        corrupt: "not an image",
        truncated: "truncated or corrupt",
        empty: "empty file",
        tmp_path / "missing.jpg": "file not found",
        tmp_path: "is a directory",
    }
    for path, reason in cases.items():
        assert_one_line_error(cli("search", str(path), expect=None), 1, str(path), reason)
    assert_one_line_error(cli("search", "-", expect=None, input=b""), 1, "stdin", "empty image data")
    assert_one_line_error(cli("search", "-", expect=None, input=b"GIF89a garbage"), 1, "stdin")


def test_bad_options(cli: Invoke) -> None:
    for args, fragment in (
        (("--max-price", "-1"), "--max-price"),
        (("--max-price", "nan"), "--max-price"),
        (("--max-price", "cheap"), "--max-price"),
        (("-k", "0"), "-k"),
        (("-k", "1001"), "-k"),
        (("--format", "xml"), "--format"),
    ):
        assert_one_line_error(cli("search", str(PHOTO), *args, expect=None), 2, fragment)
    assert_one_line_error(cli("similar", PHOTO_SKU, "--max-price=-5", expect=None), 2, "--max-price")


def test_unwritable_sheet(cli: Invoke, tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "sheet.png"
    assert_one_line_error(cli("search", str(PHOTO), "--sheet", str(target), expect=None), 1, str(target))


def test_empty_catalogue(database_url: str, fake_weights: str) -> None:
    for args in (
        ("search", str(PHOTO)),
        ("search", str(PHOTO), "--format", "json"),
        ("search", str(PHOTO), "--format", "csv"),
        ("similar", PHOTO_SKU),
        ("cheaper", PHOTO_SKU, "--format", "json"),
    ):
        result = _run(database_url, fake_weights, args, None, None)
        assert_one_line_error(result, 1, "the catalogue is empty", "imgsearch ingest")


def test_no_database(fake_weights: str) -> None:
    url = "postgresql://nobody@127.0.0.1:1/imgsearch"
    for args in (("search", str(PHOTO)), ("cheaper", PHOTO_SKU)):
        assert_one_line_error(_run(url, fake_weights, args, None, None), 1, "cannot connect to the database")


def test_every_search_command_has_help_with_an_example() -> None:
    for command in ("search", "similar", "cheaper"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.stdout and f"imgsearch {command} " in result.stdout
        for option in ("-k", "--format", "--sheet", "--histogram"):
            assert option in result.stdout
