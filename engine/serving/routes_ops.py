"""The operator's endpoints and the page: health, readiness, metrics, server info, ``/``.

``/healthz``, ``/readyz`` and ``/metrics`` need no key (probes and scrapers run inside the
deployment; the server binds loopback by default); ``/v1/info`` does, like all of ``/v1``.
"""
from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from vqclip import __version__
from vqclip.serving.schemas import InfoResponse, ModelInfo, StatusResponse

if TYPE_CHECKING:
    from vqclip.serving.app import ServerState

__all__ = ["router", "static_files", "STATIC_DIR"]

STATIC_DIR = resources.files("vqclip").joinpath("serving", "static")

# The limits a client may want to respect up front (the page uses them).
_PUBLIC_LIMITS = ("max_body_bytes", "max_image_pixels", "max_items", "max_labels", "max_prompts", "max_k",
                  "max_text_chars", "max_batch", "timeout_s")


def static_files() -> StaticFiles:
    """The page's scripts and styles, mounted at /static by the app (a router cannot mount)."""
    return StaticFiles(directory=str(STATIC_DIR))


def router(state: "ServerState") -> APIRouter:
    r = APIRouter()

    @r.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC_DIR.joinpath("index.html")), media_type="text/html")

    @r.get("/healthz", response_model=StatusResponse, tags=["operations"])
    async def healthz() -> dict:
        """Alive: the process answers HTTP."""
        return {"status": "ok"}

    @r.get("/readyz", response_model=StatusResponse, tags=["operations"],
           responses={503: {"model": StatusResponse, "description": "loading, warming up or shutting down"}})
    async def readyz() -> Response:
        """Ready: models loaded and warmed up, and not shutting down."""
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "1"})

    @r.get("/metrics", tags=["operations"], response_class=Response,
           responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics() -> Response:
        """Prometheus metrics: requests, errors, latency, queue depth, batch sizes."""
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @r.get("/v1/info", response_model=InfoResponse, tags=["operations"])
    async def info(_caller: str = Depends(state.access)) -> InfoResponse:
        """The model served, the features on, and the request limits."""
        enc = state.encoder
        return InfoResponse(
            version=__version__,
            model=ModelInfo(name=enc.identity.name, digest=enc.identity.digest, backend=enc.backend,
                            dim=int(state.runtime.main.dim), image_size=enc.image_size,
                            context_length=enc.context_length),
            features=state.features, auth=state.keys is not None,
            limits={k: float(getattr(state.config, k)) for k in _PUBLIC_LIMITS})

    return r
