"""Request metrics of the HTTP service in Prometheus' text format (``GET /metrics``).

A counter of requests by route and status, a latency histogram by route, and a counter of errors by kind: what
an operator graphs and alerts on. Kept in process (each worker of ``imgsearch serve --workers N`` reports its
own; Prometheus sums them), thread-safe, with no dependency.
"""

from __future__ import annotations

import threading
from collections import defaultdict

#: Upper bounds of the latency histogram's buckets, in seconds: searches take milliseconds, photo searches
#: a tenth of a second, anything beyond seconds is a problem.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counts and times the service's requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._errors: dict[tuple[str, str], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self._count: dict[str, int] = defaultdict(int)
        self._sum: dict[str, float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        with self._lock:
            self._requests[method, route, status] += 1
            buckets = self._buckets[route]
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self._count[route] += 1
            self._sum[route] += seconds

    def error(self, route: str, kind: str) -> None:
        """Record an error answered to a client (its exception class name, or ``internal``)."""
        with self._lock:
            self._errors[route, kind] += 1

    def render(self) -> str:
        """Everything recorded so far, in Prometheus' text exposition format."""
        lines = [
            "# HELP imgsearch_http_requests_total HTTP requests answered, by method, route and status.",
            "# TYPE imgsearch_http_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self._requests.items()):
                lines.append(
                    f'imgsearch_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}'
                )
            lines += [
                "# HELP imgsearch_http_request_duration_seconds Time to answer a request, by route.",
                "# TYPE imgsearch_http_request_duration_seconds histogram",
            ]
            for route in sorted(self._count):
                for bound, n in zip(LATENCY_BUCKETS, self._buckets[route], strict=True):
                    lines.append(f'imgsearch_http_request_duration_seconds_bucket{{route="{route}",le="{bound}"}} {n}')
                count = self._count[route]
                lines.append(f'imgsearch_http_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} {count}')
                lines.append(f'imgsearch_http_request_duration_seconds_sum{{route="{route}"}} {self._sum[route]:.6f}')
                lines.append(f'imgsearch_http_request_duration_seconds_count{{route="{route}"}} {count}')
            lines += [
                "# HELP imgsearch_http_errors_total Errors answered to clients, by route and kind.",
                "# TYPE imgsearch_http_errors_total counter",
            ]
            for (route, kind), n in sorted(self._errors.items()):
                lines.append(f'imgsearch_http_errors_total{{route="{route}",kind="{kind}"}} {n}')
        return "\n".join(lines) + "\n"
