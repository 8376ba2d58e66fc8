"""Downloading product photos over HTTP, against a real server on loopback that misbehaves on request.

The server (one per module, in a background thread) answers by route: a photo with cache validators, errors,
failures that stop after a while, sleeps, trickles, redirects, oversized, lying and empty bodies. Each test
passes a unique ``key`` in the query string so that the server's count of requests is the test's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from imgsearch.fetch import USER_AGENT, Fetched, Fetcher, Validators, is_url

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTO = SAMPLES / "dress" / "07cddef1-1fc8-47e4-a28a-613e60912590.jpg"
PHOTO_BYTES = PHOTO.read_bytes()
ETAG = '"photo-v1"'
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    path: str
    key: str | None
    headers: dict[str, str]


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server that logs every request and can wake its sleeping handlers to shut down."""

    # A handler still blocked in a read (a TLS handshake nobody completes) does not hold up the shutdown.
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if context is not None:  # the TLS handshake happens in the handler's thread, at its first read
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
            self.scheme = "https"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen: list[Seen] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        """The client hanging up on a misbehaving route is the point of the test, not an error to print."""

    def url(self, route: str, **params: object) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}{route}{query}"

    def hits(self, key: str) -> int:
        with self.lock:
            return sum(1 for seen in self.seen if seen.key == key)

    def requests_for(self, key: str) -> list[Seen]:
        with self.lock:
            return [seen for seen in self.seen if seen.key == key]


