"""``/v1/embed/text``, ``/v1/embed/image`` and ``/v1/classify``: the main model's encoders
through its batchers.

Texts are tokenised and images decoded per request, before queueing, so a bad item
fails only its own request with its own index in the message; the batcher sees only
arrays. Classification ranks with the library's classifier (label embeddings and
probabilities from ``vqclip.jobs.classify``), so the numbers are those of ``vqclip classify``.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Callable

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from vqclip._validate import check_k
from vqclip.jobs.classify import check_labels
from vqclip.jobs.templates import resolve_templates
from vqclip.serving.batcher import Announcement, Overloaded
from vqclip.serving.inputs import check_count, check_text_length, decode_base64, decode_images, read_form, read_json
from vqclip.serving.responses import EMBEDDING_TYPES, ApiError, embeddings_response, wanted_format
from vqclip.serving.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EmbeddingsResponse,
    EmbedImageRequest,
    EmbedTextRequest,
    ErrorResponse,
    LabelScore,
)
from vqclip.tokenizer import tokenize

if TYPE_CHECKING:
    from vqclip.serving.app import ServerState

__all__ = ["embed_router", "classify_router", "request_body_doc", "ERRORS_DOC"]

ERRORS_DOC: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse, "description": d} for s, d in (
        (400, "invalid input (bad image, too many items, ...)"), (401, "missing or wrong API key"),
        (413, "body too large"), (415, "wrong content type"), (422, "body of the wrong shape"),
        (429, "rate limit"), (503, "queue full or deadline passed (Retry-After)"))}

_EMBED_DOC = {**ERRORS_DOC, 200: {"model": EmbeddingsResponse, "description": "embeddings as JSON or raw rows",
                                  "content": {t: {} for t in EMBEDDING_TYPES.values()}}}


def request_body_doc(model: type, multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAPI requestBody for a route that reads its body itself (JSON, and multipart if given)."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": multipart}}
    return {"requestBody": {"required": True, "content": content}}


_IMAGES_PART = {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}}


async def _image_pixels(state: "ServerState", request: Request, model: type,
                        check: Callable[[Any], Any] | None = None) -> tuple[Any, np.ndarray, Any]:
    """Read a JSON or multipart images request, run ``check`` on it (the cheap refusals; its
    result is returned third), then
    decode its images (JSON base64 first, then uploads); only the decoding is given up when the
    client disconnects (``guard`` must not listen for a disconnect while the body is still being read)."""
    cfg = state.config
    req, uploads = await read_form(request, model, "images", cfg.max_items, cfg.max_body_bytes)
    check_count(len(req.images) + len(uploads), cfg.max_items, "images")
    checked = check(req) if check is not None else None
    blobs = decode_base64(req.images, "images") + uploads
    pixels = await state.guard(request, decode_images(blobs, state.encoder, cfg.max_image_pixels,
                                                      state.decode_limiter))
    return req, pixels, checked


def embed_router(state: "ServerState") -> APIRouter:
    r = APIRouter(prefix="/v1/embed", tags=["embed"], dependencies=[Depends(state.access)])
    slot = state.runtime.main
    meta = {"model": slot.encoder.identity.name}

    @r.post("/text", response_model=None, responses=_EMBED_DOC, openapi_extra=request_body_doc(EmbedTextRequest))
    async def embed_text(request: Request) -> Response:
        """L2-normalised text embeddings, one row per text, in order."""
        deadline = state.deadline(request)
        with slot.text.announce() as coming:
            req = await read_json(request, EmbedTextRequest)
            check_count(len(req.texts), state.config.max_items, "texts")
            for i, t in enumerate(req.texts):
                check_text_length(t, state.config.max_text_chars, f"texts[{i}]")
            fmt = wanted_format(request, req.format)
            ids = tokenize(req.texts, context_length=slot.encoder.context_length, truncate=req.truncate)
            emb = await state.guard(request, slot.text.submit(ids, len(ids), deadline, coming))
        return embeddings_response(emb, fmt, meta)

    @r.post("/image", response_model=None, responses=_EMBED_DOC,
            openapi_extra=request_body_doc(EmbedImageRequest, {**_IMAGES_PART, "format": {"type": "string"}}))
    async def embed_image(request: Request) -> Response:
        """L2-normalised image embeddings, one row per image: base64 JSON images, then multipart uploads."""
        deadline = state.deadline(request)
        with slot.image.announce() as coming:
            req, pixels, _ = await _image_pixels(state, request, EmbedImageRequest)
            fmt = wanted_format(request, req.format)
            emb = await state.guard(request, slot.image.submit(pixels, len(pixels), deadline, coming))
        return embeddings_response(emb, fmt, meta)

    return r


def classify_router(state: "ServerState") -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["classify"], dependencies=[Depends(state.access)])
    cfg = state.config
    slot = state.runtime.main

    @r.post("/classify", response_model=ClassifyResponse, responses=ERRORS_DOC,
            openapi_extra=request_body_doc(ClassifyRequest, {**_IMAGES_PART, "labels": {"type": "array",
                                           "items": {"type": "string"}}, "templates": {"type": "string"},
                                           "top_k": {"type": "integer"}}))
    async def classify(request: Request) -> ClassifyResponse:
        """Zero-shot classification: each image's top-k labels with softmax probabilities."""
        deadline = state.deadline(request)
        with slot.image.announce() as coming:
            return await _classify(request, deadline, coming)

    def _labels_and_templates(req: ClassifyRequest) -> tuple[list[str], list[str]]:
        check_k(req.top_k, "top_k")
        check_count(len(req.labels), cfg.max_labels, "labels")
        labels = check_labels(req.labels)
        for i, label in enumerate(labels):
            check_text_length(label, cfg.max_text_chars, f"labels[{i}]")
        templates = resolve_templates(req.templates, slot.encoder.default_template)
        if len(labels) * len(templates) > cfg.max_prompts:
            raise ApiError(400, f"{len(labels)} labels x {len(templates)} templates = {len(labels) * len(templates)} "
                                f"prompts, more than the limit of {cfg.max_prompts}; give fewer labels or templates",
                           "too_many_items")
        return labels, templates

    async def _classify(request: Request, deadline: float, coming: Announcement) -> ClassifyResponse:
        req, pixels, (labels, templates) = await _image_pixels(state, request, ClassifyRequest,
                                                                _labels_and_templates)
        # Abandoned, not awaited, at the deadline: the thread finishes and caches the labels for the retry.
        made = anyio.to_thread.run_sync(state.runtime.classifier, labels, templates, abandon_on_cancel=True)
        try:
            clf = await state.guard(request, asyncio.wait_for(made, max(0.0, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            raise Overloaded("the label embeddings were not ready within the request's deadline; retry (they "
                             "are being cached)", 1.0, "deadline") from None
        emb = await state.guard(request, slot.image.submit(pixels, len(pixels), deadline, coming))
        ranked = clf.rank(clf.probabilities(emb), req.top_k)
        return ClassifyResponse(model=slot.encoder.identity.name,
                                results=[[LabelScore(label=p.label, prob=p.prob) for p in row] for row in ranked])

    return r
