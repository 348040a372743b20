"""What each backend component takes and gives, and the checks on a caller's input.

A component (``image_encoder``, ``text_encoder``, ``vqgan_decoder``, ``vqgan_encoder``)
is described by a ``GraphSpec``: its input and output ``TensorSpec``s (name, dtype, shape
with symbolic dims such as ``"batch"``), and for exported graphs the file and its sha256.
The ONNX Runtime and TensorRT backends build them from an export folder's manifest
(``vqclip.manifest``, the format's one definition: ``GraphSpec.from_record``); the torch
backend derives them from the module's config, so every backend refuses the same bad
input with the same message.

Text ids reach every backend padded to the context length (``int64 (B, 77)``); a backend
whose text encoder takes fewer positions (the torch module; exported text graphs with a
dynamic ``"tokens"`` axis) cuts each batch after its last end-of-text token first
(``cut_after_eot``): the text transformer is causal, so fp32/fp16 embeddings stay the same up to
rounding, and int8 ones within their parity bound (activations are quantised per tensor).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vqclip.errors import InputShapeError
from vqclip.manifest import GraphRecord, TensorSpec

__all__ = ["GraphSpec", "TOKENS", "check_input", "cut_after_eot", "with_context_length"]

TOKENS = "tokens"  # the dynamic token axis of exported text graphs (vqclip >= 0.2.1)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphSpec:
    """One component at one precision as a backend runs it: its I/O, and for exported
    graphs the resolved file path and recorded hash (checked on load)."""

    component: str  # one of COMPONENTS
    precision: str  # "fp32", "fp16", "bf16", "int8"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    path: Path | None = None  # the graph or engine file; None for in-process modules
    sha256: str | None = None  # the file's recorded hash, checked on load
    parity: dict[str, Any] = field(default_factory=dict)  # figures measured at export
    selftest: dict[str, Any] = field(default_factory=dict)  # the manifest's self-test record, if any

    @classmethod
    def from_record(cls, record: GraphRecord, directory: Path) -> "GraphSpec":
        """The spec of a manifest's graph record, its file resolved inside ``directory``."""
        return cls(component=record.component, precision=record.precision, inputs=tuple(record.inputs),
                   outputs=tuple(record.outputs), path=directory / record.file, sha256=record.sha256,
                   parity=dict(record.parity), selftest=dict(record.selftest))


def with_context_length(spec: GraphSpec, context_length: int | None) -> tuple[GraphSpec, bool]:
    """The spec callers see for a graph, and whether the backend cuts text ids before running it.

    A text graph with a dynamic ``TOKENS`` axis takes ids padded to ``context_length``, as
    every backend's text encoder does, and is run on each batch cut to its longest query
    (``cut_after_eot``): returns ``(spec with the context length, True)``. Any other graph
    (images, VQGAN, text graphs exported with a fixed axis) is returned as it is, with False.

    Example: ``with_context_length(text_spec, 77)`` -> ``(input_ids: int64[batch,77] ..., True)``.
    """
    ids = spec.inputs[0] if spec.inputs else None
    if spec.component != "text_encoder" or ids is None or TOKENS not in ids.shape or not context_length:
        return spec, False
    shape = tuple(int(context_length) if d == TOKENS else d for d in ids.shape)
    return replace(spec, inputs=(replace(ids, shape=shape), *spec.inputs[1:])), True


def specs_of(manifest: Any, precision: str, fmt: str) -> tuple[dict[str, GraphSpec], set[str]]:
    """The graphs of ``manifest`` at ``precision`` in ``fmt`` ("onnx", "tensorrt") as callers
    see them, by component, and the components whose text ids are cut per batch."""
    config = manifest.config if isinstance(manifest.config, dict) else {}
    specs: dict[str, GraphSpec] = {}
    cut_tokens: set[str] = set()
    for g in manifest.graphs:
        if g.precision == precision and g.format == fmt:
            spec, cut = with_context_length(GraphSpec.from_record(g, manifest.directory), config.get("context_length"))
            specs[g.component] = spec
            if cut:
                cut_tokens.add(g.component)
    return specs, cut_tokens


def cut_after_eot(ids: np.ndarray, multiple: int = 1) -> np.ndarray:
    """int64 (B, T) token ids -> (B, T'): the padding after every row's end-of-text cut.

    ``T'`` is the largest end-of-text position (the first maximal id of a row, where the
    text encoder pools) plus one, rounded up to a multiple of ``multiple`` and at most
    ``T``; a batch is thus padded to its longest query. No position after a row's end-of-text
    reaches its pooled output, so only rounding (and int8's per-tensor activation scale) differs. Returns ``ids``
    itself when nothing can be cut.

    Example: ``cut_after_eot(tokenize(["a red circle"])).shape`` -> ``(1, 5)``.
    """
    T = ids.shape[1]
    need = int(ids.argmax(axis=1).max()) + 1  # (B,) first maximum = the pooled position
    keep = min(T, -(-need // multiple) * multiple)
    return ids if keep == T else np.ascontiguousarray(ids[:, :keep])  # (B, keep)


def check_input(x: Any, spec: TensorSpec, component: str) -> np.ndarray:
    """Return ``x`` as a C-contiguous numpy array after checking it against ``spec``.

    ``x`` is a numpy array or a CPU torch tensor. The dtype must match exactly (no silent
    casts: an int32 id array or a float64 image is refused, so a caller never pays for a
    hidden copy or loses precision); fixed dims must match; a symbolic dim takes any size
    >= 1. An empty batch is refused: callers skip the call instead.

    Raises ``InputShapeError`` saying what was given and what ``spec`` expects.

    Example: ``check_input(np.zeros((2, 77), np.int64), TensorSpec("input_ids", "int64",
    ("batch", 77)), "text_encoder")``.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor: same memory, no copy on CPU
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise InputShapeError(
            f"{component} input {spec.name!r} is a {type(x).__name__}; expected a numpy array {spec}"
        )
    if x.dtype != np.dtype(spec.dtype):
        raise InputShapeError(
            f"{component} input {spec.name!r} has dtype {x.dtype}; expected {spec}: "
            f"convert with .astype(np.{spec.dtype})"
        )
    if x.ndim != len(spec.shape) or any(
        isinstance(want, int) and got != want for got, want in zip(x.shape, spec.shape)
    ):
        raise InputShapeError(
            f"{component} input {spec.name!r} has shape {list(x.shape)}; expected {spec}"
        )
    if 0 in x.shape:
        raise InputShapeError(
            f"{component} input {spec.name!r} has shape {list(x.shape)} (no items); "
            f"expected at least one item of {spec}"
        )
    return np.ascontiguousarray(x)
