"""The JSON shapes of the HTTP API (pydantic), which are also its OpenAPI schema at ``/docs``.

Requests forbid unknown fields, so a misspelt field is a 422 that names it rather than a
silently ignored option. Images travel as base64 strings in JSON (a ``data:`` URL is
accepted, a web URL never: the server fetches nothing) or as multipart file parts.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vqclip.jobs.templates import NAMED_TEMPLATES

__all__ = [
    "EmbedTextRequest", "EmbedImageRequest", "ClassifyRequest", "SearchRequest", "EmbeddingsResponse",
    "LabelScore", "ClassifyResponse", "SearchHit", "SearchResponse", "IndexInfo", "IndexesResponse", "ModelInfo",
    "InfoResponse", "StatusResponse", "ErrorResponse",
]

Format = Literal["json", "float32", "float16"]
TemplateSet = Literal[NAMED_TEMPLATES]  # type: ignore[valid-type]  # the names, not a file path: clients never name server files


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedTextRequest(_Request):
    texts: list[str] = Field(description="texts to embed, one row each")
    truncate: bool = Field(False, description="cut texts longer than the model's context instead of refusing them")
    format: Format | None = Field(None, description="json (default) or raw little-endian float32/float16 rows; "
                                                    "the Accept header can ask for the binary types too")


class EmbedImageRequest(_Request):
    images: list[str] = Field(default_factory=list, description="base64 image files (or data: URLs), one row "
                                                               "each; multipart uploads come after them")
    format: Format | None = Field(None, description="as for /v1/embed/text")


class ClassifyRequest(_Request):
    images: list[str] = Field(default_factory=list, description="base64 image files (or data: URLs)")
    labels: list[str] = Field(description="the labels to rank, each given once")
    templates: Union[TemplateSet, list[str], None] = Field(
        None, description="a built-in template set, or templates each with one '{}' (default: the model's own)")
    top_k: int = Field(5, description="labels returned per image, best first")

    @field_validator("templates", mode="before")
    @classmethod
    def _one_template(cls, v: object) -> object:
        """A single custom template may come as a plain string (a multipart field, a hand-written call)."""
        return [v] if isinstance(v, str) and v not in NAMED_TEMPLATES else v


class SearchRequest(_Request):
    index: str | None = Field(None, description="a loaded index (GET /v1/indexes); may be left out when only one is")
    text: str | None = Field(None, description="a text query (give this or image)")
    image: str | None = Field(None, description="a base64 image query (give this or text)")
    k: int | None = Field(None, description="results wanted (default 10, or the server's max_k if lower)")
    truncate: bool = Field(False, description="cut a text longer than the model's context instead of refusing it")


class EmbeddingsResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(description="L2-normalised rows, one per input, in input order")


class LabelScore(BaseModel):
    label: str
    prob: float = Field(description="softmax probability over all the labels, as `vqclip classify` gives")


class ClassifyResponse(BaseModel):
    model: str
    results: list[list[LabelScore]] = Field(description="per image, the top-k labels, best first")


class SearchHit(BaseModel):
    path: str = Field(description="the image's path relative to the index's root folder")
    score: float = Field(description="cosine similarity of query and image, in [-1, 1]")
    row: int
    thumbnail: str = Field(description="URL of a JPEG thumbnail")
    file: str = Field(description="URL of the image file")


class SearchResponse(BaseModel):
    index: str
    model: str
    hits: list[SearchHit]


class IndexInfo(BaseModel):
    name: str
    entries: int
    model: str
    storage: str
    dim: int


class IndexesResponse(BaseModel):
    indexes: list[IndexInfo]


class ModelInfo(BaseModel):
    name: str
    digest: str
    backend: str
    dim: int
    image_size: int
    context_length: int


class InfoResponse(BaseModel):
    version: str
    model: ModelInfo
    features: list[str] = Field(description="the panels and routers this server runs (embed, classify, search, ...)")
    limits: dict[str, float]
    auth: bool = Field(description="whether the /v1 endpoints need an API key")


class StatusResponse(BaseModel):
    status: str


class _ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: _ErrorDetail