class Handler(BaseHTTPRequestHandler):
    """Routes: /image, /status, /flaky, /sleep, /trickle, /trickle-headers, /redirect, /loop, /to, /big,
    /nolength, /liar, /empty and /files/<anything> (the photo)."""

    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.q = {name: values[0] for name, values in parse_qs(parts.query).items()}
        with self.server.lock:
            self.server.seen.append(Seen(self.path, self.q.get("key"), dict(self.headers.items())))
            self.count = sum(1 for seen in self.server.seen if seen.key == self.q.get("key"))
        route = "files" if parts.path.startswith("/files/") else parts.path.strip("/").replace("-", "_")
        with contextlib.suppress(OSError):  # the client hung up: expected for most routes below
            getattr(self, f"route_{route}", self.route_missing)()

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def photo(self, *, etag: bool = True) -> None:
        """The photo, or 304 when the request's validators match it."""
        headers = {"Content-Type": "image/jpeg", "Last-Modified": LAST_MODIFIED}
        if etag:
            headers["ETag"] = ETAG
        if etag:
            matches = self.headers.get("If-None-Match") == ETAG
        else:
            matches = self.headers.get("If-Modified-Since") == LAST_MODIFIED
        if matches:
            self.reply(304, headers=headers)
        else:
            self.reply(200, PHOTO_BYTES, headers)

    def route_missing(self) -> None:
        self.reply(404, b"no such route")

    def route_image(self) -> None:
        self.photo(etag=self.q.get("mode") != "lastmod")

    def route_files(self) -> None:
        self.photo()

    def route_status(self) -> None:
        self.reply(int(self.q["code"]), b"<html>error page</html>", {"Content-Type": "text/html"})

    def route_flaky(self) -> None:
        """Fails with ``status`` for the first ``fail`` requests, then serves the photo."""
        if self.count <= int(self.q["fail"]):
            headers = {"Retry-After": self.q["retry_after"]} if "retry_after" in self.q else {}
            self.reply(int(self.q["status"]), b"busy", headers)
        else:
            self.photo()

    def route_sleep(self) -> None:
        self.server.stop.wait(float(self.q["seconds"]))
        self.photo()

    def route_trickle(self) -> None:
        """Announces ``size`` bytes and sends one every ``interval`` seconds."""
        self.send_response(200)
        self.send_header("Content-Length", self.q["size"])
        self.end_headers()
        for _ in range(int(self.q["size"])):
            self.wfile.write(b"x")
            if self.server.stop.wait(float(self.q["interval"])):
                return

    def route_trickle_headers(self) -> None:
        """Sends the status line, then a header one byte every 0.1 s: the response never starts."""
        self.wfile.write(b"HTTP/1.0 200 OK\r\n")
        for byte in b"X-Slow: " + b"a" * 200:
            self.wfile.write(bytes([byte]))
            if self.server.stop.wait(0.1):
                return

    def route_redirect(self) -> None:
        """A chain of ``n`` redirects (alternately relative and absolute ``Location``) ending at the photo."""
        n = int(self.q["n"])
        if n == 0:
            self.photo()
            return
        location = f"/redirect?{urlencode({'n': n - 1, 'key': self.q.get('key', '')})}"
        if n % 2:
            location = self.server.url("/redirect", n=n - 1, key=self.q.get("key", ""))
        self.reply(302 if n % 2 else 301, headers={"Location": location})

    def route_loop(self) -> None:
        other = "b" if self.q["at"] == "a" else "a"
        self.reply(307, headers={"Location": f"/loop?at={other}&key={self.q.get('key', '')}"})

    def route_to(self) -> None:
        self.reply(302, headers={"Location": self.q["location"]})

    def route_big(self) -> None:
        """Announces ``cl`` bytes and sends none: a client that reads the body would wait."""
        self.send_response(200)
        self.send_header("Content-Length", self.q["cl"])
        self.end_headers()
        self.server.stop.wait(3)

    def route_nolength(self) -> None:
        """``size`` bytes without a Content-Length: the end of the body is the end of the connection."""
        self.send_response(200)
        self.end_headers()
        size = int(self.q["size"])
        for start in range(0, size, 1000):
            self.wfile.write(b"y" * min(1000, size - start))

    def route_liar(self) -> None:
        """Announces ``cl`` bytes, sends ``send`` and hangs up."""
        self.send_response(200)
        self.send_header("Content-Length", self.q["cl"])
        self.end_headers()
        self.wfile.write(b"z" * int(self.q["send"]))

    def route_chunked(self) -> None:
        """The photo in chunks (HTTP/1.1, no Content-Length); ``cut`` drops the last chunk and the terminator."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        pieces = [PHOTO_BYTES[start : start + 4096] for start in range(0, len(PHOTO_BYTES), 4096)]
        if "cut" in self.q:
            pieces = pieces[:-1]
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if "cut" not in self.q:
            self.wfile.write(b"0\r\n\r\n")

    def route_empty(self) -> None:
        self.reply(200, b"", {"Content-Type": "image/jpeg"})


@contextlib.contextmanager
def running(httpd: LoopbackServer) -> Iterator[LoopbackServer]:
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    with running(LoopbackServer()) as httpd:
        yield httpd


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 (its key is ``key.pem`` beside it)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a certificate")
    home = tmp_path_factory.mktemp("tls")
    key_file, cert_file = home / "key.pem", home / "cert.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1"
    options = ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key_file), "-out", str(cert_file)]
    subprocess.run([*command.split(), *options], check=True, capture_output=True)
    return cert_file


@pytest.fixture(scope="module")
def tls_server(certificate: Path) -> Iterator[LoopbackServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, certificate.with_name("key.pem"))
    with running(LoopbackServer(context)) as httpd:
        yield httpd


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    """Quick to give up: short timeout, fast backoff, a small size cap."""
    with Fetcher(timeout=2.0, retries=2, backoff=0.01, max_bytes=1_000_000) as f:
        yield f


def assert_failed(result: Fetched, url: str, *words: str) -> None:
    """A failure reported as data: one line starting with the URL, mentioning ``words``, nothing downloaded."""
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith(f"{url}: "), result.error
    assert "\n" not in result.error and "\r" not in result.error
    assert "Traceback" not in result.error
    for word in words:
        assert word in result.error, result.error
    assert result.data is None and result.sha256 is None and not result.not_modified
    assert result.url == url


# -- the normal case and conditional requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("http://cdn.example.com/x.jpg", True),
        ("https://cdn.example.com/x.jpg", True),
        ("HTTPS://CDN.example.com/X.JPG", True),
        ("Http://cdn/x.jpg", True),
        ("ftp://cdn/x.jpg", False),
        ("file:///etc/passwd", False),
        ("/local/path/x.jpg", False),
        ("dress/x.jpg", False),
        ("http:/x.jpg", False),
        ("https", False),
        ("", False),
    ],
)
def test_is_url(reference: str, expected: bool) -> None:
    assert is_url(reference) is expected


def test_downloads_a_photo_with_its_validators(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    url = server.url("/image", key=key)
    result = fetcher.fetch(url)
    assert result.ok and result.error is None and not result.not_modified
    assert result.url == url
    assert result.data == PHOTO_BYTES
    assert result.sha256 == hashlib.sha256(PHOTO_BYTES).hexdigest()
    assert result.validators == Validators(etag=ETAG, last_modified=LAST_MODIFIED)
    (seen,) = server.requests_for(key)
    assert seen.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("imgsearch/")
    assert "If-None-Match" not in seen.headers and "If-Modified-Since" not in seen.headers
    assert "PHOTO_BYTES" not in repr(result) and len(repr(result)) < 500  # the bytes stay out of logs


def test_etag_gives_not_modified(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    url = server.url("/image", key=key)
    first = fetcher.fetch(url)
    second = fetcher.fetch(url, first.validators)
    assert second.ok and second.not_modified
    assert second.data is None and second.sha256 is None and second.error is None
    assert second.validators == first.validators
    assert server.requests_for(key)[1].headers["If-None-Match"] == ETAG


def test_stale_etag_downloads_again(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    result = fetcher.fetch(server.url("/image", key=key), Validators(etag='"photo-v0"'))
    assert result.ok and not result.not_modified
    assert result.data == PHOTO_BYTES and result.validators.etag == ETAG


def test_last_modified_gives_not_modified(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    url = server.url("/image", mode="lastmod", key=key)
    first = fetcher.fetch(url)
    assert first.validators == Validators(etag=None, last_modified=LAST_MODIFIED)
    second = fetcher.fetch(url, first.validators)
    assert second.ok and second.not_modified and second.data is None
    assert second.validators == first.validators
    assert server.requests_for(key)[1].headers["If-Modified-Since"] == LAST_MODIFIED


def test_non_ascii_path_is_percent_encoded(server: LoopbackServer, fetcher: Fetcher) -> None:
    url = server.url("/files/kleid grün.jpg")
    result = fetcher.fetch(url)
    assert result.ok and result.data == PHOTO_BYTES
    with server.lock:
        assert any(seen.path == "/files/kleid%20gr%C3%BCn.jpg" for seen in server.seen)


# -- retries ---------------------------------------------------------------------------------------------------


def test_503_twice_then_success_is_retried(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    result = fetcher.fetch(server.url("/flaky", fail=2, status=503, key=key))
    assert result.ok and result.data == PHOTO_BYTES
    assert server.hits(key) == 3


def test_gives_up_after_the_retries(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    url = server.url("/flaky", fail=99, status=500, key=key)
    result = fetcher.fetch(url)
    assert_failed(result, url, "HTTP 500", "after 3 attempts")
    assert server.hits(key) == 3


def test_429_honours_retry_after(server: LoopbackServer, key: str) -> None:
    # A backoff of 10 s would make this test slow: Retry-After: 0 says to come back at once.
    with Fetcher(retries=1, backoff=10.0) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(server.url("/flaky", fail=1, status=429, retry_after=0, key=key))
        assert time.monotonic() - started < 2
    assert result.ok and result.data == PHOTO_BYTES
    assert server.hits(key) == 2


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410])
def test_other_4xx_are_not_retried(server: LoopbackServer, fetcher: Fetcher, key: str, code: int) -> None:
    url = server.url("/status", code=code, key=key)
    result = fetcher.fetch(url)
    assert_failed(result, url, f"HTTP {code}")
    assert "attempts" not in (result.error or "")
    assert server.hits(key) == 1


def test_404_error_line(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    url = server.url("/status", code=404, key=key)
    assert fetcher.fetch(url).error == f"{url}: HTTP 404 Not Found"


def test_retry_wait_grows_and_is_capped() -> None:
    fetcher = Fetcher(backoff=0.5)
    for attempt in range(4):
        assert 0.25 * 2**attempt <= fetcher._retry_wait(attempt, None) <= 0.5 * 2**attempt
    assert fetcher._retry_wait(20, None) <= 30.0
    assert fetcher._retry_wait(0, 0.0) == 0.0
    assert fetcher._retry_wait(0, 7.0) == 7.0
    assert fetcher._retry_wait(0, 3600.0) == 30.0


def test_connection_refused_is_retried(fetcher: Fetcher) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.jpg"
    assert_failed(fetcher.fetch(url), url, "connection refused", "after 3 attempts")


# -- time limits -----------------------------------------------------------------------------------------------


def test_slow_server_times_out(server: LoopbackServer, key: str) -> None:
    url = server.url("/sleep", seconds=3, key=key)
    with Fetcher(timeout=0.3, retries=1, backoff=0.01) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(url)
        elapsed = time.monotonic() - started
    assert_failed(result, url, "timeout", "after 2 attempts")
    assert elapsed < 1.5
    assert server.hits(key) == 2


def test_trickling_body_exceeds_the_total_deadline(server: LoopbackServer, key: str) -> None:
    # One byte every 0.1 s never trips the 0.3 s read timeout; the 4 x 0.3 s deadline stops it.
    url = server.url("/trickle", size=100, interval=0.1, key=key)
    with Fetcher(timeout=0.3, retries=0) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(url)
        elapsed = time.monotonic() - started
    assert_failed(result, url, "deadline")
    assert 1.0 < elapsed < 2.0


def test_trickling_headers_exceed_the_total_deadline(server: LoopbackServer, key: str) -> None:
    url = server.url("/trickle-headers", key=key)
    with Fetcher(timeout=0.3, retries=0) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(url)
        elapsed = time.monotonic() - started
    assert_failed(result, url, "deadline")
    assert elapsed < 2.0


# -- redirects -------------------------------------------------------------------------------------------------


def test_redirect_chain_is_followed(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    result = fetcher.fetch(server.url("/redirect", n=3, key=key))
    assert result.ok and result.data == PHOTO_BYTES and result.validators.etag == ETAG
    assert server.hits(key) == 4


def test_too_many_redirects(server: LoopbackServer, key: str) -> None:
    url = server.url("/redirect", n=3, key=key)
    with Fetcher(max_redirects=2, retries=1, backoff=0.01) as fetcher:
        assert_failed(fetcher.fetch(url), url, "too many redirects")
    assert server.hits(key) == 3  # not retried


def test_redirect_loop(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    url = server.url("/loop", at="a", key=key)
    assert_failed(fetcher.fetch(url), url, "redirect loop")
    assert server.hits(key) == 2


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "data:image/png;base64,AAAA"])
def test_redirect_to_a_non_http_url_is_refused(
    server: LoopbackServer, fetcher: Fetcher, key: str, location: str
) -> None:
    url = server.url("/to", location=location, key=key)
    result = fetcher.fetch(url)
    assert_failed(result, url, "non-HTTP", location.split(":")[0])
    assert "root:" not in (result.error or "")
    assert server.hits(key) == 1


# -- sizes -----------------------------------------------------------------------------------------------------


def test_content_length_over_the_cap_is_refused_unread(server: LoopbackServer, key: str) -> None:
    # The server announces 5000 bytes and sends none: reading would wait for the 2 s timeout.
    url = server.url("/big", cl=5000, key=key)
    with Fetcher(max_bytes=1000, timeout=2.0, retries=2, backoff=0.01) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(url)
        assert time.monotonic() - started < 1.0
    assert_failed(result, url, "too large", "Content-Length 5000", "1000")
    assert server.hits(key) == 1


def test_body_without_length_over_the_cap_is_refused(server: LoopbackServer, key: str) -> None:
    url = server.url("/nolength", size=50_000, key=key)
    with Fetcher(max_bytes=1000, retries=2, backoff=0.01) as fetcher:
        assert_failed(fetcher.fetch(url), url, "too large", "more than 1000 bytes")
    assert server.hits(key) == 1


def test_body_without_length_within_the_cap(server: LoopbackServer, key: str) -> None:
    with Fetcher(max_bytes=1000) as fetcher:
        result = fetcher.fetch(server.url("/nolength", size=1000, key=key))
    assert result.ok and result.data == b"y" * 1000
    assert result.validators == Validators()


def test_body_shorter_than_its_content_length_is_an_error(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    url = server.url("/liar", cl=1000, send=10, key=key)
    assert_failed(fetcher.fetch(url), url, "incomplete body", "10 of 1000 bytes", "after 3 attempts")
    assert server.hits(key) == 3


def test_chunked_body(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    result = fetcher.fetch(server.url("/chunked", key=key))
    assert result.ok and result.data == PHOTO_BYTES


def test_chunked_body_over_the_cap_is_refused(server: LoopbackServer, key: str) -> None:
    url = server.url("/chunked", key=key)
    with Fetcher(max_bytes=10_000) as fetcher:
        assert_failed(fetcher.fetch(url), url, "too large", "more than 10000 bytes")


def test_chunked_body_cut_short_is_an_error(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    url = server.url("/chunked", cut=1, key=key)
    assert_failed(fetcher.fetch(url), url, "incomplete body", "after 3 attempts")
    assert server.hits(key) == 3


def test_empty_body_is_an_error(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    url = server.url("/empty", key=key)
    assert_failed(fetcher.fetch(url), url, "empty response")
    assert server.hits(key) == 1


# -- what is not a download ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://x", ["not an http"]),
        ("/local/path", ["not an http"]),
        ("file:///etc/passwd", ["not an http"]),
        ("", ["not an http"]),
        ("http://", ["no host"]),
        ("http://127.0.0.1:notaport/x.jpg", ["invalid URL"]),
        ("http://[::1/x.jpg", ["invalid URL"]),
    ],
)
def test_not_a_web_address_is_an_error_result(fetcher: Fetcher, url: str, words: list[str]) -> None:
    assert_failed(fetcher.fetch(url, Validators(etag='"e"')), url, *words)


def test_control_characters_never_break_the_line(fetcher: Fetcher) -> None:
    url = "ftp://x/\u2028line\x1b[31m"
    result = fetcher.fetch(url)
    assert result.error is not None and result.error.isprintable()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"timeout": 0},
        {"timeout": float("inf")},
        {"retries": -1},
        {"backoff": -0.5},
        {"max_bytes": 0},
        {"max_redirects": -1},
        {"user_agent": ""},
        {"user_agent": "a\r\nX-Injected: 1"},
    ],
)
def test_bad_settings_raise(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Fetcher(**kwargs)


# -- many at once ----------------------------------------------------------------------------------------------


def test_fetch_many_keeps_input_order(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    requests: list[tuple[str, Validators | None]] = [
        (server.url("/sleep", seconds=0.3, key=key), None),  # finishes last, comes first
        (server.url("/status", code=404, key=key), None),
        ("ftp://x/y.jpg", None),
        (server.url("/image", key=key), Validators(etag=ETAG)),
        (server.url("/redirect", n=1, key=key), None),
        (server.url("/empty", key=key), None),
        (server.url("/image", n=2, key=key), None),
    ]
    results = list(fetcher.fetch_many(requests))
    assert [r.url for r in results] == [url for url, _ in requests]
    assert [r.ok for r in results] == [True, False, False, True, True, False, True]
    assert results[3].not_modified
    assert results[0].data == results[4].data == results[6].data == PHOTO_BYTES


def test_fetch_many_overlaps_downloads(server: LoopbackServer, key: str) -> None:
    urls = [server.url("/sleep", seconds=0.3, i=i, key=key) for i in range(8)]
    with Fetcher(workers=8) as fetcher:
        started = time.monotonic()
        results = list(fetcher.fetch_many((url, None) for url in urls))
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    assert elapsed < 1.2  # one after another would take 2.4 s


def test_fetch_many_respects_prefetch(server: LoopbackServer, key: str) -> None:
    prefetch, count = 3, 10
    pulled: list[int] = []

    def requests() -> Iterator[tuple[str, Validators | None]]:
        for i in range(count):
            pulled.append(threading.get_ident())
            yield server.url("/sleep", seconds=0.05, i=i, key=key), None

    with Fetcher(workers=8) as fetcher:
        results = fetcher.fetch_many(requests(), prefetch=prefetch)
        assert pulled == [] and server.hits(key) == 0  # nothing happens before the first result is asked for
        received = 0
        for result in results:
            received += 1
            assert result.ok
            time.sleep(0.15)  # a slow consumer: whatever the fetcher allowed itself has started by now
            # Holding result k, the fetcher has started k - 1 + prefetch downloads: prefetch - 1 in flight or
            # waiting, and the next one only when the consumer asks for it.
            expected = min(count, received + prefetch - 1)
            assert server.hits(key) == expected
            assert len(pulled) == expected
    assert received == count
    assert set(pulled) == {threading.get_ident()}  # the requests were read from the caller's thread only


def test_stopping_fetch_many_early_cancels_the_rest(server: LoopbackServer, key: str) -> None:
    pulled: list[int] = []

    def requests() -> Iterator[tuple[str, Validators | None]]:
        for i in range(50):
            pulled.append(i)
            yield server.url("/sleep", seconds=0.2 if i == 0 else 1.0, i=i, key=key), None

    fetcher = Fetcher(workers=2)
    results = fetcher.fetch_many(requests(), prefetch=4)
    first = next(results)  # at 0.2 s: the 2nd download runs, the 3rd has just started, the 4th waits for a worker
    assert first.ok
    started = time.monotonic()
    results.close()  # what breaking out of a for loop does
    assert time.monotonic() - started < 0.2
    assert len(pulled) == 4
    time.sleep(0.3)
    assert server.hits(key) == 3  # the 4th never started, the rest were never read from the generator
    started = time.monotonic()
    fetcher.close()
    assert time.monotonic() - started < 1.0


def test_close_cuts_downloads_in_flight(server: LoopbackServer, key: str) -> None:
    fetcher = Fetcher(timeout=10.0)
    url = server.url("/sleep", seconds=5, key=key)
    results: list[Fetched] = []
    thread = threading.Thread(target=lambda: results.append(fetcher.fetch(url)))
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    fetcher.close()
    thread.join(2)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0
    assert_failed(results[0], url, "fetcher closed")
    with pytest.raises(RuntimeError):
        fetcher.fetch(url)
    with pytest.raises(RuntimeError):
        fetcher.fetch_many([(url, None)])


def test_prefetch_must_be_positive(fetcher: Fetcher) -> None:
    with pytest.raises(ValueError):
        fetcher.fetch_many([], prefetch=0)


def test_fetch_is_thread_safe(server: LoopbackServer, fetcher: Fetcher, key: str) -> None:
    results: list[Fetched] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        result = fetcher.fetch(server.url("/image", i=i, key=key))
        with lock:
            results.append(result)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 16 and all(r.ok and r.data == PHOTO_BYTES for r in results)


# -- HTTPS -----------------------------------------------------------------------------------------------------


def test_https_untrusted_certificate_is_refused_once(tls_server: LoopbackServer, key: str) -> None:
    url = tls_server.url("/image", key=key)
    with Fetcher(retries=2, backoff=1.0) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(url)
        assert time.monotonic() - started < 1.0  # not retried: a certificate does not get better
    assert_failed(result, url, "certificate verification failed")
    assert tls_server.hits(key) == 0


def test_https_download_and_deadline(
    tls_server: LoopbackServer, certificate: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # trust the test certificate, as a deployment would its CA
    with Fetcher(timeout=0.3, retries=0) as fetcher:
        result = fetcher.fetch(tls_server.url("/redirect", n=2, key=key))
        assert result.ok and result.data == PHOTO_BYTES and result.validators.etag == ETAG
        # The deadline cuts the connection below TLS too.
        for url in [tls_server.url("/trickle", size=100, interval=0.1), tls_server.url("/trickle-headers")]:
            started = time.monotonic()
            result = fetcher.fetch(url)
            elapsed = time.monotonic() - started
            assert_failed(result, url, "deadline")
            assert 1.0 < elapsed < 2.0
