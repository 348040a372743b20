"""``manifest.json``, the one definition of an export folder's format: write, read, verify.

An export folder holds graphs and a ``manifest.json`` recording, for each graph, its file,
sha256, precision, format and inputs/outputs (name, dtype, shape with symbolic dims), plus
the parity figures measured at export, the source checkpoint's sha256, the opset and the
package versions. ``export`` writes it (``write_manifest``); the backends, Triton
packaging and a user's own code read it (``read_manifest``). It lives in ``engine`` and
not ``export`` because the engine reads it and must never import ``export``
(DESIGN.md's dependency rule); it lives outside ``vqclip.backends`` because it is a file
format, not a session, and Triton packaging and the encoder use it too.

Graph files are named ``{component}.onnx`` (fp32), ``{component}.{precision}.onnx`` and
``{component}.{precision}.plan`` (TensorRT); ``graph_filename`` is that rule.

``read_manifest`` hashes every listed file by default, so a graph edited or swapped after
export is refused rather than served; ``verify=False`` skips the hashing (seconds for
large graphs: the backends hash each graph as they load it) but still checks the files
exist.

Example::

    m = read_manifest("exports/vit-b-32")
    rec = m.graph("image_encoder", "int8")   # GraphRecord; rec.file == "image_encoder.int8.onnx"
    m.path(rec)                              # exports/vit-b-32/image_encoder.int8.onnx
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vqclip._files import atomic_write_bytes
from vqclip._hashing import sha256_file
from vqclip.errors import ManifestError

__all__ = [
    "COMPONENTS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "GraphRecord",
    "Manifest",
    "TensorSpec",
    "graph_filename",
    "min_row_cosine",
    "selftest_filename",
    "read_manifest",
    "verify_sha256",
    "write_manifest",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # the layout written here (2: + runtime); a reader refuses anything newer
MANIFEST_NAME = "manifest.json"

# The exportable components, in the order listings show them.
COMPONENTS = ("image_encoder", "text_encoder", "vqgan_decoder", "vqgan_encoder")

_DTYPE_ALIASES = {  # ONNX / hand-written spellings -> numpy dtype names
    "float": "float32", "float32": "float32", "tensor(float)": "float32",
    "float16": "float16", "tensor(float16)": "float16",
    "int64": "int64", "tensor(int64)": "int64",
    "int32": "int32", "tensor(int32)": "int32",
}


def graph_filename(component: str, precision: str, fmt: str = "onnx") -> str:
    """A graph's file name in an export folder.

    ``("image_encoder", "fp32")`` -> ``image_encoder.onnx``; ``("image_encoder", "fp16")``
    -> ``image_encoder.fp16.onnx``; ``("image_encoder", "fp16", "tensorrt")`` ->
    ``image_encoder.fp16.plan`` (plans always name their precision).
    """
    if fmt == "onnx":
        return f"{component}.onnx" if precision == "fp32" else f"{component}.{precision}.onnx"
    return f"{component}.{precision}.plan"


def min_row_cosine(a: Any, b: Any) -> float:
    """The smallest cosine between matching rows of ``a`` and ``b`` (each flattened per row, in
    float64): what a record's ``min_cosine`` bounds, at export and in a backend's self-test."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return float(cos.min())


def selftest_filename(component: str, precision: str) -> str:
    """The self-test file of a graph: a few fixed inputs and the PyTorch module's outputs
    for them (``.npz``), kept beside reduced-precision graphs whose kernels differ by CPU.

    ``("text_encoder", "int8")`` -> ``text_encoder.int8.selftest.npz``.
    """
    return f"{component}.{precision}.selftest.npz"


