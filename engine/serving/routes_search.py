"""``/v1/search`` and the loaded indexes: their list, and thumbnails and files by row.

A query is encoded through its index's model batcher (text or image), then answered
through the index's search batcher: concurrent queries share one fused top-k kernel call
(``Index.search_embeddings``), so results are those of ``vqclip search`` with the same
model. Hits carry the path relative to the index root (server paths stay private) and
the URLs of their thumbnail and file, which name a row, never a path.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from vqclip._validate import check_k
from vqclip.serving.batcher import Announcement
from vqclip.serving.files import entry_path, media_type, read_inside
from vqclip.serving.inputs import check_text_length, decode_base64, decode_images, read_form
from vqclip.serving.responses import ApiError
from vqclip.serving.routes_encode import ERRORS_DOC, request_body_doc
from vqclip.serving.runtime import LoadedIndex
from vqclip.serving.schemas import IndexesResponse, IndexInfo, SearchHit, SearchRequest, SearchResponse
from vqclip.tokenizer import tokenize

if TYPE_CHECKING:
    from vqclip.serving.app import ServerState

__all__ = ["router"]

_DEFAULT_K = 10  # as `vqclip search`

_NOT_FOUND_DOC = {**ERRORS_DOC, 403: ERRORS_DOC[400] | {"description": "the entry's file is outside the index root"},
                  404: ERRORS_DOC[400] | {"description": "no such index, row or file"}}


def router(state: "ServerState") -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(state.access)])
    cfg = state.config

    def loaded(name: str | None) -> LoadedIndex:
        try:
            return state.runtime.index(name)
        except KeyError as e:
            raise ApiError(404, str(e.args[0]), "not_found") from None

    @r.post("/search", response_model=SearchResponse, responses=_NOT_FOUND_DOC,
            openapi_extra=request_body_doc(SearchRequest, {"image": {"type": "string", "format": "binary"},
                                                           "text": {"type": "string"}, "index": {"type": "string"},
                                                           "k": {"type": "integer"}}))
    async def search(request: Request) -> SearchResponse:
        """The top-k images of a loaded index for a text or an image query, best first."""
        deadline = state.deadline(request)
        req, uploads = await read_form(request, SearchRequest, "image", 1, cfg.max_body_bytes)
        li = loaded(req.index)
        with li.search.announce() as coming:
            return await _search(request, req, uploads, li, deadline, coming)

    async def _search(request: Request, req: SearchRequest, uploads: list[bytes], li: LoadedIndex, deadline: float,
                      coming: Announcement) -> SearchResponse:
        k = check_k(req.k) if req.k is not None else min(_DEFAULT_K, cfg.max_k)
        if k > cfg.max_k:
            raise ApiError(400, f"k={k} is more than the limit of {cfg.max_k}")
        images = decode_base64([req.image], "image") if req.image is not None else uploads
        if (req.text is None) == (not images):
            raise ApiError(400, "give exactly one query: text, or an image (base64 'image' or an uploaded 'image' part)")
        slot = li.slot
        if req.text is not None:
            text = req.text.strip()
            if not text:
                raise ApiError(400, "the text query is empty or only whitespace; give some words to search for")
            check_text_length(text, cfg.max_text_chars, "the text query")
            ids = tokenize([text], context_length=slot.encoder.context_length, truncate=req.truncate)
            query = await state.guard(request, slot.text.submit(ids, 1, deadline))
        else:
            with slot.image.announce() as image_coming:
                pixels = await state.guard(request, decode_images(images, slot.encoder, cfg.max_image_pixels,
                                                                  state.decode_limiter, "image"))
                query = await state.guard(request, slot.image.submit(pixels, 1, deadline, image_coming))
        [hits] = await state.guard(request, li.search.submit((query, k), 1, deadline, coming))
        root = li.root
        base = f"/v1/indexes/{li.name}/rows"
        return SearchResponse(index=li.name, model=slot.encoder.identity.name, hits=[
            SearchHit(path=Path(h.path).relative_to(root).as_posix(), score=h.score, row=h.row,
                      thumbnail=f"{base}/{h.row}/thumbnail", file=f"{base}/{h.row}/file") for h in hits])

    @r.get("/indexes", response_model=IndexesResponse)
    async def indexes() -> IndexesResponse:
        """The loaded indexes: name, entries, the model that built each, storage, dimension."""
        return IndexesResponse(indexes=[
            IndexInfo(name=n, entries=len(li.index), model=li.index.store.header.model_name,
                      storage=li.index.store.header.storage, dim=li.index.store.header.embed_dim)
            for n, li in sorted(state.runtime.indexes.items())])

    @r.get("/indexes/{name}/rows/{row}/thumbnail", response_class=Response, responses={
        **_NOT_FOUND_DOC, 200: {"content": {"image/jpeg": {}}, "description": "a JPEG thumbnail"}})
    async def thumbnail(name: str, row: int) -> Response:
        """A JPEG thumbnail of the image at ``row`` of index ``name``."""
        li = loaded(name)
        jpeg = await anyio.to_thread.run_sync(state.thumbnails.get, li, row, limiter=state.decode_limiter)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @r.get("/indexes/{name}/rows/{row}/file", response_class=Response, responses={
        **_NOT_FOUND_DOC, 200: {"content": {"image/*": {}}, "description": "the image file as stored"}})
    async def file(name: str, row: int) -> Response:
        """The image file at ``row`` of index ``name``, read from inside the index's root only."""
        li = loaded(name)
        path, data = await anyio.to_thread.run_sync(
            lambda: read_inside(li.root, entry_path(li, row), cfg.max_file_bytes))
        kind = media_type(path)
        headers = {"Cache-Control": "private, max-age=3600", "Content-Security-Policy": "sandbox"}
        if kind is None:
            headers["Content-Disposition"] = "attachment"
        return Response(data, media_type=kind or "application/octet-stream", headers=headers)

    return r
