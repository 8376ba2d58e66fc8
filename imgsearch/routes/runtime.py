"""What the endpoints share while the service runs, and the dependencies that hand it to them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request

from imgsearch.errors import InvalidQueryError
from imgsearch.fetch import Fetcher, is_url
from imgsearch.metrics import Metrics

if TYPE_CHECKING:
    from imgsearch.api import Catalogue
    from imgsearch.config import Settings
    from imgsearch.service import ModelGate, ServiceLimits


@dataclass
class Runtime:
    """The service's state: its settings and limits, and what its start made (the reader engine, the network, the
    gate in front of it, the library's handle). Kept on ``app.state.runtime``."""

    settings: Settings
    limits: ServiceLimits
    metrics: Metrics = field(default_factory=Metrics)
    #: Folders whose photos ``/photos`` may serve (resolved).
    roots: list[Path] = field(default_factory=list)
    featurizer: Any = None
    engine: Any = None
    gate: ModelGate | None = None
    catalogue: Catalogue | None = None
    #: ``/categories``' last answer and when it was made (refreshed at most once a minute).
    categories: tuple[float, list[dict[str, Any]]] = (0.0, [])


def runtime(request: Request) -> Runtime:
    """The running service's state (a dependency)."""
    return request.app.state.runtime


def shop(request: Request) -> Catalogue:
    """The library's handle (a dependency): searching through the reader engine and the network behind the gate."""
    catalogue = runtime(request).catalogue
    assert catalogue is not None, "the service has not started"
    return catalogue


def fetch_photo(state: Runtime, url: Any) -> bytes:
    """The photo at a URL a client gave: http(s) only, bounded in size and time, and (unless the operator allowed
    it) only from public addresses, so that the service cannot be made to reach its own network."""
    if not isinstance(url, str) or not is_url(url) or len(url) > 2048:
        raise InvalidQueryError("image_url must be an http:// or https:// address (at most 2048 characters)")
    limits = state.limits
    with Fetcher(
        workers=1,
        timeout=min(limits.request_timeout, 10.0),
        retries=1,
        max_bytes=limits.max_upload_bytes,
        public_only=not limits.private_urls,
    ) as fetcher:
        fetched = fetcher.fetch(url)
    if fetched.data is None:
        raise InvalidQueryError(fetched.error or f"{url}: nothing downloaded")
    return fetched.data
