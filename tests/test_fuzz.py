"""Property-based fuzzing (hypothesis, bounded): the manifest and stock parsers, the image decoder on mutated real
photos, and the search function's arguments. Whatever comes in, nothing escapes but the project's own errors,
and what comes out is usable."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, ingest, query
from imgsearch.catalogue import ProductRecord
from imgsearch.errors import ImageError, InvalidQueryError, ManifestError
from imgsearch.images import TARGET_SIZE, decode_rgb8
from imgsearch.validation import check_product_fields

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# CSV text made of the pieces that break parsers: separators, quotes, line breaks, NUL, BOMs, long runs, SQL.
_PIECES = st.sampled_from(
    [
        ",",
        '"',
        '""',
        "\n",
        "\r\n",
        "\r",
        "\x00",
        "\ufeff",
        "é",
        "\u202e",
        " ",
        "'",
        ";",
        "--",
        "DROP TABLE products",
        "1e400",
        "NaN",
        "-1",
        "0.005",
        "12.50",
        "true",
        "maybe",
        "sku",
        "category",
        "image",
        "x" * 300,
        "dress/a.jpg",
    ]
)
_CSV_TEXT = st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=60).map("".join)
_HEADERS = st.sampled_from(
    ["sku,name,category,price,in_stock,image\n", "sku,category,image\n", "SKU, Category ,IMAGE,extra\n", "", "sku\n"]
)


def _file(data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.csv"
        path.write_bytes(data)
        yield path


@FUZZ
@given(header=_HEADERS, body=_CSV_TEXT, raw=st.binary(max_size=64), encode_errors=st.booleans())
def test_manifest_reader_yields_entries_or_failures_only(
    header: str, body: str, raw: bytes, encode_errors: bool
) -> None:
    data = (header + body).encode("utf-8", "surrogatepass" if encode_errors else "replace") + raw
    for path in _file(data):
        try:
            items = list(ingest.read_manifest(path))
        except ManifestError:
            continue  # the file as a whole is unusable: one clear error
        for item in items:
            assert isinstance(item, ingest.CatalogueEntry | ingest.Failure)
            if isinstance(item, ingest.CatalogueEntry):
                check_product_fields(item.sku, item.category, item.name, None, item.price)
                assert item.images and all(isinstance(image, str) and image for image in item.images)
            else:
                assert item.reason and "\n" not in item.reason


@FUZZ
@given(body=_CSV_TEXT, raw=st.binary(max_size=64))
def test_stock_reader_yields_changes_or_failures_only(body: str, raw: bytes) -> None:
    for path in _file(("sku,in_stock\n" + body).encode("utf-8", "replace") + raw):
        try:
            updates = ingest.read_stock_csv(path)
        except ManifestError:
            continue
        for sku, flag in updates.stock.items():
            check_product_fields(sku, "c")
            assert isinstance(flag, bool)
        assert all(f.reason for f in updates.failures)


def _encoded(path: Path, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.open(path).convert("RGB").resize((96, 128))
    if fmt == "GIF":
        image = image.convert("P")
    image.save(buffer, format=fmt)
    return buffer.getvalue()


_PHOTOS = sorted(SAMPLE.glob("*/*.jpg"))[::40]
_REAL = [_encoded(p, fmt) for p in _PHOTOS for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_REAL)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


@settings(max_examples=600, deadline=None)
@given(data=_mutated())
def test_decoder_gives_pixels_or_an_image_error(data: bytes) -> None:
    try:
        pixels = decode_rgb8(data)
    except ImageError as exc:
        assert str(exc).startswith("<image bytes>: ") and "\n" not in str(exc)
        return
    assert pixels.shape == (TARGET_SIZE, TARGET_SIZE, 3) and pixels.dtype == np.uint8


@pytest.fixture(scope="module")
def small_catalogue(make_database: Callable[..., str], migrated_template: str) -> Iterator[Engine]:
    engine = db.create_engine(make_database(template=migrated_template))
    rng = np.random.default_rng(4)
    catalogue.upsert_products(
        engine,
        [
            ProductRecord(
                sku=f"s{i}", category=f"c{i % 3}", embedding=rng.normal(size=512), price=Decimal(i), in_stock=i % 4 > 0
            )
            for i in range(60)
        ],
    )
    yield engine
    engine.dispose()


_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-45, 1e38, 3.4e38, 1e-320])
_VECTORS = st.one_of(
    st.lists(_FLOATS, max_size=600),
    st.lists(_FLOATS, min_size=512, max_size=512),
    st.builds(lambda x, i: [0.0] * i + [x] + [0.0] * (511 - i), _FLOATS, st.integers(0, 511)),
)
_PRICES = st.one_of(
    st.none(),
    st.decimals(),
    st.floats(),
    st.text(max_size=12),
    st.integers(-10, 10**30),
    st.sampled_from(["1e200000", "NaN", "-0"]),
)


@settings(FUZZ, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(
    vector=_VECTORS,
    k=st.one_of(st.integers(-3, 1100), st.sampled_from([True, 2.5, "5"])),
    categories=st.one_of(st.none(), st.lists(st.text(max_size=10), max_size=3), st.text(max_size=5)),
    in_stock_only=st.booleans(),
    max_price=_PRICES,
    below_price=_PRICES,
)
def test_search_returns_rows_or_invalid_query(
    small_catalogue: Engine,
    vector: list[float],
    k: object,
    categories: object,
    in_stock_only: bool,
    max_price: object,
    below_price: object,
) -> None:
    try:
        results = query.search(
            small_catalogue,
            vector,
            k,  # type: ignore[arg-type]
            categories=categories,  # type: ignore[arg-type]
            in_stock_only=in_stock_only,
            max_price=max_price,  # type: ignore[arg-type]
            below_price=below_price,  # type: ignore[arg-type]
        )
    except InvalidQueryError as exc:
        assert "\n" not in str(exc)
        return
    assert len(results) <= int(k)  # type: ignore[call-overload]
    assert all(np.isfinite(r.distance) and 0 <= r.distance <= 2 for r in results)
    assert [r.distance for r in results] == sorted(r.distance for r in results)


# JSON bodies of any shape for the HTTP service: scalars, deep and wide containers, the search's own keys with
# values of every type, and text PostgreSQL cannot hold.
_JSON_SCALARS = st.none() | st.booleans() | st.integers() | _FLOATS | st.text(max_size=8) | st.just("a\x00b")
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_SEARCH_BODIES = st.one_of(
    _JSON,
    st.fixed_dictionaries(
        {"vector": st.one_of(_VECTORS, _JSON)},
        optional={"k": _JSON | st.integers(-3, 1100), "category": _JSON, "in_stock_only": _JSON, "max_price": _JSON},
    ),
)


@pytest.fixture(scope="module")
def service_client(small_catalogue: Engine) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from imgsearch.config import Settings
    from imgsearch.service import create_app

    url = small_catalogue.url.render_as_string(hide_password=False)
    app = create_app(Settings(database_url=url, weights="fake"))
    with TestClient(app.fastapi, raise_server_exceptions=False) as client:  # type: ignore[attr-defined]
        yield client


@settings(FUZZ, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(body=_SEARCH_BODIES)
def test_any_json_body_is_answered_or_refused_never_a_500(service_client: object, body: object) -> None:
    import json

    response = service_client.post(  # type: ignore[attr-defined]
        "/search", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 400, 404, 422), (response.status_code, response.text)
    payload = response.json()
    if response.status_code == 200:
        assert isinstance(payload, list)
    else:
        assert set(payload) == {"error"} and "\n" not in payload["error"]
