"""Downloading product photos given as ``http://`` / ``https://`` URLs (shops keep them on a CDN).

Design, in short:

* Only the standard library: :mod:`http.client` directly rather than :mod:`urllib.request`, because every rule
  below needs control that urllib hides (its redirect handler, proxy discovery and ``read`` that waits for the
  whole body). No proxy is used; every request opens its own connection (``Connection: close``).
* Every failure is data, not an exception: :meth:`Fetcher.fetch` returns a :class:`Fetched` whose ``error`` is
  one line starting with the URL, so one bad URL in a catalogue of thousands is a reported row, not a crash.
  Only programming errors raise (bad constructor arguments, using a closed :class:`Fetcher`).
* Time is bounded three ways: ``timeout`` for connecting and for each socket read; a total deadline per attempt
  (``DEADLINE_FACTOR * timeout``), enforced by a timer that shuts the socket down, so a server trickling one
  byte per second (even in its headers) frees the worker; and :meth:`Fetcher.close`, which cuts every download
  in flight and every retry wait at once.
* Memory is bounded: a body is refused from its ``Content-Length`` before it is read, and reading stops once
  more than ``max_bytes`` arrived; :meth:`Fetcher.fetch_many` keeps at most ``prefetch`` downloads in flight or
  waiting for the consumer, and yields in input order so the slow consumer (the neural network) overlaps with
  the downloads.
* Transient failures (connection errors, timeouts, a body cut short, HTTP 429/500/502/503/504) are retried with
  exponential backoff and jitter, honouring ``Retry-After``; other failures are final at once.
* Cache validators (``ETag``, ``Last-Modified``) make re-ingesting an unchanged catalogue a series of
  ``304 Not Modified`` answers instead of downloads.
* The bytes are not checked to be an image, whatever the ``Content-Type`` says: the decoder decides later.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import math
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any
from urllib.parse import quote, urldefrag, urljoin, urlsplit

from imgsearch.images import MAX_FILE_BYTES

__all__ = ["DEADLINE_FACTOR", "USER_AGENT", "Fetched", "Fetcher", "Validators", "is_url"]


def _version() -> str:
    # Not imgsearch.__version__: importing the package from here would be circular if it ever imports this module.
    try:
        return version("imgsearch")
    except PackageNotFoundError:  # a checkout that was never installed
        return "0+unknown"


#: Sent with every request, so that a shop's CDN logs say who downloads its photos.
USER_AGENT = f"imgsearch/{_version()}"

#: The total time one attempt may take (connection, redirects, headers and body) is this many ``timeout``\\ s.
DEADLINE_FACTOR = 4
#: Statuses worth asking again: rate limiting and the server-side errors that are usually temporary.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Statuses that are followed as redirects (when they carry a ``Location``).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Longest wait between two attempts, computed or asked for by ``Retry-After`` (seconds).
MAX_RETRY_WAIT = 30.0

_SCHEMES = frozenset({"http", "https"})
_CHUNK = 64 * 1024
#: Characters left alone when percent-encoding a request target (RFC 3986 reserved and unreserved, and ``%``
#: so that an already encoded URL is not encoded twice); spaces, non-ASCII and control characters are encoded.
_SAFE = "/%:@!$&'()*+,;=-._~?"
_MAX_REASON = 200
_MAX_VALIDATOR = 1024


def is_url(reference: str) -> bool:
    """Whether an image reference is a web address (``http://`` or ``https://``, any case) rather than a path.

    Lets the ingestion route each catalogue image to :class:`Fetcher` or to the file system.
    """
    lowered = reference[:8].lower()
    return lowered.startswith("http://") or lowered.startswith("https://")


@dataclass(frozen=True)
class Validators:
    """HTTP cache validators stored with an image, sent back so that an unchanged image is not downloaded again."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Fetched:
    """The outcome of downloading one URL: the bytes, "not modified", or a one-line error.

    ``validators`` are those of the final response when downloaded, and the ones sent when not modified or
    failed (nothing new was learnt, so storing them again loses nothing).
    """

    url: str
    data: bytes | None = field(repr=False)
    sha256: str | None
    validators: Validators
    not_modified: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Downloaded or not modified: the caller has (or already had) the image."""
        return self.error is None


class _Failure(Exception):
    """Why one attempt failed, and whether another attempt may succeed."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Target:
    """Where to send a GET: the parsed, percent-encoded form of an http(s) URL."""

    https: bool
    host: str
    port: int | None
    path: str


class _Exchange:
    """One GET on a connection of its own, which a timer cuts at the attempt's deadline (or Fetcher.close sooner).

    Cutting shuts the socket down, so whatever read is blocked in another thread returns at once; the
    caller then asks :meth:`check` why the connection died.
    """

    def __init__(
        self,
        target: _Target,
        *,
        timeout: float,
        deadline: float,
        limit: float,
        context: ssl.SSLContext | None,
        public_only: bool = False,
    ) -> None:
        self.phase = "connect"
        self._public_only = public_only
        self._target = target
        self.timeout = timeout
        self._deadline = deadline
        self._limit = limit
        self._expired = False
        self._aborted = False
        self._lock = threading.Lock()
        self._response: http.client.HTTPResponse | None = None
        connect_timeout = max(0.001, min(timeout, deadline - time.monotonic()))
        self._conn: http.client.HTTPConnection
        if target.https:
            self._conn = http.client.HTTPSConnection(target.host, target.port, timeout=connect_timeout, context=context)
        else:
            self._conn = http.client.HTTPConnection(target.host, target.port, timeout=connect_timeout)
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut, kwargs={"abort": False})
        self._timer.daemon = True

    def get(self, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Connect, send the request and read the response headers."""
        self.check()
        self._timer.start()
        if self._public_only:
            self._pin_to_public_address()
        self._conn.connect()
        self.check()  # the timer may have fired while connecting, before there was a socket to shut down
        self._conn.sock.settimeout(self.timeout)
        self.phase = "response"
        self._conn.request("GET", path, headers=headers)
        self._response = self._conn.getresponse()
        self.phase = "body"
        return self._response

    def _pin_to_public_address(self) -> None:
        """Resolve the host once, refuse it unless every address is a public one (not loopback, private,
        link-local such as a cloud's metadata service, multicast or reserved), and connect to the address checked:
        a second resolution could answer differently (DNS rebinding). TLS still checks the host's name."""
        port = self._target.port or (443 if self._target.https else 80)
        try:
            found = socket.getaddrinfo(self._target.host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise _Failure(f"cannot resolve {self._target.host}: {exc.strerror or exc}", retryable=False) from None
        addresses = [info[4][0] for info in found]
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise _Failure(
                    f"refused: {self._target.host} is not a public address ({ip}); only the service's operator may "
                    "allow private addresses",
                    retryable=False,
                )
        pinned = addresses[0]

        def connect(_address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
            return socket.create_connection((pinned, port), timeout, source_address)

        self._conn._create_connection = connect  # type: ignore[attr-defined]

    def check(self) -> None:
        """Raise the failure that explains a cut connection (or a passed deadline); return if there is none."""
        with self._lock:
            if self._aborted:
                raise _Failure("fetcher closed", retryable=False)
            if self._expired or time.monotonic() >= self._deadline:
                raise _Failure(f"total deadline of {self._limit:g} s exceeded", retryable=True)

    def abort(self) -> None:
        """Cut the connection because the fetcher is closing."""
        self._cut(abort=True)

    def _cut(self, *, abort: bool) -> None:
        with self._lock:
            if abort:
                self._aborted = True
            else:
                self._expired = True
            sock = self._conn.sock
            if sock is not None:
                # socket.socket's own shutdown: SSLSocket.shutdown would also drop the TLS state that the
                # reading thread is using.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop the timer and close the connection."""
        self._timer.cancel()
        with self._lock:
            if self._response is not None:
                self._response.close()
            self._conn.close()

    def __enter__(self) -> _Exchange:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Fetcher:
    """Downloads images over HTTP(S) with timeouts, retries, redirects, a size cap and conditional requests.

    Thread-safe: :meth:`fetch` may be called from many threads at once, and :meth:`fetch_many` runs
    downloads in a thread pool of ``workers``. Close it (or use it as a context manager) to stop the pool.
    """

    def __init__(
        self,
        *,
        workers: int = 8,
        timeout: float = 15.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_bytes: int = MAX_FILE_BYTES,
        max_redirects: int = 5,
        user_agent: str = USER_AGENT,
        public_only: bool = False,
    ) -> None:
        """Check the settings (``ValueError`` if one is out of range); nothing is opened until the first fetch."""
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer of at least 1, not {workers!r}")
        if not _finite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer of at least 0, not {retries!r}")
        if not _finite(backoff) or backoff < 0:
            raise ValueError(f"backoff must be a non-negative number of seconds, not {backoff!r}")
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, not {max_bytes!r}")
        if not isinstance(max_redirects, int) or max_redirects < 0:
            raise ValueError(f"max_redirects must be an integer of at least 0, not {max_redirects!r}")
        if not isinstance(user_agent, str) or not user_agent.strip() or not user_agent.isprintable():
            raise ValueError(f"user_agent must be a non-empty printable string, not {user_agent!r}")
        self.workers = workers
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.user_agent = user_agent
        #: Refuse hosts that resolve to loopback, private, link-local or reserved addresses (every redirect
        #: included): for URLs given by people outside, e.g. a search service's users (server-side request forgery).
        self.public_only = public_only
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._context: ssl.SSLContext | None = None
        self._active: set[_Exchange] = set()

    # -- public API -------------------------------------------------------------------------------------------

    def fetch(self, url: str, known: Validators | None = None) -> Fetched:
        """Download ``url`` (conditionally when ``known`` validators are given), retrying transient failures.

        Never raises for a network problem or a bad URL: the returned :class:`Fetched` says what happened.
        """
        if self._closed.is_set():
            raise RuntimeError("Fetcher is closed")
        failure: _Failure | None = None
        attempts = 0
        for attempt in range(self.retries + 1):
            if attempt:
                assert failure is not None
                if self._closed.wait(self._retry_wait(attempt - 1, failure.retry_after)):
                    return _failed(url, known, "fetcher closed before a retry, " + failure.reason)
            attempts += 1
            try:
                return self._attempt(url, known)
            except _Failure as exc:
                failure = exc
            if not failure.retryable:
                break
        assert failure is not None
        suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
        return _failed(url, known, failure.reason + suffix)

    def fetch_many(
        self, requests: Iterable[tuple[str, Validators | None]], *, prefetch: int | None = None
    ) -> Iterator[Fetched]:
        """Download many ``(url, known validators)`` concurrently; yield the results in input order.

        At most ``prefetch`` (default ``2 * workers``) downloads are in flight or done but not yet taken, so
        memory stays bounded while the consumer's work overlaps with downloading. ``requests`` is consumed
        lazily, from the caller's thread only. Stopping the iteration early cancels the downloads not started.
        """
        limit = 2 * self.workers if prefetch is None else prefetch
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"prefetch must be an integer of at least 1, not {prefetch!r}")
        if self._closed.is_set():
            raise RuntimeError("Fetcher is closed")
        return self._fetch_many(iter(requests), limit)

    def close(self) -> None:
        """Cut the downloads in flight, cancel the queued ones and stop the worker threads."""
        with self._lock:
            self._closed.set()
            active = list(self._active)
            pool = self._pool
        for exchange in active:
            exchange.abort()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------------

    def _fetch_many(self, requests: Iterator[tuple[str, Validators | None]], limit: int) -> Iterator[Fetched]:
        pending: deque[Future[Fetched]] = deque()
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    try:
                        url, known = next(requests)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(self._executor().submit(self.fetch, url, known))
                if not pending:
                    return
                try:
                    result = pending.popleft().result()
                except CancelledError:
                    raise RuntimeError("Fetcher was closed during fetch_many") from None
                yield result
        finally:
            for future in pending:
                future.cancel()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("Fetcher is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imgsearch-fetch")
            return self._pool

    def _ssl_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                self._context = ssl.create_default_context()
            return self._context

    def _retry_wait(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number ``attempt + 1``: the server's ``Retry-After``, else backoff with jitter."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_WAIT)
        exponential = min(self.backoff * 2**attempt, MAX_RETRY_WAIT)
        return exponential * random.uniform(0.5, 1.0)  # jitter: workers that failed together retry apart

    def _headers(self, known: Validators | None) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent, "Accept": "*/*", "Accept-Encoding": "identity", "Connection": "close"}
        if known is not None:
            if known.etag:
                headers["If-None-Match"] = known.etag
            if known.last_modified:
                headers["If-Modified-Since"] = known.last_modified
        return headers

    def _attempt(self, url: str, known: Validators | None) -> Fetched:
        """One try: the request and the redirects it leads to, within one total deadline."""
        limit = DEADLINE_FACTOR * self.timeout
        deadline = time.monotonic() + limit
        headers = self._headers(known)
        conditional = "If-None-Match" in headers or "If-Modified-Since" in headers
        current = url
        target = _parse(url)
        seen = {urldefrag(url).url}
        redirects = 0
        while True:
            location: str | None = None
            context = self._ssl_context() if target.https else None
            exchange = _Exchange(
                target,
                timeout=self.timeout,
                deadline=deadline,
                limit=limit,
                context=context,
                public_only=self.public_only,
            )
            with self._lock:
                if self._closed.is_set():
                    raise _Failure("fetcher closed", retryable=False)
                self._active.add(exchange)
            try:
                with exchange:
                    try:
                        response = exchange.get(target.path, headers)
                        location = response.getheader("Location") if response.status in REDIRECT_STATUSES else None
                        if location is None:
                            return self._finish(url, current, known, conditional, exchange, response)
                    except (OSError, http.client.HTTPException, ValueError) as exc:
                        exchange.check()
                        raise _failure_from(exc, exchange.phase, exchange.timeout) from None
            finally:
                with self._lock:
                    self._active.discard(exchange)
            assert location is not None
            redirects += 1
            current = urljoin(current, _undo_latin1(location))
            if redirects > self.max_redirects:
                raise _Failure(f"too many redirects (more than {self.max_redirects})", retryable=False)
            if urlsplit(current).scheme.lower() not in _SCHEMES:
                raise _Failure(f"redirect to a non-HTTP URL refused: {_shorten(current)}", retryable=False)
            if urldefrag(current).url in seen:
                raise _Failure(f"redirect loop (back to {_shorten(current)})", retryable=False)
            seen.add(urldefrag(current).url)
            target = _parse(current)

    def _finish(
        self,
        url: str,
        current: str,
        known: Validators | None,
        conditional: bool,
        exchange: _Exchange,
        response: http.client.HTTPResponse,
    ) -> Fetched:
        """Turn a final (non-redirect) response into the result, reading the body of a 200."""
        status = response.status
        where = f" (at {_shorten(current)})" if current != url else ""
        if status == 304 and conditional:
            return Fetched(url, None, None, known or Validators(), not_modified=True)
        if status != 200:
            reason = f"HTTP {status} {_shorten(response.reason or '', 80)}".rstrip()
            retry_after = _retry_after(response.getheader("Retry-After")) if status in RETRY_STATUSES else None
            raise _Failure(reason + where, retryable=status in RETRY_STATUSES, retry_after=retry_after)
        declared = response.length  # None when chunked or not sent; http.client ignores a malformed value
        if declared is not None and declared > self.max_bytes:
            raise _Failure(
                f"too large: Content-Length {declared} exceeds the limit of {self.max_bytes} bytes{where}",
                retryable=False,
            )
        digest = hashlib.sha256()
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = response.read1(min(_CHUNK, self.max_bytes + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > self.max_bytes:
                raise _Failure(f"too large: more than {self.max_bytes} bytes{where}", retryable=False)
            digest.update(chunk)
            chunks.append(chunk)
            exchange.check()
        exchange.check()  # an end of data caused by the deadline's cut is not the end of the body
        if declared is not None and total < declared:
            raise _Failure(f"incomplete body: got {total} of {declared} bytes{where}", retryable=True)
        if total == 0:
            raise _Failure(f"empty response{where}", retryable=False)
        validators = Validators(
            etag=_validator(response.getheader("ETag")),
            last_modified=_validator(response.getheader("Last-Modified")),
        )
        return Fetched(url, b"".join(chunks), digest.hexdigest(), validators)


def _parse(url: str) -> _Target:
    """The request target of an http(s) URL, or a non-retryable failure saying why there is none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _Failure(f"invalid URL ({_shorten(str(exc))})", retryable=False) from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise _Failure("not an http:// or https:// URL", retryable=False)
    if not parts.hostname:
        raise _Failure("URL has no host", retryable=False)
    path = quote(parts.path or "/", safe=_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_SAFE)
    return _Target(https=scheme == "https", host=parts.hostname, port=port, path=path)


def _failure_from(exc: BaseException, phase: str, timeout: float) -> _Failure:
    """Describe a network or protocol exception in a few words, and classify it as transient or not."""
    if isinstance(exc, TimeoutError):
        if phase == "connect":
            return _Failure(f"connect timeout ({timeout:g} s)", retryable=True)
        return _Failure(f"read timeout (no data for {timeout:g} s)", retryable=True)
    if isinstance(exc, http.client.IncompleteRead):
        return _Failure("incomplete body (connection closed early)", retryable=True)
    if isinstance(exc, http.client.RemoteDisconnected):
        return _Failure("connection closed without a response", retryable=True)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _Failure(f"TLS certificate verification failed ({_describe(exc)})", retryable=False)
    if isinstance(exc, ssl.SSLError):
        return _Failure(f"TLS error ({_describe(exc)})", retryable=True)
    if isinstance(exc, socket.gaierror):
        return _Failure(f"cannot resolve host ({_describe(exc)})", retryable=exc.errno == socket.EAI_AGAIN)
    if isinstance(exc, ConnectionRefusedError):
        return _Failure("connection refused", retryable=True)
    if isinstance(exc, OSError):
        return _Failure(f"network error ({_describe(exc)})", retryable=True)
    if isinstance(exc, http.client.HTTPException):
        return _Failure(f"invalid HTTP response ({type(exc).__name__}: {_describe(exc)})", retryable=False)
    return _Failure(f"invalid request ({_describe(exc)})", retryable=False)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return _shorten(exc.strerror)
    return _shorten(str(exc)) or type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delay in seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _validator(value: str | None) -> str | None:
    """A header value fit to be stored and sent back, or None (a folded, control-laden or huge one is not)."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _MAX_VALIDATOR or not value.isprintable():
        return None
    return value


def _undo_latin1(text: str) -> str:
    """Header text as the server most likely meant it: http.client decodes as Latin-1, servers send UTF-8."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return text


def _shorten(text: str, limit: int = _MAX_REASON) -> str:
    """One line of at most ``limit`` characters, control characters escaped."""
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _failed(url: str, known: Validators | None, reason: str) -> Fetched:
    return Fetched(url, None, None, known or Validators(), error=_one_line(f"{url}: {reason}"))


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
