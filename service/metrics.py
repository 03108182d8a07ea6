"""Prometheus metrics of the service: HTTP traffic, the search pipeline and the index.

Every app gets its own registry (several apps can live in one process, as in tests).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})


class Metrics:
    """The service's metrics, in one registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "sbir_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "sbir_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY,
            registry=r,
        )
        self.decode = Histogram(
            "sbir_decode_seconds", "decoding or rendering one sketch", buckets=LATENCY, registry=r
        )
        self.queue = Histogram(
            "sbir_batch_wait_seconds",
            "a sketch's wait for its micro-batch",
            buckets=LATENCY,
            registry=r,
        )
        self.encode = Histogram(
            "sbir_encode_seconds",
            "encoding one micro-batch of sketches",
            buckets=LATENCY,
            registry=r,
        )
        self.search = Histogram(
            "sbir_search_seconds",
            "searching the index for one micro-batch",
            buckets=LATENCY,
            registry=r,
        )
        self.batch = Histogram(
            "sbir_batch_size", "sketches per micro-batch", buckets=BATCH_SIZES, registry=r
        )
        self.index_size = Gauge("sbir_index_size", "photos in the index served", registry=r)
        self.index_version = Gauge(
            "sbir_index_version", "number of the index version served (v000012 -> 12)", registry=r
        )
        self.index_info = Gauge(
            "sbir_index_info", "the index version served", ["version"], registry=r
        )
        self.ready = Gauge("sbir_ready", "1 when the model and the index are loaded", registry=r)
        self.busy = Counter(
            "sbir_busy_rejections",
            "uploads refused with 503 because the decode threads and their queue were full",
            registry=r,
        )
        self.disconnects = Counter(
            "sbir_client_disconnects",
            "requests whose client went away before the body arrived (counted as status 499)",
            registry=r,
        )
        self.reloads = Counter(
            "sbir_index_reloads", "index reload attempts by outcome", ["outcome"], registry=r
        )

    def observe_batch(
        self, size: int, encode_s: float, search_s: float, waits: Sequence[float]
    ) -> None:
        self.batch.observe(size)
        self.encode.observe(encode_s)
        self.search.observe(search_s)
        for wait in waits:
            self.queue.observe(wait)

    def set_index(self, version: str, size: int) -> None:
        self.index_size.set(size)
        digits = re.sub(r"\D", "", version)
        self.index_version.set(int(digits) if digits else 0)
        self.index_info.clear()
        self.index_info.labels(version=version).set(1)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not its raw path) and
    method: both from closed sets, so the metrics stay small whatever clients send."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route, method = route_label(scope), method_label(scope)
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


def method_label(scope: Scope) -> str:
    """The request's method if it is a standard one, else 'other': a client may send any
    token as a method, and every label value is a series kept for the process's life."""
    method = scope["method"]
    return method if method in METHODS else "other"


def route_label(scope: Scope) -> str:
    """The matched route's path template, the mount's path, or 'unmatched' (bounded labels)."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    mount = scope.get("app_root_path") or scope.get("root_path") or ""
    return mount if mount else "unmatched"
