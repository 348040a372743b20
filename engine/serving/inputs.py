"""Reading requests: JSON or multipart bodies into the schemas, base64 and uploaded images
into the model's pixels, and the per-request deadline.

Images are decoded by vqclip's one decoder (``vqclip.preprocess.load_image``, the pixel
limit checked from the header before decoding) in worker threads, a bounded number at a
time, never on the event loop. Each failure names the item (``images[2]: ...``).
"""
from __future__ import annotations

import base64
import binascii
import time
from typing import Any, TypeVar

import anyio
import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError

from vqclip.encoder import Encoder
from vqclip.errors import ImageDecodeError
from vqclip.preprocess import load_image
from vqclip.serving.responses import ApiError, first_problem

__all__ = ["read_json", "read_form", "decode_base64", "decode_images", "deadline_for", "check_count"]

M = TypeVar("M", bound=BaseModel)

_JSON = ("application/json",)
_MULTIPART = "multipart/form-data"


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _validate(model: type[M], data: Any, raw: bool) -> M:
    try:
        return model.model_validate_json(data) if raw else model.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        if errors and errors[0].get("type") == "json_invalid":
            raise ApiError(400, f"the body is not valid JSON: {errors[0].get('msg')}", "malformed_json") from None
        raise ApiError(422, first_problem(errors), "validation_error") from None


async def read_json(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``: 415 for another content type, 400 malformed, 422 wrong shape."""
    if _media_type(request) not in _JSON:
        raise ApiError(415, f"send the request as application/json (got {_media_type(request) or 'no content type'})",
                       "unsupported_media_type")
    return _validate(model, await request.body(), raw=True)


async def read_form(request: Request, model: type[M], files: str, max_files: int,
                    max_bytes: int) -> tuple[M, list[bytes]]:
    """A JSON body, or a multipart form whose ``files`` parts are uploads and other fields
    fill ``model`` (a repeated field is a list). Returns the model and the uploads' bytes."""
    kind = _media_type(request)
    if kind in _JSON:
        return _validate(model, await request.body(), raw=True), []
    if kind != _MULTIPART:
        raise ApiError(415, f"send application/json or multipart/form-data (got {kind or 'no content type'})",
                       "unsupported_media_type")
    try:
        form = await request.form(max_files=max_files, max_fields=256, max_part_size=max_bytes)
    except ApiError:
        raise
    except Exception as e:  # starlette wraps parser errors in HTTPException(400); keep one message
        raise ApiError(400, f"the multipart body cannot be read: {getattr(e, 'detail', e)}", "malformed_multipart") from e
    try:
        uploads, fields = [], {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                if key != files:
                    raise ApiError(400, f"file part {key!r} is not expected; send images as {files!r} parts")
                uploads.append(await value.read())
            else:
                fields.setdefault(key, []).append(value)
    finally:
        await form.close()
    list_fields = {n for n, f in model.model_fields.items() if f.annotation == list[str]}
    data = {k: (v if k in list_fields or len(v) > 1 else v[0]) for k, v in fields.items()}
    return _validate(model, data, raw=False), uploads


def decode_base64(items: list[str], what: str) -> list[bytes]:
    """base64 strings (or ``data:`` URLs) -> bytes; 400 naming the item, and saying that
    URLs are never fetched when one is given."""
    out = []
    for i, s in enumerate(items):
        s = s.strip()
        if s.lower().startswith(("http://", "https://", "ftp://", "file:")):
            raise ApiError(400, f"{what}[{i}] is a URL; the server never fetches URLs: send the image's bytes "
                                f"(base64 in JSON, or a multipart upload)")
        if s.startswith("data:"):
            s = s.partition(",")[2]
        try:
            out.append(base64.b64decode(s, validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{what}[{i}] is not valid base64; encode the image file's bytes") from None
    return out


def check_text_length(text: str, max_chars: int, what: str) -> None:
    """400 for a text longer than ``max_chars`` (checked before tokenising)."""
    if len(text) > max_chars:
        raise ApiError(400, f"{what} has {len(text):,} characters, more than the limit of {max_chars:,}")


def check_count(n: int, limit: int, what: str) -> None:
    """400 for none or more than ``limit`` of ``what``."""
    if n < 1:
        raise ApiError(400, f"no {what} were given; give at least one")
    if n > limit:
        raise ApiError(400, f"{n} {what} given, more than the limit of {limit} per request; split the request",
                       "too_many_items")


def _decode_all(blobs: list[bytes], encoder: Encoder, max_pixels: int, what: str) -> np.ndarray:
    images = []
    for i, data in enumerate(blobs):
        if not data:
            raise ImageDecodeError(f"{what}[{i}] is empty (0 bytes); it holds no image")
        try:
            images.append(load_image(data, max_pixels, copy=False))
        except ImageDecodeError as e:
            raise ImageDecodeError(f"{what}[{i}]: {e}") from e
    return encoder.preprocess(images)  # (n, 3, S, S) float32


async def decode_images(blobs: list[bytes], encoder: Encoder, max_pixels: int, limiter: anyio.CapacityLimiter,
                        what: str = "images") -> np.ndarray:
    """Encoded images -> the encoder's float32 (n, 3, S, S) pixels, decoded off the event loop."""
    return await anyio.to_thread.run_sync(_decode_all, blobs, encoder, max_pixels, what, limiter=limiter)


def deadline_for(request: Request, timeout_s: float) -> float:
    """``time.monotonic()`` by which the request must be answered: the server's timeout, or
    less if the client sends ``X-Request-Timeout-Ms``."""
    asked = request.headers.get("x-request-timeout-ms")
    if asked is not None:
        try:
            ms = float(asked)
        except ValueError:
            ms = float("nan")
        if not ms > 0:
            raise ApiError(400, f"X-Request-Timeout-Ms must be a positive number of milliseconds, got {asked!r}")
        timeout_s = min(timeout_s, ms / 1000)
    return time.monotonic() + timeout_s
