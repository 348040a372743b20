"""The FastAPI app factory and the process that serves it (``vqclip serve``).

``create_app(config)`` loads what the config names (or takes a ready ``Runtime``), then
mounts one router per ``Feature`` in ``FEATURES``. A feature is a router plus optional
start/stop hooks run in the app's lifespan, with a place in ``ServerState.extras`` for
its own state: a new job family (generation) is one more ``Feature``, and needs no change
to the batchers or to this factory.

Middleware, outermost first: metrics (every request counted by its route), body-size
limit (413), security headers, CORS only when origins are configured. Every ``/v1`` route
depends on ``ServerState.access`` (API key, rate limit).

Example::

    app = create_app(load_config(overrides={"indexes": {"photos": "photos.vqindex"}}))
    serve(app, host="127.0.0.1", port=8000)      # uvicorn; SIGTERM finishes in-flight work
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.routing import APIRouter

from vqclip import __version__
from vqclip.encoder import Encoder
from vqclip.serving import generation, routes_encode, routes_ops, routes_search
from vqclip.serving.config import ServerConfig
from vqclip.serving.files import Thumbnails
from vqclip.serving.inputs import deadline_for
from vqclip.serving.limits import ApiKeys, BodyLimitMiddleware, RateLimiter
from vqclip.serving.metrics import Metrics, MetricsMiddleware
from vqclip.serving.responses import ApiError, install_error_handlers
from vqclip.serving.runtime import Runtime

log = logging.getLogger(__name__)

__all__ = ["Feature", "FEATURES", "ServerState", "create_app", "serve"]

T = TypeVar("T")

# The page's scripts and styles come from this server only; images may be blob: URLs made by the page.
_PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
             "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


@dataclass
class ServerState:
    """Everything a request handler needs, built once per app."""

    config: ServerConfig
    runtime: Runtime
    metrics: Metrics
    keys: ApiKeys | None
    limiter: RateLimiter | None
    thumbnails: Thumbnails
    features: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)  # per-feature state (a job registry, a worker)
    ready: bool = False  # loaded and warmed up, and not shutting down
    decode_limiter: anyio.CapacityLimiter | None = None  # made in the lifespan, inside the event loop

    @property
    def encoder(self) -> Encoder:
        return self.runtime.main.encoder

    async def access(self, request: Request) -> str:
        """FastAPI dependency of every /v1 route: the caller's name, after the key check
        (401) and the rate limit (429)."""
        caller = request.client.host if request.client else "unknown"
        if self.keys is not None:
            caller = self.keys.identify(request.headers.get("authorization"))
        if self.limiter is not None:
            self.limiter.take(caller)
        return caller

    def deadline(self, request: Request) -> float:
        return deadline_for(request, self.config.timeout_s)

    async def guard(self, request: Request, work: Awaitable[T]) -> T:
        """Await ``work`` unless the client disconnects first; then cancel it (queued batcher
        items are dropped before they are computed) and answer 499.

        Only once the body has been read: the disconnect watch takes messages from the same
        ``receive`` and would swallow body chunks still to come."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ApiError(499, "the client closed the connection before the answer was ready", "client_closed")


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@dataclass(frozen=True)
class Feature:
    """A family of endpoints: its router, and hooks run when the app starts and stops."""

    name: str
    router: Callable[[ServerState], APIRouter]
    enabled: Callable[[ServerState], bool] = lambda state: True
    setup: Callable[[ServerState], None] | None = None  # in create_app, before anything listens (load models)
    start: Callable[[ServerState], None] | None = None  # after the runtime is up (e.g. start a stepping worker)
    stop: Callable[[ServerState], None] | None = None  # before the batchers close (e.g. cancel jobs, save images)


# What a server runs, in this order; a feature is on where its ``enabled`` says so.
FEATURES: tuple[Feature, ...] = (
    Feature("embed", routes_encode.embed_router),
    Feature("classify", routes_encode.classify_router),
    Feature("search", routes_search.router),
    Feature("generate", generation.router, enabled=lambda state: state.config.generation_jobs > 0,
            setup=generation.setup, start=generation.start, stop=generation.stop),
)


class _SecurityHeaders:
    """ASGI middleware: no MIME sniffing or referrers anywhere; a strict CSP on the page."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if page:
                    headers.append((b"content-security-policy", _PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(config: ServerConfig, runtime: Runtime | None = None, *,
               features: tuple[Feature, ...] | None = None) -> FastAPI:
    """The app for ``config``: loads its model and indexes unless ``runtime`` is given.

    Raises ``ServerSetupError`` for a bad key file and what ``Runtime.load`` raises for a
    bad model or index, before anything listens.
    """
    metrics = runtime.metrics if runtime is not None else Metrics()
    keys = ApiKeys.load(config.api_key_file) if config.api_key_file else None
    runtime = runtime if runtime is not None else Runtime.load(config, metrics)
    state = ServerState(
        config, runtime, metrics, keys,
        RateLimiter(config.rate_limit, config.burst) if config.rate_limit > 0 else None,
        Thumbnails(config.thumbnail_px, config.max_image_pixels, config.max_file_bytes))
    active = [f for f in (features if features is not None else FEATURES) if f.enabled(state)]
    state.features = [f.name for f in active]
    for f in active:
        if f.setup:
            f.setup(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.decode_limiter = anyio.CapacityLimiter(config.decode_threads)
        for f in active:
            if f.start:
                f.start(state)
        warm = asyncio.ensure_future(anyio.to_thread.run_sync(_warm_up, state))
        try:
            yield
        finally:
            state.ready = False
            metrics.ready.set(0)
            with contextlib.suppress(BaseException):
                await warm
            for f in reversed(active):
                if f.stop:
                    f.stop(state)
            await anyio.to_thread.run_sync(runtime.close)

    app = FastAPI(title="vqclip", version=__version__, lifespan=lifespan,
                  description="CLIP embeddings, zero-shot classification, image search and CLIP-guided generation jobs, "
                              "batched on the server. "
                              "Errors are JSON {error: {type, message}}; a request may ask for a deadline shorter "
                              "than the server's with the header X-Request-Timeout-Ms.")
    app.state.vqclip = state
    install_error_handlers(app)
    app.include_router(routes_ops.router(state))
    app.mount("/static", routes_ops.static_files(), name="static")
    for f in active:
        app.include_router(f.router(state))
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-Timeout-Ms"])
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _warm_up(state: ServerState) -> None:
    t = time.perf_counter()
    try:
        state.runtime.warm_up()
    except Exception:  # the requests will fail the same way and say why; probes must not route to us
        log.exception("warm-up failed; /readyz stays 503")
        return
    state.ready = True
    state.metrics.ready.set(1)
    log.info("warmed up in %.1f s; ready", time.perf_counter() - t)


def serve(app: FastAPI, host: str, port: int, *, log_level: str = "info", graceful_timeout_s: float = 10.0,
          max_connections: int = 1024) -> None:
    """Run ``app`` on uvicorn until SIGINT/SIGTERM, then stop taking connections, let
    in-flight requests finish (up to ``graceful_timeout_s``) and close the workers."""
    import uvicorn

    state: ServerState = app.state.vqclip

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.ready = False  # /readyz says so at once, so a load balancer stops sending
            super().handle_exit(sig, frame)

    cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False,
                         timeout_graceful_shutdown=graceful_timeout_s, limit_concurrency=max_connections,
                         access_log=log_level in ("debug", "trace"))
    _Server(cfg).run()
