"""Prometheus metrics of one server: requests, errors and latency per endpoint, queue depth,
batch sizes, dropped requests. Each app has its own registry, so several apps (tests, a
generation worker's own metrics added later) never clash over global names.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "MetricsMiddleware"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metric families, in one registry (``render`` gives the text format)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("vqclip_http_requests", "HTTP requests answered", ["endpoint", "method", "status"],
                                registry=r)
        self.errors = Counter("vqclip_http_errors", "HTTP requests answered with a 4xx or 5xx",
                              ["endpoint", "status"], registry=r)
        self.latency = Histogram("vqclip_http_request_duration_seconds", "Time from request to the last body byte",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("vqclip_http_requests_in_flight", "Requests being handled now", registry=r)
        self.queue_depth = Gauge("vqclip_queue_depth", "Items waiting in a batcher's queue", ["queue"], registry=r)
        self.batch_size = Histogram("vqclip_batch_size", "Items per backend call", ["queue"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("vqclip_batch_duration_seconds", "Time of one backend call", ["queue"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.dropped = Counter("vqclip_dropped_requests", "Requests dropped or refused by a queue, by reason",
                               ["queue", "reason"], registry=r)
        self.ready = Gauge("vqclip_ready", "1 when models are loaded and warmed up", registry=r)

    def batcher_hooks(self, queue: str) -> dict[str, Callable[..., None]]:
        """The ``on_batch`` / ``on_drop`` callbacks of a batcher named ``queue``."""
        size, seconds = self.batch_size.labels(queue), self.batch_seconds.labels(queue)

        def on_batch(items: int, s: float) -> None:
            size.observe(items)
            seconds.observe(s)

        return {"on_batch": on_batch, "on_drop": lambda reason: self.dropped.labels(queue, reason).inc()}

    def watch_depth(self, queue: str, depth: Callable[[], float]) -> None:
        """Report ``depth()`` as the queue's depth, read at each scrape."""
        self.queue_depth.labels(queue).set_function(depth)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware counting each HTTP request by its route template (never the raw path,
    which a client controls and would explode the label set)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]  # an app that raises before answering

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        t = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            m.latency.labels(endpoint).observe(time.perf_counter() - t)
            m.requests.labels(endpoint, scope["method"], str(status[0])).inc()
            if status[0] >= 400:
                m.errors.labels(endpoint, str(status[0])).inc()
