"""What one ``vqclip serve`` process serves and the limits it enforces, as one dataclass.

``ServerConfig`` is built from defaults, then a YAML or JSON file (``--config FILE``), then
command-line flags, in that order; ``load_config`` refuses unknown keys and values out of
range with one line naming the key, so a typo never silently falls back to a default.

Example::

    cfg = load_config("serve.yaml", overrides={"port": 8080})
    cfg.max_batch, cfg.indexes   # 32, {"photos": "/data/photos.vqindex"}
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vqclip._files import read_regular
from vqclip.errors import VqclipError

__all__ = ["ServerConfig", "ServerSetupError", "load_config", "is_loopback"]


class ServerSetupError(VqclipError):
    """A server that cannot start as configured: a bad config file, key file or missing extra."""


@dataclass
class ServerConfig:
    """Every setting of the server; the defaults suit one trusted user on this machine."""

    # What is served.
    model: str | None = None  # zoo name or checkpoint path; None: the bundled shapes-clip
    arch: str | None = None  # zoo architecture of a ``model`` file that does not state it
    backend: str = "torch"  # torch, onnxruntime or tensorrt (onnxruntime + int8 is the fast CPU one)
    precision: str = "fp32"
    device: str | None = None  # cpu, cuda or cuda:N; None: the backend's own (cuda for tensorrt, else cpu)
    indexes: dict[str, str] = field(default_factory=dict)  # name in the API -> index folder or milvus:// target
    # Where it listens: loopback unless the operator says otherwise.
    host: str = "127.0.0.1"
    port: int = 8000
    # Dynamic batching (Triton's max_queue_delay semantics: a batch starts when the worker is free).
    max_batch: int = 32  # items per backend call
    max_wait_ms: float = 2.0  # longest the first queued item waits for company
    max_queue: int = 512  # items waiting per queue before new requests get 503
    timeout_s: float = 30.0  # per-request deadline; a client may ask for less (X-Request-Timeout-Ms)
    # Request limits: each refusal is a 4xx with a message naming the limit.
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 25_000_000  # judged from the header before decoding (decompression bombs)
    max_items: int = 64  # images or texts per request
    max_labels: int = 256
    max_prompts: int = 4096  # labels x templates per classification (text-encoder work)
    max_k: int = 1000
    max_text_chars: int = 2000  # per text, before tokenising
    # Access.
    api_key_file: str | None = None  # one key per line ("name:key" or "key"); none: no authentication
    rate_limit: float = 0.0  # requests per second per key (or per client address without keys); 0: off
    rate_burst: int = 0  # bucket size; 0: twice the rate, at least 1
    cors_origins: list[str] = field(default_factory=list)  # none: no CORS headers at all
    # Files of the loaded indexes.
    thumbnail_px: int = 256  # longest side of a thumbnail
    max_file_bytes: int = 64 * 1024 * 1024  # largest index file served or thumbnailed
    # Generation jobs (the "generate" feature; 0 jobs turns it off).
    generation_jobs: int = 4  # jobs stepped together at most; more wait in a queue
    generation_queue: int = 32  # jobs waiting before new ones get 503
    generation_history: int = 256  # finished jobs whose status and images are kept
    generation_clip: str | None = None  # the guiding CLIP (a zoo name or path); None: the served --model
    generation_vqgan: str | None = None  # the VQGAN; None: the bundled shapes-vqgan
    generation_out: str | None = None  # folder for the results (PNG + sidecar); None: kept in memory only
    generation_backend: str = "torch"  # "onnxruntime": steps run the exported step graph (no autograd)
    generation_step_graph: str | None = None  # its export folder; None: exported on first use into the cache
    generation_preview_every: int = 10  # steps between preview images in a job's events
    trust_request_id: bool = False  # take a proxy's X-Request-Id as a new job's id (behind a load balancer)
    max_generation_steps: int = 1000
    max_generation_side: int = 512  # pixels
    max_generation_cutn: int = 128
    # Housekeeping.
    label_cache: int = 256  # label sets whose embeddings are kept in memory
    decode_threads: int = 4  # images decoded at once across requests (bounds decoded-pixel memory)
    max_connections: int = 1024  # open connections and tasks; past it uvicorn answers 503
    graceful_timeout_s: float = 10.0  # on SIGTERM: time for in-flight requests to finish
    log_level: str = "info"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ServerSetupError`` naming the first setting out of range."""
        positive = ("max_batch", "max_queue", "max_body_bytes", "max_image_pixels", "max_items", "max_labels",
                    "max_prompts", "max_k", "max_text_chars", "thumbnail_px", "max_file_bytes", "label_cache",
                    "decode_threads", "max_connections", "generation_queue", "generation_history",
                    "generation_preview_every", "max_generation_steps", "max_generation_side", "max_generation_cutn")
        if isinstance(self.generation_jobs, bool) or not isinstance(self.generation_jobs, int) \
                or self.generation_jobs < 0:
            raise ServerSetupError(f"generation_jobs must be a whole number >= 0 (0: off), got {self.generation_jobs!r}")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ServerSetupError(f"{name} must be a whole number >= 1, got {v!r}")
        for name in ("max_wait_ms", "rate_limit", "graceful_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ServerSetupError(f"{name} must be a number >= 0, got {v!r}")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ServerSetupError(f"timeout_s must be a number > 0, got {self.timeout_s!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ServerSetupError(f"port must be 0-65535, got {self.port!r}")
        if isinstance(self.rate_burst, bool) or not isinstance(self.rate_burst, int) or self.rate_burst < 0:
            raise ServerSetupError(f"rate_burst must be a whole number >= 0, got {self.rate_burst!r}")
        if not isinstance(self.indexes, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                         for k, v in self.indexes.items()):
            raise ServerSetupError("indexes must map names to index folders, e.g. {photos: /data/photos.vqindex}")
        bad = [n for n in self.indexes if not n or not all(c.isalnum() or c in "-_." for c in n)]
        if bad:
            raise ServerSetupError(f"index name {bad[0]!r} must be non-empty letters, digits, '-', '_' or '.'")
        if self.generation_backend not in ("torch", "onnxruntime"):
            raise ServerSetupError(f"generation_backend must be torch or onnxruntime, got {self.generation_backend!r}")
        if self.generation_step_graph is not None and self.generation_backend != "onnxruntime":
            raise ServerSetupError("generation_step_graph runs on generation_backend onnxruntime; set both")
        if not isinstance(self.cors_origins, list) or not all(isinstance(o, str) for o in self.cors_origins):
            raise ServerSetupError("cors_origins must be a list of origins, e.g. [https://app.example.com]")

    @property
    def burst(self) -> int:
        """Tokens in a full rate-limit bucket."""
        return self.rate_burst or max(1, math.ceil(2 * self.rate_limit))


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ServerConfig:
    """Defaults, then the YAML/JSON file at ``path`` (if any), then ``overrides`` (None values skipped).

    Raises ``ServerSetupError`` for an unreadable file, one that is not a mapping, an unknown
    key (the message lists the known ones) or a value out of range.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(Path(path).expanduser()))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(ServerConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ServerSetupError(f"unknown setting {unknown[0]!r} in the server config; known: {', '.join(sorted(known))}")
    try:
        return dataclasses.replace(ServerConfig(), **values)
    except TypeError as e:  # a value of the wrong kind where a comparison was made
        raise ServerSetupError(f"bad server config value: {e}") from e


def _read_file(path: Path) -> dict[str, Any]:
    import yaml  # a dependency already (taming-transformers configs); reads JSON too

    try:
        text = read_regular(path, 16 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ServerSetupError(f"cannot read the server config {str(path)!r} ({e}); give a UTF-8 YAML or JSON file") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ServerSetupError(f"server config {str(path)!r} is not valid YAML/JSON: {str(e).splitlines()[0]}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ServerSetupError(f"server config {str(path)!r} must be a mapping of settings, got a {type(data).__name__}")
    return data
