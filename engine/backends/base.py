"""The one session interface every backend implements.

A backend holds the components of one model (CLIP image and text encoders, VQGAN decoder
and encoder) on one device at one precision. Callers give numpy arrays and get float32
numpy arrays back, whatever runs underneath; embeddings come back L2-normalised (the
exported graphs normalise inside, the torch backend does it after the module).

Subclasses implement ``_specs`` (what they can run, with I/O specs), ``_run`` (one
forward pass on an already checked array) and ``describe``; everything a caller touches
(input checks, the four entry points, warm-up) lives here, so the backends cannot drift
apart in what they accept.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vqclip.backends._io_spec import GraphSpec, check_input
from vqclip.errors import InputShapeError, UnsupportedOperationError
from vqclip.manifest import COMPONENTS

__all__ = ["Backend", "BackendInfo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendInfo:
    """What a backend runs on, for logs, benchmarks and ``vqclip`` output."""

    backend: str  # "torch", "onnxruntime", "tensorrt"
    device: str  # "cpu", "cuda:0"
    precision: str  # "fp32", "fp16", "bf16", "int8"
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers in priority order
    threads: dict[str, int] = field(default_factory=dict)  # {"intra_op": 2, "inter_op": 1}
    components: tuple[str, ...] = ()  # what this backend can run
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific settings in force

    def __str__(self) -> str:
        bits = [f"{self.backend} {self.precision} on {self.device}"]
        if self.providers:
            bits.append("providers " + ",".join(self.providers))
        if self.threads:
            bits.append("threads " + ",".join(f"{k}={v}" for k, v in self.threads.items()))
        return "; ".join(bits)


class Backend(abc.ABC):
    """A loaded model on one device and precision; use ``vqclip.backends.open_backend``.

    All entry points take numpy arrays (a CPU torch tensor is accepted too) with the dtype
    and shape the component's spec states, and return C-contiguous float32 numpy arrays:

    - ``encode_image(pixels float32 [B,3,S,S])`` -> ``float32 [B,E]``, L2-normalised
    - ``encode_text(ids int64 [B,77])`` -> ``float32 [B,E]``, L2-normalised
    - ``decode(latent float32 [B,C,h,w])`` -> ``image float32 [B,3,16h,16w]`` in [-1, 1]
    - ``encode_latent(image float32 [B,3,H,W])`` -> ``latent float32 [B,C,H/16,W/16]``

    Wrong dtype or shape, or an empty batch, raises ``InputShapeError``; a component the
    backend does not hold (a text encoder in a VQGAN export, the encoder of a
    decode-only VQGAN) raises ``UnsupportedOperationError``.

    Threads: every backend is safe to call from several threads at once (one instance
    shared by a server's workers). ONNX Runtime's ``InferenceSession.run`` is thread-safe
    and runs concurrent calls in parallel; torch modules run concurrent forwards in
    inference mode; the paths that replay per-instance state (CUDA graphs, a compiled
    graph, a TensorRT execution context) take a lock around each call. Lazily created
    sessions are created once, under a lock. ``tests/backends/test_threads.py`` checks it.

    Example::

        with open_backend("onnxruntime", "exports/vit-b-32", precision="int8") as be:
            be.warmup()
            emb = be.encode_image(pixels)  # (B, 512) float32, unit norm
    """

    name: ClassVar[str]

    def __init__(self, precision: str, vocab_size: int | None = None):
        self.precision = precision
        self._vocab_size = vocab_size  # text ids must lie in [0, vocab_size) when known

    # --- what subclasses provide -------------------------------------------------------
    @abc.abstractmethod
    def _specs(self) -> dict[str, GraphSpec]:
        """The components this backend can run, at its precision, keyed by component."""

    @abc.abstractmethod
    def _run(self, component: str, x: np.ndarray) -> np.ndarray:
        """One forward pass on a checked, contiguous array; returns float32 numpy."""

    @abc.abstractmethod
    def describe(self) -> BackendInfo:
        """What this backend runs on: device, precision, providers, threads."""

    def load(self) -> None:
        """Create every component's session now rather than on first use (default: no-op)."""

    def close(self) -> None:
        """Release sessions and device memory (default: no-op); the backend is unusable after."""

    # --- the interface ----------------------------------------------------------------
    @property
    def components(self) -> tuple[str, ...]:
        """The components this backend can run, in ``COMPONENTS`` order."""
        specs = self._specs()
        return tuple(c for c in COMPONENTS if c in specs)

    def spec(self, component: str) -> GraphSpec:
        """The I/O spec of ``component``; ``UnsupportedOperationError`` if not held."""
        specs = self._specs()
        if component not in specs:
            have = ", ".join(self.components) or "none"
            raise UnsupportedOperationError(
                f"{self.name} backend ({self.precision}) has no {component}; it holds: {have}"
                + self._missing_hint(component)
            )
        return specs[component]

    def _missing_hint(self, component: str) -> str:
        return ""

    def run(self, component: str, x: Any) -> np.ndarray:
        """Check ``x`` against ``component``'s input spec and run it (see the class doc)."""
        spec = self.spec(component)
        arr = check_input(x, spec.inputs[0], component)
        if component == "text_encoder":
            self._check_ids(arr)
        elif component == "vqgan_encoder":
            self._check_multiple(arr, spec)
        out = self._run(component, arr)
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode_image(self, pixels: Any) -> np.ndarray:
        """Normalised pixels float32 (B, 3, S, S) -> unit-norm embeddings float32 (B, E)."""
        return self.run("image_encoder", pixels)

    def encode_text(self, ids: Any) -> np.ndarray:
        """Token ids int64 (B, 77) -> unit-norm embeddings float32 (B, E)."""
        return self.run("text_encoder", ids)

    def decode(self, latent: Any) -> np.ndarray:
        """VQGAN latent float32 (B, C, h, w) -> image float32 (B, 3, 16h, 16w) in [-1, 1]."""
        return self.run("vqgan_decoder", latent)

    def encode_latent(self, image: Any) -> np.ndarray:
        """Image float32 (B, 3, H, W) in [-1, 1] -> VQGAN latent float32 (B, C, H/16, W/16)."""
        return self.run("vqgan_encoder", image)

    def warmup(self, batch_sizes: tuple[int, ...] = (1,), latent_size: int = 16,
               iterations: int = 2) -> None:
        """Run every held component on zeros so first-call costs (allocation, autotuning,
        CUDA graph capture, lazy session creation) are paid now.

        Symbolic spatial dims take ``latent_size`` (decoder input) or ``16 * latent_size``
        (encoder input); text ids are end-of-text tokens so pooling has a valid position.
        """
        self.load()
        for component in self.components:
            inp = self.spec(component).inputs[0]
            for b in batch_sizes:
                shape = [b] + [
                    d if isinstance(d, int) else
                    (latent_size if component == "vqgan_decoder" else 16 * latent_size)
                    for d in inp.shape[1:]
                ]
                x = np.zeros(shape, dtype=inp.dtype)
                if component == "text_encoder" and self._vocab_size:
                    x[:, 0] = self._vocab_size - 1  # (B, T): one EOT-like token to pool on
                for _ in range(iterations):
                    self.run(component, x)
        log.debug("warmed up %s for batches %s", self.describe(), batch_sizes)

    def _check_ids(self, ids: np.ndarray) -> None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or (self._vocab_size is not None and hi >= self._vocab_size):
            bound = f"[0, {self._vocab_size})" if self._vocab_size else "non-negative"
            raise InputShapeError(
                f"text_encoder input ids lie in [{lo}, {hi}]; expected token ids in {bound}: "
                "tokenize with vqclip.tokenizer"
            )

    @staticmethod
    def _check_multiple(image: np.ndarray, spec: GraphSpec) -> None:
        # The latent spec says "H/16": the image sides must divide by that factor.
        dim = str(spec.outputs[0].shape[-1])
        factor = int(dim.split("/")[-1]) if "/" in dim and dim.split("/")[-1].isdigit() else 1
        if image.shape[-2] % factor or image.shape[-1] % factor:
            raise InputShapeError(
                f"vqgan_encoder input {spec.inputs[0].name!r} is {image.shape[-2]}x{image.shape[-1]}; "
                f"expected sides that are multiples of {factor}: crop or pad the image"
            )

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
