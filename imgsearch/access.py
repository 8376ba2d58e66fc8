"""Who may call the HTTP service and how often: API keys with scopes, and a request budget per key.

The service asks :class:`Gatekeeper` about every request before answering it. Keys are checked in the database
(:func:`imgsearch.keys.check`) and the answer kept for a few seconds, so a busy service costs the database one
look-up per key per few seconds, and a revoked key stops working within that time. The budget is a token bucket
per key (``rate_limit`` requests a minute, up to that many at once), per service process.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from imgsearch import keys

#: The endpoints (path prefixes) anyone may call: probes, metrics, the page and its files, the API description.
OPEN = ("/livez", "/readyz", "/healthz", "/metrics", "/static/", "/openapi.json", "/docs", "/redoc")
#: What each endpoint needs; an endpoint not listed needs ``search``.
NEEDS = {"/events": "write"}


@dataclass(frozen=True)
class Decision:
    """The answer to one request: ``status`` 0 lets it through; else the status, the error and the seconds after
    which to retry (for 429)."""

    status: int = 0
    error: str = ""
    retry_after: int | None = None
    key: str | None = None


class _Bucket:
    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 if a request may go now, else the seconds until it may."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Gatekeeper:
    """Decides whether a request may be answered (thread-safe).

    ``lookup`` checks a key in the database (:func:`imgsearch.keys.check` bound to an engine). Keys are required
    as soon as one is active, and always when ``public`` (the service listens beyond loopback). ``rate_limit``
    (requests a minute per key, 0: none) applies to requests made with a key.
    """

    def __init__(
        self,
        lookup: Callable[[str | None], keys.Check],
        *,
        public: bool = False,
        rate_limit: int = 0,
        cache_seconds: float = 5.0,
    ) -> None:
        self.lookup = lookup
        self.public = public
        self.rate_limit = rate_limit
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._checks: dict[str | None, tuple[float, keys.Check]] = {}
        self._buckets: dict[str, _Bucket] = {}

    def _check(self, key: str | None) -> keys.Check:
        now = time.monotonic()
        with self._lock:
            cached = self._checks.get(key)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        result = self.lookup(key)
        with self._lock:
            if len(self._checks) > 10_000:  # many different bad keys: forget them rather than grow
                self._checks.clear()
            self._checks[key] = (now, result)
        return result

    def decide(self, method: str, path: str, authorization: str | None) -> Decision:
        """Whether ``method path`` with this ``Authorization`` header may be answered."""
        if method == "OPTIONS" or path == "/" or path.startswith(OPEN):
            return Decision()
        endpoint = path.removeprefix("/v1") if path.startswith("/v1/") else path  # the same endpoint, versioned
        needed = next((scope for prefix, scope in NEEDS.items() if endpoint.startswith(prefix)), "search")
        key = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return Decision(401, "send the API key as Authorization: Bearer <key>")
            key = value.strip()
        check = self._check(key)
        if key is None:
            if check.any_active or self.public:
                return Decision(401, "an API key is needed: Authorization: Bearer <key> (imgsearch keys create)")
            return Decision()
        if check.key is None:
            return Decision(401, "this API key has expired" if check.expired else "unknown or revoked API key")
        if not keys.allows(check.key.scope, needed):
            return Decision(
                403, f"this key's scope ({check.key.scope}) does not allow {path} (it needs {needed} or above)"
            )
        if self.rate_limit:
            with self._lock:
                bucket = self._buckets.setdefault(check.key.name, _Bucket(self.rate_limit))
                wait = bucket.take()
            if wait > 0:
                return Decision(
                    429,
                    f"more than {self.rate_limit} requests a minute with this key: retry later",
                    retry_after=max(1, math.ceil(wait)),
                    key=check.key.name,
                )
        return Decision(key=check.key.name)
