"""What each backend component takes and gives, and the checks on a caller's input.

A component (``image_encoder``, ``text_encoder``, ``vqgan_decoder``, ``vqgan_encoder``)
is described by a ``GraphSpec``: its input and output ``TensorSpec``s (name, dtype, shape
with symbolic dims such as ``"batch"``), and for exported graphs the file and its sha256.
The ONNX Runtime and TensorRT backends read them from an export folder's
``manifest.json``; the torch backend derives them from the module's config, so every
backend refuses the same bad input with the same message.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputShapeError, ManifestError

__all__ = [
    "COMPONENTS",
    "TensorSpec",
    "GraphSpec",
    "check_input",
    "Manifest",
    "read_manifest",
    "verify_sha256",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # the newest manifest layout this reader understands

# The exported components, in the order ``describe()`` lists them.
COMPONENTS = ("image_encoder", "text_encoder", "vqgan_decoder", "vqgan_encoder")

_DTYPE_ALIASES = {  # ONNX / manifest spellings -> numpy dtype names
    "float": "float32", "float32": "float32", "tensor(float)": "float32",
    "float16": "float16", "tensor(float16)": "float16",
    "int64": "int64", "tensor(int64)": "int64",
    "int32": "int32", "tensor(int32)": "int32",
}


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: numpy dtype name and shape, ints fixed, strings symbolic.

    Example: ``TensorSpec("pixels", "float32", ("batch", 3, 224, 224))``.
    """

    name: str  # the graph's tensor name
    dtype: str  # numpy dtype name ("float32", "int64")
    shape: tuple[int | str, ...]  # fixed sizes as int, dynamic ones as their symbol

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TensorSpec":
        """Parse a manifest entry ``{"name", "dtype", "shape"}``; unknown dims become symbols."""
        dtype = _DTYPE_ALIASES.get(str(d["dtype"]).lower())
        if dtype is None:
            raise ManifestError(
                f"tensor {d.get('name')!r} has dtype {d['dtype']!r}; expected one of "
                f"{sorted(set(_DTYPE_ALIASES.values()))}: re-export the model"
            )
        shape = tuple(
            int(s) if isinstance(s, int) or (isinstance(s, str) and s.isdigit()) else str(s or "?")
            for s in d["shape"]
        )
        return cls(name=str(d["name"]), dtype=dtype, shape=shape)

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{','.join(str(s) for s in self.shape)}]"


@dataclass(frozen=True)
class GraphSpec:
    """One component at one precision: its I/O, and for exported graphs the file."""

    component: str  # one of COMPONENTS
    precision: str  # "fp32", "fp16", "bf16", "int8"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    path: Path | None = None  # the graph or engine file; None for in-process modules
    sha256: str | None = None  # the file's recorded hash, checked on load
    parity: dict[str, Any] = field(default_factory=dict)  # figures measured at export


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


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ``ManifestError`` when the file at ``path`` does not hash to ``expected``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    if h.hexdigest() != expected.lower():
        raise ManifestError(
            f"{path} has sha256 {h.hexdigest()[:12]}..., but its manifest records "
            f"{expected[:12]}...: the file was changed or truncated; re-export the model"
        )


def _component_and_precision(file_name: str) -> tuple[str, str]:
    # "image_encoder.onnx" -> fp32; "image_encoder.fp16.onnx" -> fp16 (the export contract)
    parts = file_name.split(".")
    return parts[0], parts[1] if len(parts) == 3 else "fp32"


@dataclass(frozen=True)
class Manifest:
    """An export folder's manifest: its graphs and the rest of the record, as parsed."""

    folder: Path
    graphs: dict[tuple[str, str, str], GraphSpec]  # (component, precision, "onnx"|"plan") -> spec
    data: dict[str, Any]  # the whole manifest.json (opset, source hash, versions, config)

    @property
    def vocab_size(self) -> int | None:
        """The text encoder's vocabulary size when the manifest records the model config."""
        for key in ("config", "clip_config"):
            cfg = self.data.get(key)
            if isinstance(cfg, dict) and isinstance(cfg.get("vocab_size"), int):
                return cfg["vocab_size"]
        return None

    def precisions(self, kind: str = "onnx") -> list[str]:
        """The precisions with at least one graph of ``kind``, sorted."""
        return sorted({p for (_, p, k) in self.graphs if k == kind})


def read_manifest(folder: str | Path) -> Manifest:
    """Read an export folder's ``manifest.json``; graphs keyed ``(component, precision, kind)``.

    ``kind`` is the file's suffix: ``"onnx"`` or ``"plan"``. The manifest is the one
    ``export.manifest.write_manifest`` writes (format version 1): ``graphs`` is a list of
    entries with ``file``, ``sha256``, ``inputs``, ``outputs`` and usually ``component``
    and ``precision`` (else taken from the file name). Hashes are not checked here (the
    backends check each graph as they load it, so opening a folder stays cheap).

    Raises ``ManifestError`` when the folder, the manifest or a listed graph is missing
    or the manifest cannot be parsed.
    """
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not folder.is_dir():
        raise ManifestError(f"export folder {folder} does not exist; run `vqclip export` first")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ManifestError(
            f"{folder} has no manifest.json; expected an export folder written by `vqclip export`"
        ) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{mpath} cannot be read as JSON ({e}); re-export the model") from e

    graphs = manifest.get("graphs") if isinstance(manifest, dict) else None
    if not isinstance(graphs, list):
        raise ManifestError(f"{mpath} has no 'graphs' list; re-export the model")
    version = manifest.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ManifestError(
            f"{mpath} has format version {version!r}; this vqclip reads up to {FORMAT_VERSION}: "
            "upgrade vqclip or re-export with this one"
        )

    specs: dict[tuple[str, str, str], GraphSpec] = {}
    for entry in graphs:
        try:
            file_name = str(entry["file"])
            component, precision = _component_and_precision(Path(file_name).name)
            spec = GraphSpec(
                component=str(entry.get("component", component)),
                precision=str(entry.get("precision", precision)),
                inputs=tuple(TensorSpec.from_json(t) for t in entry["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in entry["outputs"]),
                path=folder / file_name,
                sha256=entry.get("sha256"),
                parity=dict(entry.get("parity") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(
                f"{mpath}: graph entry {entry!r:.120} lacks a field ({e}); re-export the model"
            ) from e
        if not spec.path.is_file():
            raise ManifestError(f"{mpath} lists {file_name}, which is missing from {folder}")
        kind = spec.path.suffix.lstrip(".")
        specs[(spec.component, spec.precision, kind)] = spec
    log.debug("manifest %s: %d graphs", mpath, len(specs))
    return Manifest(folder=folder, graphs=specs, data=manifest)
