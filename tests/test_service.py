"""The HTTP service through a real HTTP client against a real server on loopback: every endpoint, every class of
error (each a 4xx or 503 with one JSON line), limits, least privilege and path safety."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
import uvicorn
from click.testing import CliRunner
from PIL import Image
from sqlalchemy.engine import make_url

from imgsearch import db, output, roles, schema
from imgsearch.cli import main
from imgsearch.config import Settings
from imgsearch.embedding import Featurizer
from imgsearch.service import ServiceLimits, create_app
from tests.samples import SampleCatalogue

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PHOTO = EXAMPLES / "catalogue" / "shoes" / "24535295-abe3-4613-91f6-a7fe87954662.jpg"
PHOTO_SKU = "shoes-24535295"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``imgsearch serve`` in a subprocess, and a client for it."""

    def __init__(self, url: str, weights: str, *options: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "imgsearch", "--database-url", url, "--weights", weights, "serve"]
        # stderr to a file, not a pipe: the access log writes a line per request, and a full pipe nobody reads
        # would stop the service.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close(), which every user calls)
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *options],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env=os.environ.copy(),
        )
        self.client = httpx.Client(base_url=self.base, timeout=60)
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.stderr()
            try:
                if self.client.get("/livez").status_code == 200:  # answering; ready or not is for the test
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)

    def stderr(self) -> str:
        """What the service wrote to stderr so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self) -> str:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:  # requests still queued for the model: no need to wait for them
            self.process.kill()
            self.process.wait()
        stderr = self.stderr()
        self.log.close()
        return stderr


@pytest.fixture(scope="module")
def catalogue_url(make_database: Callable[..., str], sample_catalogue: SampleCatalogue) -> str:
    return make_database(template=sample_catalogue.template)


@pytest.fixture(scope="module")
def service(catalogue_url: str, fake_weights: str, sample_catalogue: SampleCatalogue) -> Iterator[Service]:
    running = Service(catalogue_url, fake_weights, "--image-root", str(sample_catalogue.shop))
    yield running
    running.close()


def _photo(path: Path = PHOTO) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


def _error(response: httpx.Response, status: int) -> str:
    """The response is the given error status with a one-line JSON error, and nothing else."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def test_search_by_photo_gives_the_clis_json(service: Service, catalogue_url: str, fake_weights: str) -> None:
    response = service.client.post("/search", files=_photo(), data={"k": "5"})
    assert response.status_code == 200
    rows = response.json()
    assert [list(r) for r in rows] == [list(output.RESULT_FIELDS)] * 5
    assert rows[0]["sku"] == PHOTO_SKU and rows[0]["distance"] < 1e-4
    cli = CliRunner().invoke(
        main,
        [
            "--database-url",
            catalogue_url,
            "--weights",
            fake_weights,
            "search",
            str(PHOTO),
            "-k",
            "5",
            "--format",
            "json",
        ],
    )
    assert rows == json.loads(cli.stdout)  # exactly the fields, order and values of `--format json`


def test_filters_repeatable_categories_and_prices(service: Service) -> None:
    form = {"k": "20", "category": ["hat", "shoes"], "in_stock_only": "false", "max_price": "50"}
    rows = service.client.post("/search", files=_photo(), data=form).json()
    assert rows and {r["category"] for r in rows} <= {"hat", "shoes"}
    assert all(r["price"] <= 50 for r in rows) and not all(r["in_stock"] for r in rows)


def test_embed_then_search_by_vector(service: Service, fake_featurizer: Featurizer) -> None:
    embedded = service.client.post("/embed", files=_photo()).json()
    assert embedded["dimension"] == 512 and embedded["preprocessing"] == fake_featurizer.space.preprocessing_version
    assert np.allclose(embedded["vector"], fake_featurizer.embed_image(PHOTO), atol=1e-4)
    by_vector = service.client.post("/search", json={"vector": embedded["vector"], "k": 5, "category": "shoes"})
    by_photo = service.client.post("/search", files=_photo(), data={"k": "5", "category": "shoes"})
    assert [r["sku"] for r in by_vector.json()] == [r["sku"] for r in by_photo.json()]


def test_search_many_by_vectors(service: Service, fake_featurizer: Featurizer) -> None:
    vector = service.client.post("/embed", files=_photo()).json()["vector"]
    other = [-x for x in vector]
    many = service.client.post("/search/many", json={"vectors": [vector, other], "k": 3, "category": "shoes"})
    assert many.status_code == 200
    single = [
        service.client.post("/search", json={"vector": v, "k": 3, "category": "shoes"}).json() for v in (vector, other)
    ]
    assert many.json() == single
    for body, status in (
        ({"vectors": []}, 400),
        ({"vectors": "x"}, 400),
        ({"vector": vector}, 400),
        ({"vectors": [vector[:10]]}, 400),
    ):
        answer = service.client.post("/search/many", json=body)
        assert answer.status_code == status and "error" in answer.json(), body