def _parse_filename(file_name: str) -> tuple[str, str, str]:
    # The inverse of graph_filename, for hand-written entries that omit the fields:
    # "image_encoder.onnx" -> (image_encoder, fp32, onnx); "x.fp16.plan" -> (x, fp16, tensorrt).
    parts = Path(file_name).name.split(".")
    fmt = "tensorrt" if parts[-1] == "plan" else parts[-1]
    return parts[0], parts[1] if len(parts) == 3 else "fp32", fmt


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise ``ManifestError`` when the file at ``path`` does not hash to ``expected`` (hex)."""
    got = sha256_file(path)
    if got != expected.lower():
        raise ManifestError(
            f"{path}: sha256 differs from the manifest's ({got[:12]}... vs recorded {expected[:12]}...): "
            "the file was changed or truncated after export; re-export the model with "
            "`vqclip export ... --force`"
        )


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name, shape with symbolic dims as str.

    Example: ``TensorSpec("pixels", "float32", ("batch", 3, 224, 224))``; a VQGAN decoder's
    output is ``TensorSpec("image", "float32", ("batch", 3, "16*h", "16*w"))``.
    """

    name: str  # the graph's tensor name
    dtype: str  # numpy dtype name: "float32", "float16", "int64", "int32"
    shape: tuple[int | str, ...]  # ints are fixed sizes, strings name dynamic dims ("batch", "h")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        """Parse ``{"name", "dtype", "shape"}``; ONNX dtype spellings are accepted, digit
        strings become sizes and empty dims become the symbol ``"?"``.

        Raises ``ManifestError`` for a dtype the engine cannot feed; ``KeyError`` for a
        missing field (``read_manifest`` reports it with the entry).
        """
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


@dataclass
class GraphRecord:
    """One file of the export: an ONNX graph or a TensorRT plan."""

    component: str  # one of COMPONENTS
    precision: str  # fp32, fp16, int8
    format: str  # "onnx" or "tensorrt"
    file: str  # name inside the export folder (graph_filename)
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parity: dict = field(default_factory=dict)  # ParityReport.to_dict(); {} for plans (not run at export)
    notes: dict = field(default_factory=dict)  # e.g. fusions applied, TensorRT profiles
    # {"file", "sha256", "min_cosine", "n"}: fixed inputs and reference outputs a backend
    # checks the graph against on the CPU it runs on (int8 graphs); {} when there is none.
    selftest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inputs, self.outputs = tuple(self.inputs), tuple(self.outputs)  # callers may pass lists

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [s.to_dict() for s in self.inputs]
        d["outputs"] = [s.to_dict() for s in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GraphRecord":
        """Parse one ``graphs`` entry. ``component``, ``precision`` and ``format`` may be
        left out of a hand-written entry: they are then read off the file name."""
        file_name = str(d["file"])
        component, precision, fmt = _parse_filename(file_name)
        return cls(
            component=str(d.get("component", component)),
            precision=str(d.get("precision", precision)),
            format=str(d.get("format", fmt)),
            file=file_name,
            sha256=str(d["sha256"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            parity=dict(d.get("parity") or {}),
            notes=dict(d.get("notes") or {}),
            selftest=dict(d.get("selftest") or {}),
        )


@dataclass
class Manifest:
    """The whole export folder's record; ``graphs`` in the order they were written."""

    model: str  # zoo name, or the checkpoint file's name
    family: str  # "clip" or "vqgan"
    source: dict  # {"path", "sha256", "kind"}: the checkpoint (or state dict) exported
    opset: int
    created: str  # ISO 8601 UTC
    versions: dict  # package -> version: torch, onnx, onnxruntime, vqclip
    config: dict  # the architecture config, as a dict (CLIP's holds vocab_size)
    graphs: list[GraphRecord] = field(default_factory=list)
    # Where parity was measured: {"machine", "cpu_class", "int8_gemm", "flags"} (vqclip._cpus);
    # int8 kernels differ between CPU classes, so a reader compares it with its own.
    measured_on: dict = field(default_factory=dict)
    # What serving the graphs needs besides them, so a runtime can do without the model:
    # CLIP {"logit_scale": exp(learned temperature), and the mean / std / interpolation its
    # checkpoint stated, if any}. Empty in exports made before it was recorded.
    runtime: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    directory: Path | None = field(default=None, compare=False)  # where it was read from; not saved

    @property
    def vocab_size(self) -> int | None:
        """The text encoder's vocabulary size when the config records it, else None."""
        v = self.config.get("vocab_size") if isinstance(self.config, dict) else None
        return v if isinstance(v, int) else None

    def precisions(self, fmt: str = "onnx") -> list[str]:
        """The precisions with at least one graph of format ``fmt``, sorted."""
        return sorted({g.precision for g in self.graphs if g.format == fmt})

    def graph(self, component: str, precision: str = "fp32", fmt: str = "onnx") -> GraphRecord:
        """The record of one graph; ``ManifestError`` naming what the folder has otherwise."""
        for g in self.graphs:
            if (g.component, g.precision, g.format) == (component, precision, fmt):
                return g
        have = ", ".join(f"{g.component}/{g.precision}/{g.format}" for g in self.graphs)
        raise ManifestError(f"no {fmt} graph {component!r} at {precision} in this export; it has: {have}; "
                            f"re-export with that precision")

    def path(self, record: GraphRecord) -> Path:
        """Path of a record's file (needs ``directory``, set by ``read_manifest``)."""
        if self.directory is None:
            raise ManifestError("this manifest was not read from a folder; use read_manifest(dir)")
        return self.directory / record.file

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("graphs", "directory")}
        d["graphs"] = [g.to_dict() for g in self.graphs]
        return d


