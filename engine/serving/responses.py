"""How the server says no, and how it sends embeddings.

Every refusal is a JSON body ``{"error": {"type": ..., "message": ...}}`` with a 4xx
status (503 + ``Retry-After`` when overloaded); vqclip's typed errors map to statuses
here, in one table, so each endpoint only raises. Embeddings go out as JSON floats or as
raw little-endian float32/float16 rows whose content type names the dtype and shape.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from vqclip.errors import (
    ImageDecodeError,
    InputShapeError,
    InvalidInputError,
    SearchIndexError,
    TextTooLongError,
    VqclipError,
)
from vqclip.serving.batcher import Overloaded

log = logging.getLogger(__name__)

__all__ = ["ApiError", "error_response", "install_error_handlers", "first_problem", "wanted_format",
           "embeddings_response", "EMBEDDING_TYPES"]

# Content types of binary embeddings (Accept header or ?format=): rows of little-endian floats.
EMBEDDING_TYPES = {"float32": "application/x-vqclip-float32", "float16": "application/x-vqclip-float16"}

# vqclip's errors a request can cause -> HTTP status.
_STATUS = (
    (SearchIndexError, 409),  # the index cannot answer (empty, damaged): not the request's shape
    ((InvalidInputError, ImageDecodeError, TextTooLongError, InputShapeError), 400),
)


class ApiError(Exception):
    """A refusal with its HTTP status, one-line message and extra headers."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request", headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers or {}


def error_response(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def retry_after(seconds: float) -> dict:
    """The Retry-After header for a wait of ``seconds``: whole seconds, at least 1."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception an endpoint raises with the JSON error shape."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.kind, str(e), e.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, e: Overloaded) -> JSONResponse:
        return error_response(503, e.reason, str(e), retry_after(e.retry_after_s))

    @app.exception_handler(VqclipError)
    async def _vqclip(_: Request, e: VqclipError) -> JSONResponse:
        status = next((s for types, s in _STATUS if isinstance(e, types)), 400)
        return error_response(status, type(e).__name__, str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", first_problem(e.errors()))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        return error_response(e.status_code, "http_error", str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:  # a bug of ours: logged, answered, never hung
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"internal error ({type(e).__name__}); see the server log")


def first_problem(errors: Any) -> str:
    """One line from pydantic's error list: where and what."""
    errors = list(errors)
    if not errors:
        return "the request is not valid"
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {e.get('msg', 'invalid')}{more}"


def wanted_format(request: Request, explicit: str | None) -> str:
    """'json', 'float32' or 'float16': the ``format`` asked for, else the Accept header's pick."""
    if explicit is not None:
        if explicit not in ("json", *EMBEDDING_TYPES):
            raise ApiError(400, f"format {explicit!r} is not one of json, float32, float16")
        return explicit
    accept = request.headers.get("accept", "")
    for fmt, ctype in EMBEDDING_TYPES.items():
        if ctype in accept:
            return fmt
    return "json"


def embeddings_response(emb: np.ndarray, fmt: str, meta: dict) -> Response:
    """(N, E) float32 unit rows as JSON (with ``meta``) or as raw rows of ``fmt``.

    Binary: ``N * E`` little-endian values, row-major; the content type carries
    ``rows`` and ``dim`` parameters and ``X-Embedding-Shape: N,E`` repeats them.
    """
    if fmt == "json":
        return JSONResponse({**meta, "dim": int(emb.shape[1]), "embeddings": emb.tolist()})
    data = np.ascontiguousarray(emb, dtype=np.dtype(fmt).newbyteorder("<")).tobytes()
    n, e = emb.shape
    return Response(data, media_type=f"{EMBEDDING_TYPES[fmt]}; rows={n}; dim={e}",
                    headers={"X-Embedding-Shape": f"{n},{e}", "X-Embedding-Dtype": fmt,
                             "X-Model": meta.get("model", "")})