def test_similar_and_cheaper(service: Service) -> None:
    similar = service.client.get(f"/products/{PHOTO_SKU}/similar", params={"k": 3, "category": "shoes"}).json()
    assert len(similar) == 3 and PHOTO_SKU not in {r["sku"] for r in similar}
    cheaper = service.client.get(f"/products/{PHOTO_SKU}/cheaper", params={"k": 3}).json()
    assert cheaper and all(r["price"] < 99.99 and r["in_stock"] and r["category"] == "shoes" for r in cheaper)
    anywhere = service.client.get(f"/products/{PHOTO_SKU}/cheaper", params={"k": 3, "any_category": "true"})
    assert anywhere.status_code == 200


def test_liveness_readiness_and_the_deprecated_healthz(service: Service) -> None:
    assert service.client.get("/livez").json() == {"status": "ok"}
    ready = service.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "schema": schema.head_revision(), "model": "loaded"}
    health = service.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, ready.json())  # the same answer, for one more release
    for path in ("/livez", "/readyz", "/healthz"):  # what load balancers and Docker may send
        head = service.client.head(path)
        assert (head.status_code, head.content) == (200, b""), path


def test_metrics_and_categories(service: Service) -> None:
    service.client.post("/search", files=_photo(), data={"k": "3"})
    service.client.get("/products/nope/similar")
    metrics = service.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'imgsearch_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'imgsearch_http_request_duration_seconds_bucket{route="/search",le="+Inf"}' in text
    assert 'imgsearch_http_errors_total{route="/products/{sku:path}/similar",kind="UnknownSkuError"}' in text
    categories = service.client.get("/categories").json()
    assert {"category": "shoes", "products": 12} in categories


#: What the service answers outside its API: the page, its files and FastAPI's own documentation routes.
UNDOCUMENTED = {"/", "/static/{name}", "/openapi.json", "/docs", "/docs/assets/{name}", "/redoc"}


def test_openapi_operation_ids_are_unique_and_every_path_is_documented(service: Service) -> None:
    document = service.client.get("/openapi.json")
    assert document.status_code == 200
    paths = document.json()["paths"]
    operations = {(path, method): op for path, ops in paths.items() for method, op in ops.items()}
    ids = [op["operationId"] for op in operations.values()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)  # code generators need this
    versioned = {
        "/search": {"post"},
        "/search/many": {"post"},
        "/events": {"post"},
        "/products/{sku}/similar": {"get"},
        "/products/{sku}/cheaper": {"get"},
        "/embed": {"post"},
    }
    expected = {
        **versioned,
        **{f"/v1{path}": methods for path, methods in versioned.items()},
        "/livez": {"get", "head"},
        "/readyz": {"get", "head"},
        "/healthz": {"get", "head"},
        "/metrics": {"get"},
        "/categories": {"get"},
        "/photos": {"get"},
    }
    assert {path: set(ops) for path, ops in paths.items()} == expected
    # Every route the application answers, except the page, its files and the documentation itself, is in it
    # (so a route added later without documentation fails here).
    app = create_app(Settings.from_env(), limits=ServiceLimits()).fastapi  # type: ignore[attr-defined]
    routes, answered = list(app.routes), []
    while routes:  # routers included in the application hold their own routes
        route = routes.pop()
        routes.extend(getattr(getattr(route, "original_router", None), "routes", ()))
        if hasattr(route, "path"):
            answered.append(route)
    assert len(answered) > len(paths)
    for route in answered:
        if route.path not in UNDOCUMENTED:
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {sku:path} is documented as {sku}
            assert {m.lower() for m in route.methods} <= set(paths.get(path, {})), route.path
    categories = paths["/categories"]["get"]["responses"]["200"]
    assert categories["description"] != "Successful Response" and "category" in categories["description"]
    assert categories["content"]["application/json"]["example"] == [{"category": "shoes", "products": 12}]
    healthz = paths["/healthz"]["get"]
    assert healthz["deprecated"] is True and healthz["summary"].startswith("Deprecated (use /readyz")
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert "multipart/form-data" in paths["/search"]["post"]["requestBody"]["content"]
    # The versioned paths carry the operationIds; the old ones are deprecated for one release.
    for path in versioned:
        assert "deprecated" not in paths[f"/v1{path}"][next(iter(versioned[path]))]
        assert paths[path][next(iter(versioned[path]))]["deprecated"] is True
    assert paths["/v1/search"]["post"]["operationId"] == "search"


