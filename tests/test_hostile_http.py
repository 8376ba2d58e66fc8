"""The hostile-request suite: what an attacker on the internet sends a service set up to face it (API keys in use,
a rate limit, CORS, a small upload limit), each against a real `imgsearch serve`. Every refusal must be the right
4xx with one JSON error line: no 5xx, no traceback, no answer that gives away more than it should."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from imgsearch import Catalogue
from tests.samples import SampleCatalogue
from tests.test_service import EXAMPLES, PHOTO_SKU, Service

SHOP = "https://shop.example"
VECTOR = [0.1] * 512


@pytest.fixture(scope="module")
def served(
    make_database: Callable[..., str], sample_catalogue: SampleCatalogue, fake_weights: str
) -> Iterator[tuple[Service, dict[str, str]]]:
    url = make_database(template=sample_catalogue.template)
    shop = Catalogue(url)
    made = {scope: shop.create_key(f"hostile-{scope}", scope)[1] for scope in ("search", "write", "admin")}
    _, revoked = shop.create_key("hostile-revoked", "admin")
    shop.revoke_key("hostile-revoked")
    made["revoked"] = revoked
    made["expired"] = shop.create_key("hostile-expired", "admin", timedelta(days=1))[1]
    with shop.engine("admin").begin() as conn:  # its day is over
        conn.execute(
            sa.text(
                "UPDATE imgsearch.api_keys SET created_at = now() - interval '2 days', "
                "expires_at = now() - interval '1 day' WHERE name = 'hostile-expired'"
            )
        )
    shop.close()
    running = Service(
        url,
        fake_weights,
        "--cors-origin",
        SHOP,
        "--max-upload-mb",
        "1",
        "--image-root",
        str(sample_catalogue.shop),
        "--rate-limit",
        "100000",
    )
    yield running, made
    running.close()


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (15_000, 15_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _probes(keys: dict[str, str]) -> list[tuple[str, dict[str, Any], int, str]]:
    """(what, request, expected status, a word the error must hold)."""
    search = {"Authorization": f"Bearer {keys['search']}"}
    nan = ('{"vector": [' + ", ".join(["NaN"] * 512) + "]}").encode()
    huge = json.dumps({"vector": [1e308] * 512 + [1.0]}).encode()
    deep = b'{"vector": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    as_json = {**search, "Content-Type": "application/json"}
    return [
        ("no key", {"method": "POST", "url": "/v1/search", "json": {"vector": VECTOR}}, 401, "API key"),
        (
            "not a bearer key",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": {"Authorization": f"Basic {keys['search']}"},
                "json": {"vector": VECTOR},
            },
            401,
            "Bearer",
        ),
        (
            "an unknown key",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": {"Authorization": "Bearer isk_forged"},
                "json": {"vector": VECTOR},
            },
            401,
            "unknown or revoked",
        ),
        (
            "a revoked key",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": {"Authorization": f"Bearer {keys['revoked']}"},
                "json": {"vector": VECTOR},
            },
            401,
            "unknown or revoked",
        ),
        (
            "an expired key",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": {"Authorization": f"Bearer {keys['expired']}"},
                "json": {"vector": VECTOR},
            },
            401,
            "expired",
        ),
        (
            "a search key writing events",
            {"method": "POST", "url": "/v1/events", "headers": search, "json": {"events": []}},
            403,
            "scope",
        ),
        (
            "an upload over the limit",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": search,
                "files": {"image": ("big.jpg", b"\xff" * 2_000_000, "image/jpeg")},
            },
            413,
            "larger than",
        ),
        (
            "a decompression bomb",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": search,
                "files": {"image": ("bomb.png", _bomb(), "image/png")},
            },
            400,
            "too large",
        ),
        (
            "not a photo",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": search,
                "files": {"image": ("x.jpg", b"<?php", "image/jpeg")},
            },
            400,
            "x.jpg",
        ),
        (
            "SSRF to loopback",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": search,
                "json": {"image_url": "http://127.0.0.1:9/x.jpg"},
            },
            400,
            "not a public address",
        ),
        (
            "SSRF to cloud metadata",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": search,
                "json": {"image_url": "http://169.254.169.254/latest/meta-data/"},
            },
            400,
            "not a public address",
        ),
        (
            "SSRF to IPv6 loopback",
            {"method": "POST", "url": "/v1/search", "headers": search, "json": {"image_url": "http://[::1]:9/x.jpg"}},
            400,
            "not a public address",
        ),
        (
            "a file: address",
            {"method": "POST", "url": "/v1/search", "headers": search, "json": {"image_url": "file:///etc/passwd"}},
            400,
            "http",
        ),
        ("NaN in a vector", {"method": "POST", "url": "/v1/search", "headers": as_json, "content": nan}, 400, "NaN"),
        ("a huge vector", {"method": "POST", "url": "/v1/search", "headers": as_json, "content": huge}, 400, "512"),
        (
            "JSON nested 100,000 deep",
            {"method": "POST", "url": "/v1/search", "headers": as_json, "content": deep},
            400,
            "nested",
        ),
        (
            "k = 0",
            {"method": "POST", "url": "/v1/search", "headers": search, "json": {"vector": VECTOR, "k": 0}},
            400,
            "k must be",
        ),
        (
            "k = 1001",
            {"method": "GET", "url": f"/v1/products/{PHOTO_SKU}/similar", "headers": search, "params": {"k": 1001}},
            422,
            "k",
        ),
        (
            "an unknown query parameter",
            {"method": "GET", "url": f"/v1/products/{PHOTO_SKU}/similar", "headers": search, "params": {"debug": 1}},
            422,
            "unknown parameter",
        ),
        (
            "an unknown JSON field",
            {"method": "POST", "url": "/v1/search", "headers": search, "json": {"vector": VECTOR, "sql": "1"}},
            422,
            "unknown field",
        ),
        ("a NUL in a SKU", {"method": "GET", "url": "/v1/products/a%00b/similar", "headers": search}, 400, "NUL"),
        (
            "path traversal in a SKU",
            {"method": "GET", "url": "/v1/products/..%2F..%2Fetc%2Fpasswd/similar", "headers": search},
            404,
            "unknown SKU",
        ),
        (
            "path traversal to a file",
            {"method": "GET", "url": "/photos", "headers": search, "params": {"ref": "../../../../etc/passwd"}},
            404,
            "no such photo",
        ),
        (
            "a file under the roots that is no photo",
            {"method": "GET", "url": "/photos", "headers": search, "params": {"ref": "products.csv"}},
            404,
            "no such photo",
        ),
        (
            "a wrong content type",
            {
                "method": "POST",
                "url": "/v1/search",
                "headers": {**search, "Content-Type": "text/plain"},
                "content": b"x",
            },
            415,
            "multipart",
        ),
        (
            "a forged origin's preflight",
            {
                "method": "OPTIONS",
                "url": "/v1/search",
                "headers": {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            },
            400,
            "",
        ),
    ]


def test_every_hostile_request_is_refused_with_the_right_4xx_and_one_json_line(
    served: tuple[Service, dict[str, str]],
) -> None:
    running, keys = served
    failures = []
    for what, request, expected, word in _probes(keys):
        response = running.client.request(**request)
        problem = None
        if response.status_code != expected:
            problem = f"status {response.status_code}, expected {expected}: {response.text[:200]}"
        elif word:  # every refusal but the CORS preflight's (Starlette's own plain text) is one JSON error line
            body = response.json() if response.headers.get("content-type") == "application/json" else None
            if not isinstance(body, dict) or list(body) != ["error"] or "\n" in body["error"]:
                problem = f"not one JSON error line: {response.text[:200]}"
            elif word not in body["error"] or "Traceback" in response.text:
                problem = f"error {body['error']!r} lacks {word!r}"
        if response.headers.get("access-control-allow-origin") not in (None, SHOP):
            problem = "a CORS header for another origin than the shop's"
        if problem:
            failures.append(f"{what}: {problem}")
    assert not failures, "\n".join(failures)
    # The same requests left the service well: it still answers the shop's own requests, and counted no 5xx.
    search = {"Authorization": f"Bearer {keys['search']}"}
    assert running.client.post("/v1/search", json={"vector": VECTOR, "k": 2}, headers=search).status_code == 200
    metrics = running.client.get("/metrics").text
    assert not [line for line in metrics.splitlines() if 'status="5' in line]
    assert "Traceback" not in running.stderr()


def test_a_file_outside_the_roots_is_not_served_even_with_the_admin_key(
    served: tuple[Service, dict[str, str]],
) -> None:
    running, keys = served
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    for ref in ("/etc/passwd", str(EXAMPLES.parent / "pyproject.toml"), "..", "%2e%2e/%2e%2e/etc/passwd"):
        answer = running.client.get("/photos", params={"ref": ref}, headers=admin)
        assert answer.status_code == 404 and answer.json() == {"error": "no such photo under the service's image roots"}