def write_manifest(manifest: Manifest, directory: str | Path) -> Path:
    """Write ``manifest.json`` into ``directory`` atomically (temp file + rename); return its path.

    A crash mid-write leaves the previous manifest (or none), never half a file.
    """
    path = Path(directory) / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(manifest.to_dict(), indent=2) + "\n").encode("utf-8"))
    return path


def read_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Read an export folder's ``manifest.json``; with ``verify``, check every listed file's sha256.

    Raises ``ManifestError`` (its message says to re-export, or to upgrade vqclip) when the
    folder or its manifest is missing, the file is not JSON, it is not a vqclip manifest
    (no ``format_version``) or is newer than this vqclip reads, it has no ``graphs`` list, a
    graph entry lacks a field or names a dtype the engine cannot feed, a listed file is
    missing, or (``verify``) a file's hash differs from its record.

    Example: ``read_manifest("exports/vit-b-32").graph("text_encoder").file`` -> ``"text_encoder.onnx"``
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ManifestError(f"export folder {directory} does not exist, so there is no {MANIFEST_NAME} to read; "
                            "create one with `vqclip export MODEL --out DIR`")
    if not path.is_file():
        raise ManifestError(f"{directory}: no {MANIFEST_NAME} here; is it an export folder? "
                            "create one with `vqclip export MODEL --out DIR`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable, it cannot be read as JSON ({e}); re-export the model") from e
    if not isinstance(data, dict) or "format_version" not in data:
        raise ManifestError(f"{path}: not a vqclip export manifest (no format_version); re-export the model")
    version = data["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ManifestError(f"{path}: format version {version!r}; this vqclip reads up to {FORMAT_VERSION}: "
                            "upgrade vqclip or re-export with this one")
    entries = data.pop("graphs", None)
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: no 'graphs' list; re-export the model")
    graphs = []
    for entry in entries:
        try:
            graphs.append(GraphRecord.from_dict(entry))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ManifestError(f"{path}: malformed manifest, graph entry {entry!r:.120} lacks a field ({e}); "
                                "re-export the model") from e
    try:
        manifest = Manifest(**data, graphs=graphs, directory=directory)
    except TypeError as e:  # a missing or unknown top-level field
        raise ManifestError(f"{path}: malformed manifest ({e}); re-export the model") from e
    for g in manifest.graphs:
        for name, digest in ((g.file, g.sha256), (g.selftest.get("file"), g.selftest.get("sha256"))):
            if name is None:
                continue
            file = directory / name
            if not file.is_file():
                raise ManifestError(f"{directory}: {name} is listed in the manifest but missing; re-export the model")
            if verify:
                verify_sha256(file, str(digest))
    log.debug("manifest %s: %d graphs", path, len(graphs))
    return manifest