def test_the_api_description_is_typed_and_answers_match_it(service: Service) -> None:
    from pydantic import TypeAdapter

    from imgsearch import http_models

    paths = service.client.get("/openapi.json").json()["paths"]
    search = paths["/v1/search"]["post"]
    assert search["responses"]["200"]["content"]["application/json"]["schema"]["items"]["$ref"].endswith(
        "/SearchResult"
    )
    assert search["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    variants = search["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert [sorted(v["required"]) for v in variants] == [["vector"], ["image_url"], ["text"]]
    assert all(v["additionalProperties"] is False for v in variants)
    for path, method, model in (
        ("/v1/products/{sku}/similar", "get", "SearchResult"),
        ("/v1/events", "post", "Stored"),
        ("/v1/embed", "post", "Embedding"),
        ("/categories", "get", "CategoryCount"),
        ("/readyz", "get", "Readiness"),
        ("/livez", "get", "Liveness"),
    ):
        assert model in json.dumps(paths[path][method]["responses"]["200"]), path
    # What the service answers is what it describes.
    results = TypeAdapter(list[http_models.SearchResult])
    by_vector = service.client.post("/v1/search", json={"vector": [0.1] * 512, "k": 3})
    assert len(results.validate_python(by_vector.json())) == 3
    by_photo = service.client.post("/v1/search", files=_photo(), data={"k": "3"}).json()
    assert results.validate_python(by_photo)[0].match == "exact"
    similar = service.client.get(f"/v1/products/{PHOTO_SKU}/similar", params={"k": 2}).json()
    assert len(results.validate_python(similar)) == 2
    many = service.client.post("/v1/search/many", json={"vectors": [[0.1] * 512] * 2, "k": 2}).json()
    assert [len(r) for r in TypeAdapter(list[list[http_models.SearchResult]]).validate_python(many)] == [2, 2]
    http_models.Readiness.model_validate(service.client.get("/readyz").json())
    TypeAdapter(list[http_models.CategoryCount]).validate_python(service.client.get("/categories").json())
    refused = service.client.post("/v1/search", json={"vector": [0.1] * 3})
    assert refused.status_code == 400 and http_models.Error.model_validate(refused.json()).error
    # The model holds the fields of the CLI's JSON records, no more, no less.
    assert list(http_models.SearchResult.model_fields) == list(by_vector.json()[0])


def test_a_distance_threshold_over_http(service: Service) -> None:
    ten = service.client.post("/v1/search", json={"vector": [0.1] * 512, "k": 10}).json()
    limit = (ten[2]["distance"] + ten[3]["distance"]) / 2
    close = service.client.post("/v1/search", json={"vector": [0.1] * 512, "k": 10, "max_distance": limit}).json()
    assert close == ten[:3]
    # A photo of a catalogue product: the verified match stays however strict the threshold, nothing else does.
    strict = service.client.post("/v1/search", files=_photo(), data={"k": "5", "max_distance": "0"}).json()
    assert [(r["sku"], r["match"]) for r in strict] == [(PHOTO_SKU, "exact")]
    similar = service.client.get(f"/v1/products/{PHOTO_SKU}/similar", params={"k": 4}).json()
    between = (similar[1]["distance"] + similar[2]["distance"]) / 2  # the answers' distances are rounded
    near = service.client.get(f"/v1/products/{PHOTO_SKU}/similar", params={"k": 4, "max_distance": between}).json()
    assert near == similar[:2]
    assert "max_distance" in _error(
        service.client.post("/v1/search", json={"vector": [0.1] * 512, "max_distance": 3}), 400
    )
    assert "max_distance" in _error(service.client.post("/v1/search", files=_photo(), data={"max_distance": "x"}), 400)
    assert "max_distance" in _error(service.client.get(f"/v1/products/{PHOTO_SKU}/similar?max_distance=-1"), 422)


def test_pages_over_http_by_offset_and_by_cursor(service: Service) -> None:
    vector = {"vector": [0.1] * 512, "in_stock_only": False}
    whole = service.client.post("/v1/search", json={**vector, "k": 9}).json()
    second = service.client.post("/v1/search", json={**vector, "k": 3, "offset": 3}).json()
    assert [(r["sku"], r["rank"]) for r in second] == [(r["sku"], r["rank"]) for r in whole[3:6]]
    third = service.client.post("/v1/search", json={**vector, "k": 3, "cursor": second[-1]["cursor"]}).json()
    assert [r["sku"] for r in third] == [r["sku"] for r in whole[6:9]]
    by_photo = service.client.post("/v1/search", files=_photo(), data={"k": "4", "verify": "false"}).json()
    next_photo = service.client.post(
        "/v1/search", files=_photo(), data={"k": "2", "verify": "false", "cursor": by_photo[1]["cursor"]}
    ).json()
    assert [r["sku"] for r in next_photo] == [r["sku"] for r in by_photo[2:]]
    similar = service.client.get(f"/v1/products/{PHOTO_SKU}/similar", params={"k": 4}).json()
    page = service.client.get(f"/v1/products/{PHOTO_SKU}/similar", params={"k": 2, "cursor": similar[1]["cursor"]})
    assert [r["sku"] for r in page.json()] == [r["sku"] for r in similar[2:]]
    assert [r["rank"] for r in page.json()] == [3, 4]
    cheaper = service.client.get(f"/v1/products/{PHOTO_SKU}/cheaper", params={"k": 2, "offset": 1}).json()
    assert [r["rank"] for r in cheaper] == [2, 3][: len(cheaper)]
    assert "cursor is not" in _error(service.client.post("/v1/search", json={**vector, "cursor": "x"}), 400)
    assert "offset" in _error(service.client.post("/v1/search", json={**vector, "offset": -1}), 400)
    assert "offset" in _error(service.client.post("/v1/search", files=_photo(), data={"offset": "two"}), 400)
    assert "offset" in _error(service.client.get(f"/v1/products/{PHOTO_SKU}/similar?offset=1000"), 422)
    many = service.client.post("/v1/search/many", json={"vectors": [[0.1] * 512], "k": 3, "offset": 3}).json()
    assert [r["sku"] for r in many[0]] == [r["sku"] for r in whole[3:6]] and many[0][0]["rank"] == 4
    assert "cursor" in _error(
        service.client.post("/v1/search/many", json={"vectors": [[0.1] * 512], "cursor": "x"}), 422
    )


def test_the_search_space_is_chosen_per_request(service: Service) -> None:
    # Untuned, the raw space is the active one: the same answers (tests/test_tuning.py has a tuned catalogue).
    vector = {"vector": [0.1] * 512, "k": 4}
    active = service.client.post("/v1/search", json=vector).json()
    assert service.client.post("/v1/search", json={**vector, "search_space": "raw"}).json() == active
    raw = service.client.post("/v1/search/many", json={"vectors": [[0.1] * 512], "k": 4, "search_space": "raw"})
    assert raw.json() == [active]
    similar = service.client.get(f"/v1/products/{PHOTO_SKU}/similar", params={"k": 2, "search_space": "raw"})
    assert similar.status_code == 200 and len(similar.json()) == 2
    assert "search_space" in _error(service.client.post("/v1/search", json={**vector, "search_space": "x"}), 400)
    assert "search_space" in _error(service.client.get(f"/v1/products/{PHOTO_SKU}/cheaper?search_space=x"), 422)


def test_a_stopping_service_finishes_the_requests_under_way(catalogue_url: str, fake_weights: str) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked, release = threading.Event(), threading.Event()

    class SlowPhotos(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.set()
            release.wait(30)  # the service is told to stop meanwhile
            body = PHOTO.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            """Quiet."""

    photos = ThreadingHTTPServer(("127.0.0.1", 0), SlowPhotos)
    threading.Thread(target=photos.serve_forever, daemon=True).start()
    running = Service(catalogue_url, fake_weights, "--allow-private-urls", "--workers", "2")
    try:
        url = f"http://127.0.0.1:{photos.server_address[1]}/look.jpg"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            under_way = pool.submit(running.client.post, "/v1/search", json={"image_url": url, "k": 3})
            assert asked.wait(30), "the service never fetched the photo"
            running.process.terminate()  # SIGTERM, as Docker, systemd and Kubernetes stop it
            # Soon no new request is answered (refused, or left unanswered), while the one under way goes on.
            deadline, taken = time.monotonic() + 4, True
            while taken and time.monotonic() < deadline:
                try:
                    httpx.get(f"{running.base}/livez", timeout=0.5)
                    time.sleep(0.1)
                except httpx.TransportError:
                    taken = False
            assert not taken, "the stopping service still answered new requests"
            assert not under_way.done()
            release.set()  # only now does the photo arrive: the request under way must still be answered
            answered = under_way.result(timeout=60)
        assert answered.status_code == 200, answered.text
        assert answered.json()[0]["sku"] == PHOTO_SKU
        assert running.process.wait(timeout=30) == 0
    finally:
        release.set()
        photos.shutdown()
        photos.server_close()
        stderr = running.close()
    assert "Traceback" not in stderr, stderr


def test_several_photos_of_one_thing_over_http(service: Service) -> None:
    dress = EXAMPLES / "catalogue" / "dress" / "07cddef1-1fc8-47e4-a28a-613e60912590.jpg"
    files = [
        ("image", ("front.jpg", PHOTO.read_bytes(), "image/jpeg")),
        ("image", ("b.jpg", dress.read_bytes(), "image/jpeg")),
    ]
    both = service.client.post("/v1/search", files=files, data={"k": "3"}).json()
    assert {r["sku"] for r in both[:2]} == {PHOTO_SKU, "dress-07cddef1"} and both[2]["match"] == "similar"
    assert "crop" in _error(service.client.post("/v1/search", files=files, data={"crop": "0,0,9,9"}), 400)
    six = [("image", (f"{i}.jpg", PHOTO.read_bytes(), "image/jpeg")) for i in range(6)]
    assert "files" in _error(service.client.post("/v1/search", files=six), 400).lower()
    assert "files" in _error(service.client.post("/v1/embed", files=files), 400).lower()  # one photo there


def test_a_trickled_upload_is_cut_off_at_the_request_timeout(catalogue_url: str, fake_weights: str) -> None:
    running = Service(catalogue_url, fake_weights, "--timeout", "2", "--max-upload-mb", "0.05")
    try:
        for path, kind in (("/v1/search", "multipart/form-data; boundary=x"), ("/v1/events", "application/json")):
            with socket.create_connection(("127.0.0.1", running.port), timeout=20) as sock:
                head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: 100000\r\n\r\n"
                sock.sendall(head.encode() + b"--x\r\n")
                started = time.monotonic()
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    sock.sendall(b"a")  # a byte now and then: never idle, never done
                    time.sleep(0.2)
                    sock.setblocking(False)
                    try:
                        answer += sock.recv(65536)
                    except BlockingIOError:
                        pass
                    finally:
                        sock.setblocking(True)
                    assert time.monotonic() - started < 10, answer
            status, _, body = answer.partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 408"), answer
            assert json.loads(body) == {"error": "the request body did not arrive within 2 s"}
            assert 1.5 < time.monotonic() - started < 6
        # A request whose body arrives in time is answered as usual; one too large without saying its length (sent
        # in chunks) is a 413 as well.
        assert running.client.post("/v1/search", json={"vector": [0.1] * 512, "k": 1}).status_code == 200
        chunks = (b'{"events": [' + b" " * 50_000 for _ in range(8))
        too_large = running.client.post("/v1/events", content=chunks, headers={"Content-Type": "application/json"})
        assert too_large.status_code == 413 and "larger than" in too_large.json()["error"]
    finally:
        stderr = running.close()
    assert "Traceback" not in stderr


def test_a_misspelt_json_field_is_refused_not_ignored(service: Service) -> None:
    misspelt = service.client.post("/v1/search", json={"vector": [0.1] * 512, "in_stock": False})
    assert misspelt.status_code == 422, misspelt.text
    error = misspelt.json()["error"]
    assert error.startswith("in_stock: unknown field (this request takes: ") and "in_stock_only" in error
    by_url = service.client.post("/v1/search", json={"image_url": "https://shop.example/a.jpg", "verfy": False})
    assert by_url.status_code == 422 and by_url.json()["error"].startswith("verfy: unknown field")
    many = service.client.post("/v1/search/many", json={"vectors": [[0.1] * 512], "limit": 3})
    assert many.status_code == 422 and many.json()["error"].startswith("limit: unknown field")
    events = service.client.post("/v1/events", json={"events": [], "dry_run": True})
    assert events.status_code == 422 and events.json()["error"].startswith("dry_run: unknown field")
    # Both spellings of the categories and every documented field are taken.
    fine = {"vector": [0.1] * 512, "k": 2, "categories": ["shoes"], "in_stock_only": False, "max_price": 1000}
    assert service.client.post("/v1/search", json={**fine, "exclude_skus": []}).status_code == 200


def test_the_api_documentation_pages_need_nothing_from_the_internet(service: Service) -> None:
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = service.client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        # Every script, style sheet, font and icon it loads is the service's own.
        loaded = re.findall(r"""(?:src|href|spec-url)=["']?([^"' >]+)|url: ?['"]([^'"]+)""", html.text)
        addresses = {a or b for a, b in loaded}
        assert f"/docs/assets/{script}" in addresses and "/openapi.json" in addresses, addresses
        assert not [a for a in addresses if "//" in a], addresses
    for name, kind in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
        asset = service.client.get(f"/docs/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert len(asset.content) > 100_000
    assert service.client.get("/docs/assets/..%2Fcore.py").status_code == 404
    assert service.client.get("/docs/assets/core.py").status_code == 404


def test_the_website_reports_events_and_a_batch_sent_again_is_stored_once(service: Service) -> None:
    events = [
        {"event_id": f"web-{uuid.uuid4().hex}", "kind": "impression", "search_id": "s1", "sku": "shoes-24535295"},
        {"event_id": f"web-{uuid.uuid4().hex}", "kind": "click", "search_id": "s1", "sku": "shoes-24535295", "rank": 1},
    ]
    first = service.client.post("/events", json={"events": events})
    assert first.status_code == 200 and first.json() == {"stored": 2, "duplicates": 0}
    assert service.client.post("/events", json={"events": events}).json() == {"stored": 0, "duplicates": 2}
    post = lambda body: service.client.post("/events", json=body)  # noqa: E731
    assert "kind must be one of" in _error(post({"events": [{**events[0], "kind": "glance"}]}), 400)
    assert "NUL" in _error(post({"events": [{**events[0], "event_id": "a\x00b"}]}), 400)
    assert "events" in _error(post({"events": []}), 400)
    assert "at most 1000" in _error(post({"events": [events[0]] * 1001}), 400)
    assert "events" in _error(post({"clicks": events}), 400)


def test_cors_lets_the_shops_own_pages_call_the_api_and_no_other_origin(catalogue_url: str, fake_weights: str) -> None:
    shop, evil = "https://shop.example", "https://evil.example"
    running = Service(catalogue_url, fake_weights, "--cors-origin", shop, "--cors-origin", "http://localhost:3000")
    try:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        allowed = running.client.options("/search", headers={"Origin": shop, **preflight})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == shop
        assert "POST" in allowed.headers["access-control-allow-methods"]
        forged = running.client.options("/search", headers={"Origin": evil, **preflight})
        assert forged.status_code == 400 and "access-control-allow-origin" not in forged.headers
        answered = running.client.post("/search", json={"vector": [0.1] * 512, "k": 2}, headers={"Origin": shop})
        assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == shop
        other = running.client.post("/search", json={"vector": [0.1] * 512, "k": 2}, headers={"Origin": evil})
        assert "access-control-allow-origin" not in other.headers  # the browser withholds the answer
    finally:
        running.close()
    # Without --cors-origin no origin is allowed; a malformed origin is refused before the service starts.
    plain = Service(catalogue_url, fake_weights)
    try:
        answer = plain.client.get("/livez", headers={"Origin": shop})
        assert "access-control-allow-origin" not in answer.headers
    finally:
        plain.close()
    result = CliRunner().invoke(
        main, ["--database-url", catalogue_url, "--weights", fake_weights, "serve", "--cors-origin", "https://a/b"]
    )
    assert result.exit_code == 1 and result.output.startswith("Error: not a web origin: 'https://a/b'")


def test_skus_can_be_left_out_of_every_search(service: Service) -> None:
    first = service.client.post("/search", json={"vector": [0.1] * 512, "k": 3}).json()
    skipped = [first[0]["sku"], first[1]["sku"]]
    rest = service.client.post("/search", json={"vector": [0.1] * 512, "k": 3, "exclude_skus": skipped}).json()
    assert len(rest) == 3 and not {r["sku"] for r in rest} & set(skipped) and rest[0]["sku"] == first[2]["sku"]
    by_photo = service.client.post("/search", files=_photo(), data={"k": "3", "exclude_sku": [PHOTO_SKU]}).json()
    assert len(by_photo) == 3 and PHOTO_SKU not in {r["sku"] for r in by_photo}
    similar = service.client.get(f"/products/{PHOTO_SKU}/similar", params={"k": 2}).json()
    fewer = service.client.get(
        f"/products/{PHOTO_SKU}/similar", params={"k": 2, "exclude_sku": similar[0]["sku"]}
    ).json()
    assert similar[0]["sku"] not in {r["sku"] for r in fewer} and fewer[0]["sku"] == similar[1]["sku"]
    bad = service.client.post("/search", json={"vector": [0.1] * 512, "exclude_skus": "shoes-1"})
    assert "exclude_skus must be a list" in _error(bad, 400)


def test_the_versioned_paths_answer_and_the_old_ones_say_they_are_deprecated(service: Service) -> None:
    body = {"vector": [0.1] * 512, "k": 2}
    current = service.client.post("/v1/search", json=body)
    assert current.status_code == 200 and "deprecation" not in current.headers
    old = service.client.post("/search", json=body)
    assert old.json() == current.json() and old.headers["deprecation"] == "true"
    assert old.headers["link"] == '</v1/search>; rel="successor-version"'
    similar = service.client.get(f"/products/{PHOTO_SKU}/similar", params={"k": 2})
    assert similar.headers["link"] == f'</v1/products/{PHOTO_SKU}/similar>; rel="successor-version"'
    assert service.client.get(f"/v1/products/{PHOTO_SKU}/similar", params={"k": 2}).json() == similar.json()
    assert "deprecation" not in service.client.get("/livez").headers


def test_an_unknown_query_parameter_is_refused_not_ignored(service: Service) -> None:
    # ?in_stock=false (for in_stock_only) would otherwise be ignored and answer another question than the one asked.
    typo = service.client.get(f"/products/{PHOTO_SKU}/similar", params={"k": 3, "in_stock": "false"})
    message = _error(typo, 422)
    assert message.startswith("in_stock: unknown parameter") and "in_stock_only" in message
    assert "unknown parameter" in _error(service.client.post("/search?debug=1", json={"vector": [0.1] * 512}), 422)
    assert service.client.get(f"/products/{PHOTO_SKU}/similar", params={"k": 3}).status_code == 200
    assert service.client.get("/", params={"utm_source": "newsletter"}).status_code == 200  # the page takes any


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (15_000, 15_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_kind_of_bad_input_is_a_one_line_4xx(service: Service) -> None:
    post = service.client.post
    assert "512" in _error(post("/search", json={"vector": [0.1] * 3}), 400)
    nan = ('{"vector": [' + ", ".join(["NaN"] * 512) + "]}").encode()
    assert "NaN" in _error(post("/search", content=nan, headers={"content-type": "application/json"}), 400)
    _error(post("/search", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert "vector" in _error(post("/search", json={"photo": 1}), 400)
    assert "k must be" in _error(post("/search", files=_photo(), data={"k": "0"}), 400)
    assert "k must be" in _error(post("/search", files=_photo(), data={"k": "many"}), 400)
    assert "max_price" in _error(post("/search", files=_photo(), data={"max_price": "-3"}), 400)
    assert "in_stock_only" in _error(post("/search", files=_photo(), data={"in_stock_only": "maybe"}), 400)
    assert "'image'" in _error(post("/search", data={"k": "3"}, files={"other": ("x", b"y")}), 400)
    assert "not an image" in _error(post("/search", files={"image": ("x.jpg", b"hello", "image/jpeg")}), 400)
    assert "too large" in _error(post("/embed", files={"image": ("bomb.png", _bomb(), "image/png")}), 400)
    _error(post("/search", content=b"raw", headers={"content-type": "text/plain"}), 415)
    _error(post("/embed", json={"vector": [1] * 512}), 415)
    assert "unknown SKU" in _error(service.client.get("/products/no-such/similar"), 404)
    assert "k" in _error(service.client.get(f"/products/{PHOTO_SKU}/similar", params={"k": "lots"}), 422)
    _error(service.client.get(f"/products/{PHOTO_SKU}/similar", params={"k": 0}), 422)
    _error(service.client.get("/no/such/endpoint"), 404)
    # Text PostgreSQL cannot hold (NUL), and JSON nested past what a parser should follow: 400, not 500.
    assert "NUL" in _error(service.client.get("/products/a%00b/similar"), 400)
    assert "NUL" in _error(service.client.get(f"/products/{PHOTO_SKU}/similar", params={"category": "\x00"}), 400)
    assert "NUL" in _error(service.client.get("/products/a%00b/cheaper"), 400)
    assert "NUL" in _error(post("/search", json={"vector": [0.1] * 512, "category": ["a\x00"]}), 400)
    assert "NUL" in _error(post("/search", files=_photo(), data={"category": "x\x00y"}), 400)
    deep = b"[" * 100_000 + b"]" * 100_000
    assert "nested" in _error(post("/search", content=deep, headers={"content-type": "application/json"}), 400)


def test_photos_are_served_from_the_image_roots_only(service: Service, sample_catalogue: SampleCatalogue) -> None:
    stored = str(sample_catalogue.shop / "catalogue" / "shoes" / PHOTO.name)
    assert service.client.get("/photos", params={"ref": stored}).content == PHOTO.read_bytes()
    assert service.client.get("/photos", params={"ref": f"catalogue/shoes/{PHOTO.name}"}).status_code == 200
    for ref in (
        "/etc/passwd",
        "../../../../etc/passwd",
        "catalogue/../../README.md",
        str(REPO / "README.md"),
        "products.csv",  # under the root, but not a photo
        "",
    ):
        _error(service.client.get("/photos", params={"ref": ref}), 404)


def test_the_page_and_its_files(service: Service) -> None:
    page = service.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert service.client.get("/static/app.js").status_code == 200
    _error(service.client.get("/static/..%2f__init__.py"), 404)


@pytest.fixture(scope="module")
def tight(catalogue_url: str, weights_path: str) -> Iterator[Service]:
    """A service with a tiny upload limit and a model queue of one; the real network, slow enough that concurrent
    photos really queue for it (only /embed is used: the catalogue's space does not matter)."""
    running = Service(catalogue_url, weights_path, "--max-upload-mb", "0.05", "--queue", "1", "--timeout", "20")
    yield running
    running.close()


def test_upload_limit_and_model_queue(tight: Service) -> None:
    big = {"image": ("big.jpg", b"\xff" * 200_000, "image/jpeg")}
    assert "larger than" in _error(tight.client.post("/search", files=big), 413)
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
    parts = [head, *([b"\xff" * 40_000] * 5), b"\r\n--b--\r\n"]
    chunked = tight.client.post(
        "/search", content=iter(parts), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    _error(chunked, 413)  # no Content-Length: counted as it arrives
    photo = (EXAMPLES / "catalogue" / "dress").glob("*.jpg")
    small = [p.read_bytes() for p in sorted(photo)][:8]
    small = [d for d in small if len(d) < 0.05 * 2**20] or [PHOTO.read_bytes()]

    def one(data: bytes) -> int:
        with httpx.Client(base_url=tight.base, timeout=60) as client:
            return client.post("/embed", files={"image": ("p.jpg", data, "image/jpeg")}).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(one, [small[i % len(small)] for i in range(24)]))
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses  # the rest is told to come back


def test_a_reader_role_is_enough(catalogue_url: str, fake_weights: str) -> None:
    admin = db.create_engine(catalogue_url)
    role = f"web_{uuid.uuid4().hex[:8]}"
    roles.grant_reader(admin, role)
    with admin.begin() as conn:
        conn.execute(sa.text(f'ALTER ROLE "{role}" LOGIN'))
    admin.dispose()
    reader_url = make_url(catalogue_url).set(username=role).render_as_string(hide_password=False)
    running = Service(reader_url, fake_weights)
    try:
        assert running.client.get("/healthz").json()["status"] == "ok"
        assert len(running.client.post("/search", files=_photo(), data={"k": "3"}).json()) == 3
    finally:
        running.close()


def test_an_unmigrated_or_unreachable_database_is_503(
    make_database: Callable[..., str], fake_weights: str, tmp_path: Path
) -> None:
    running = Service(make_database(), fake_weights)  # a database without the imgsearch schema
    try:
        assert running.client.get("/livez").json() == {"status": "ok"}  # alive: restarting it would not help
        ready = running.client.get("/readyz")
        assert ready.status_code == 503
        assert list(ready.json()) == ["status", "reason"] and ready.json()["status"] == "unavailable"
        assert "imgsearch db upgrade" in ready.json()["reason"] and "\n" not in ready.json()["reason"]
        health = running.client.get("/healthz")
        assert health.status_code == 503  # and the reason also under the name the page still reads
        assert health.json() == {**ready.json(), "error": ready.json()["reason"]}
        assert (running.client.head("/readyz").status_code, running.client.head("/livez").status_code) == (503, 200)
        assert "imgsearch db upgrade" in _error(running.client.post("/search", files=_photo()), 503)
    finally:
        running.close()
    gone = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgsearch",
            "--database-url",
            f"postgresql://x@/y?host={tmp_path}",
            "serve",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gone.returncode == 1 and gone.stderr.startswith("Error: cannot connect to the database")


def _as_superuser(url: str, statement: str, database: str | None = None) -> None:
    """Run ``statement`` on the test server as its superuser (in ``database``, else the one of ``url``)."""
    parsed = make_url(url)
    with psycopg.connect(
        host=parsed.query["host"], user="postgres", dbname=database or parsed.database, autocommit=True
    ) as conn:
        conn.execute(statement)


def test_readiness_follows_the_database_and_liveness_does_not(
    make_database: Callable[..., str], sample_catalogue: SampleCatalogue, fake_weights: str
) -> None:
    url = make_database(template=sample_catalogue.template)
    running = Service(url, fake_weights)
    try:
        assert running.client.get("/readyz").status_code == 200
        # Another model's catalogue: the service would answer nonsense, so it is not ready.
        _as_superuser(url, "UPDATE imgsearch.embedding_space SET weights_id = 'other-' || weights_id")
        mismatch = running.client.get("/readyz")
        assert mismatch.status_code == 503 and mismatch.json()["status"] == "unavailable"
        assert "different embedding space" in mismatch.json()["reason"]
        _as_superuser(url, "UPDATE imgsearch.embedding_space SET weights_id = substr(weights_id, 7)")
        assert running.client.get("/readyz").json()["status"] == "ok"  # checked on every request, not cached
        # The database gone while the service runs.
        _as_superuser(url, f'DROP DATABASE "{make_url(url).database}" WITH (FORCE)', database="postgres")
        gone = running.client.get("/readyz")
        assert gone.status_code == 503 and gone.json()["status"] == "unavailable"
        assert "database" in gone.json()["reason"] and "\n" not in gone.json()["reason"]
        assert running.client.get("/livez").json() == {"status": "ok"}  # the process is fine: no restart
        assert running.client.get("/healthz").status_code == 503
    finally:
        running.close()


def test_not_ready_until_the_model_is_loaded() -> None:
    """Without its start-up (the lifespan: engine, model) the application is alive and says why it is not ready."""
    app = create_app(Settings.from_env(), limits=ServiceLimits())
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/livez").json() == {"status": "ok"}
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "unavailable", "reason": "the model is not loaded yet"}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
