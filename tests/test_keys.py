"""API keys and request budgets of the HTTP service: the commands, and a real `imgsearch serve` over loopback."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from imgsearch import Catalogue, keys
from imgsearch.cli import main
from imgsearch.errors import InvalidQueryError
from tests.samples import SampleCatalogue
from tests.test_service import Service

VECTOR_SEARCH = {"vector": [0.1] * 512, "k": 2}


@pytest.fixture
def catalogue_url(make_database: Callable[..., str], sample_catalogue: SampleCatalogue) -> str:
    return make_database(template=sample_catalogue.template)


def _cli(url: str, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(main, ["--database-url", url, *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def test_the_key_commands(catalogue_url: str) -> None:
    made = _cli(catalogue_url, "keys", "create", "shop-website", "--scope", "write")
    key = made.stdout.strip().splitlines()[-1]
    assert made.stdout.strip() == key and key.startswith(keys.KEY_PREFIX) and len(key) == 47  # alone, shown once
    assert "shown once" in made.stderr
    listed = _cli(catalogue_url, "keys", "list").stdout
    assert "shop-website" in listed and "write" in listed and key[:10] in listed and key not in listed
    again = _cli(catalogue_url, "keys", "create", "shop-website", code=1)
    assert again.stderr.strip() == "Error: there is already a key named 'shop-website' (names are never reused)"
    assert _cli(catalogue_url, "keys", "create", "x", "--scope", "root", code=2).exit_code == 2
    assert "1 to 100 letters" in _cli(catalogue_url, "keys", "create", "bad name", code=1).stderr
    assert _cli(catalogue_url, "keys", "revoke", "shop-website").stdout.strip() == "key shop-website revoked"
    assert "no active key" in _cli(catalogue_url, "keys", "revoke", "shop-website", code=1).stderr
    assert "revoked" in _cli(catalogue_url, "keys", "list").stdout
    # Only the digest is stored.
    shop = Catalogue(catalogue_url)
    with shop.engine().connect() as conn:
        stored = conn.exec_driver_sql("SELECT key_sha256, prefix FROM api_keys").one()
    assert bytes(stored[0]) == keys.digest(key) and stored[1] == key[:10]
    shop.close()


def test_a_served_catalogue_needs_a_key_of_the_right_scope_once_one_exists(
    catalogue_url: str, fake_weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGSEARCH_KEY_CACHE_SECONDS", "0")  # a revoked key is refused at once (test only)
    running = Service(catalogue_url, fake_weights)
    shop = Catalogue(catalogue_url)
    try:
        client = running.client
        assert client.post("/search", json=VECTOR_SEARCH).status_code == 200  # no key yet: open on loopback
        _, search_key = shop.create_key("website", "search")
        _, write_key = shop.create_key("website-events", "write")
        bearer = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731

        def refused(response: Any, status: int) -> str:
            assert response.status_code == status, response.text
            body = response.json()
            assert list(body) == ["error"] and "Traceback" not in body["error"]
            return body["error"]

        missing = client.post("/search", json=VECTOR_SEARCH)
        assert "API key is needed" in refused(missing, 401) and missing.headers["www-authenticate"] == "Bearer"
        assert "unknown or revoked" in refused(client.post("/search", json=VECTOR_SEARCH, headers=bearer("x")), 401)
        assert "Bearer" in refused(
            client.post("/search", json=VECTOR_SEARCH, headers={"Authorization": f"Basic {search_key}"}), 401
        )
        assert client.post("/search", json=VECTOR_SEARCH, headers=bearer(search_key)).status_code == 200
        assert client.get("/products/shoes-24535295/similar", headers=bearer(search_key)).status_code == 200
        event = {"events": [{"event_id": uuid.uuid4().hex, "kind": "click", "search_id": "s"}]}
        assert "needs write" in refused(client.post("/events", json=event, headers=bearer(search_key)), 403)
        assert "needs write" in refused(client.post("/v1/events", json=event, headers=bearer(search_key)), 403)
        assert client.post("/events", json=event, headers=bearer(write_key)).json() == {"stored": 1, "duplicates": 0}
        for open_path in ("/livez", "/readyz", "/metrics", "/openapi.json", "/"):
            assert client.get(open_path).status_code == 200, open_path
        shop.revoke_key("website")
        assert "revoked" in refused(client.post("/search", json=VECTOR_SEARCH, headers=bearer(search_key)), 401)
        assert 'status="401"' in client.get("/metrics").text  # refusals are counted
    finally:
        running.close()
        shop.close()


def test_a_keys_budget_is_enforced_with_retry_after(catalogue_url: str, fake_weights: str) -> None:
    shop = Catalogue(catalogue_url)
    _, key = shop.create_key("busy", "search")
    shop.close()
    running = Service(catalogue_url, fake_weights, "--rate-limit", "3")
    try:
        headers = {"Authorization": f"Bearer {key}"}
        answers = [running.client.post("/search", json=VECTOR_SEARCH, headers=headers) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert 1 <= int(answers[-1].headers["retry-after"]) <= 20  # 3 a minute: one more in 20 s at most
        assert "more than 3 requests a minute" in answers[-1].json()["error"]
    finally:
        running.close()


def test_beyond_loopback_a_key_is_needed_even_before_the_first_exists(catalogue_url: str, fake_weights: str) -> None:
    running = Service(catalogue_url, fake_weights, "--host", "0.0.0.0")
    try:
        response = running.client.post("/search", json=VECTOR_SEARCH)
        assert response.status_code == 401 and "API key is needed" in json.loads(response.text)["error"]
        assert running.client.get("/livez").status_code == 200
    finally:
        running.close()


def test_library_checks() -> None:
    assert keys.allows("admin", "write") and keys.allows("write", "search") and not keys.allows("search", "write")
    with pytest.raises(InvalidQueryError, match="scope must be one of"):
        keys.create(None, "name", "everything")  # type: ignore[arg-type]  # refused before the database


def test_0013_adds_the_keys_to_a_populated_catalogue_and_takes_them_back(make_database: Callable[..., str]) -> None:
    import numpy as np
    import sqlalchemy as sa

    from imgsearch import catalogue, db, schema
    from imgsearch.catalogue import ProductRecord

    engine = db.create_engine(make_database())
    schema.upgrade(engine, "0012")
    vectors = np.random.default_rng(5).normal(size=(200, 512)).astype(np.float32)
    catalogue.upsert_products(
        engine, [ProductRecord(sku=f"p{i}", category=f"c{i % 3}", embedding=v) for i, v in enumerate(vectors)]
    )
    from imgsearch import feedback

    feedback.record(engine, [{"event_id": "e1", "kind": "click", "search_id": "s", "sku": "p1"}])

    def rows() -> list[Any]:
        with engine.connect() as conn:
            products = conn.execute(
                sa.text(
                    "SELECT p.sku, p.category, i.embedding::text FROM imgsearch.products p "
                    "JOIN imgsearch.product_images i ON i.product_id = p.id ORDER BY p.sku"
                )
            ).all()
            events = conn.execute(sa.text("SELECT event_id, kind FROM imgsearch.search_events")).all()
        return [*products, *events]

    before = rows()
    schema.upgrade(engine)
    assert rows() == before
    _, key = keys.create(engine, "k1", "search")
    assert keys.check(engine, key).key == keys.ApiKey("k1", "search", "")
    schema.downgrade(engine, "0012")
    assert rows() == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('imgsearch.api_keys')")).scalar() is None
    schema.upgrade(engine)
    assert rows() == before and keys.check(engine, key).key is None and not keys.check(engine, None).any_active
    engine.dispose()


def test_every_request_gets_an_id_and_a_json_line_in_the_access_log(catalogue_url: str, fake_weights: str) -> None:
    shop = Catalogue(catalogue_url)
    _, key = shop.create_key("logged", "search")
    shop.close()
    running = Service(catalogue_url, fake_weights)
    try:
        headers = {"Authorization": f"Bearer {key}", "X-Request-ID": "shop-request-17"}
        passed = running.client.post("/search", json=VECTOR_SEARCH, headers=headers)
        assert passed.status_code == 200 and passed.headers["x-request-id"] == "shop-request-17"
        made = running.client.post("/search", json=VECTOR_SEARCH)  # no key: 401, still logged with an id
        assert made.status_code == 401 and len(made.headers["x-request-id"]) == 32
    finally:
        stderr = running.close()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    mine = next(line for line in lines if line["request_id"] == "shop-request-17")
    assert (mine["key"], mine["method"], mine["route"], mine["status"]) == ("logged", "POST", "/search", 200)
    assert mine["ms"] > 0
    refused = next(line for line in lines if line["request_id"] == made.headers["x-request-id"])
    assert (refused["key"], refused["status"]) == (None, 401)


def test_a_photo_by_address_is_searched_and_private_addresses_are_refused(
    catalogue_url: str, fake_weights: str, sample_catalogue: SampleCatalogue
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    photo = sorted((sample_catalogue.shop / "catalogue" / "shoes").glob("*.jpg"))[0]

    class Photos(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = photo.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Photos)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local = f"http://127.0.0.1:{server.server_address[1]}/look.jpg"
    guarded = Service(catalogue_url, fake_weights)
    try:
        for url in (local, "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/x.jpg", "http://10.0.0.7/a"):
            refused = guarded.client.post("/search", json={"image_url": url})
            assert refused.status_code == 400 and "not a public address" in refused.json()["error"], url
        scheme = guarded.client.post("/search", json={"image_url": "file:///etc/passwd"})
        assert scheme.status_code == 400 and "http:// or https://" in scheme.json()["error"]
    finally:
        guarded.close()
    trusting = Service(catalogue_url, fake_weights, "--allow-private-urls")
    try:
        by_url = trusting.client.post("/search", json={"image_url": local, "k": 3}).json()
        by_upload = trusting.client.post(
            "/search", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, data={"k": "3"}
        ).json()
        assert [r["sku"] for r in by_url] == [r["sku"] for r in by_upload] and len(by_url) == 3
    finally:
        trusting.close()
        server.shutdown()
        server.server_close()


def test_a_key_that_has_expired_is_refused_and_says_so(
    catalogue_url: str, fake_weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa

    made = _cli(catalogue_url, "keys", "create", "partner-trial", "--expires-in", "30d")
    key = made.stdout.strip().splitlines()[-1]
    assert "until" in made.stderr
    assert "active, expires" in _cli(catalogue_url, "keys", "list").stdout
    for bad in ("0d", "30", "3w", "-1d"):
        refused = _cli(catalogue_url, "keys", "create", f"bad-{bad}", "--expires-in", bad, code=2)
        assert "is not a duration" in refused.output
    monkeypatch.setenv("IMGSEARCH_KEY_CACHE_SECONDS", "0")
    running = Service(catalogue_url, fake_weights)
    shop = Catalogue(catalogue_url)
    try:
        bearer = {"Authorization": f"Bearer {key}"}
        assert running.client.post("/v1/search", json=VECTOR_SEARCH, headers=bearer).status_code == 200
        with shop.engine("admin").begin() as conn:  # time passes: the key's month is over
            conn.execute(
                sa.text(
                    "UPDATE imgsearch.api_keys SET created_at = now() - interval '31 days', "
                    "expires_at = now() - interval '1 day' WHERE name = 'partner-trial'"
                )
            )
        expired = running.client.post("/v1/search", json=VECTOR_SEARCH, headers=bearer)
        assert expired.status_code == 401 and expired.json() == {"error": "this API key has expired"}
        # Keys stay required although none is valid now: expiry never opens the service.
        assert running.client.post("/v1/search", json=VECTOR_SEARCH).status_code == 401
        assert "expired" in _cli(catalogue_url, "keys", "list").stdout
    finally:
        running.close()
        shop.close()
    with pytest.raises(InvalidQueryError, match="1 minute to 10 years"):
        keys.create(Catalogue(catalogue_url).engine("owner"), "too-short", "search", timedelta(seconds=5))


def test_0014_adds_expiry_to_the_keys_and_takes_it_back(make_database: Callable[..., str]) -> None:
    import sqlalchemy as sa

    from imgsearch import db, schema

    engine = db.create_engine(make_database())
    schema.upgrade(engine, "0013")
    with engine.begin() as conn:  # a key made before keys could expire, the way 0013 made them
        digest = keys.digest("isk_" + "a" * 43)
        conn.execute(
            sa.text(
                "INSERT INTO imgsearch.api_keys (name, scope, key_sha256, prefix) VALUES ('old', 'admin', :d, 'x')"
            ),
            {"d": digest},
        )
    schema.upgrade(engine)
    assert keys.check(engine, "isk_" + "a" * 43).key == keys.ApiKey("old", "admin", "")  # still works, no expiry
    _, soon = keys.create(engine, "soon", "search", timedelta(days=1))
    _, gone = keys.create(engine, "gone", "search", timedelta(days=1))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE imgsearch.api_keys SET created_at = now() - interval '2 days', "
                "expires_at = now() - interval '1 day' WHERE name = 'gone'"
            )
        )
    assert keys.check(engine, gone).expired and keys.check(engine, soon).key is not None
    schema.downgrade(engine, "0013")
    # Down again: the expired key is revoked (it never works again), the others keep working (0013's check).
    with engine.connect() as conn:
        check = sa.text("SELECT name FROM imgsearch.imgsearch_api_key(:d)")
        assert conn.execute(check, {"d": keys.digest(gone)}).scalar() is None
        assert conn.execute(check, {"d": keys.digest(soon)}).scalar() == "soon"
        revoked = conn.execute(sa.text("SELECT name FROM imgsearch.api_keys WHERE revoked_at IS NOT NULL")).all()
    assert revoked == [("gone",)]
    schema.upgrade(engine)
    assert sorted(k.name for k in keys.list_keys(engine)) == ["gone", "old", "soon"]  # every key kept
    engine.dispose()
