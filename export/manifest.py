"""``manifest.json``: what an export folder holds, where it came from, how well it matches.

The manifest is the contract between the export step and whoever loads the graphs (the
backends, Triton, a user's own code): which files exist, their sha256, each graph's
inputs/outputs (name, dtype, shape with symbolic dims), the parity figures measured at
export, the source checkpoint's sha256, the opset and the package versions.
``read_manifest`` verifies every listed file's hash by default, so a graph edited or
swapped after export is refused rather than served.

Example::

    m = read_manifest("exports/vit-b-32")
    rec = m.graph("image_encoder", "int8")   # GraphRecord; rec.file == "image_encoder.int8.onnx"
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import ManifestError
from export.graphs import TensorSpec

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "GraphRecord", "Manifest", "read_manifest", "write_manifest", "sha256_file",
           "graph_filename"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def graph_filename(component: str, precision: str, fmt: str = "onnx") -> str:
    """``image_encoder.onnx`` (fp32), ``image_encoder.fp16.onnx``, ``image_encoder.fp16.plan``."""
    if fmt == "onnx":
        return f"{component}.onnx" if precision == "fp32" else f"{component}.{precision}.onnx"
    return f"{component}.{precision}.plan"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (graphs can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class GraphRecord:
    """One file of the export: an ONNX graph or a TensorRT plan."""

    component: str  # image_encoder, text_encoder, vqgan_decoder, vqgan_encoder
    precision: str  # fp32, fp16, int8
    format: str  # "onnx" or "tensorrt"
    file: str  # name inside the export folder
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity: dict = field(default_factory=dict)  # ParityReport.to_dict(); {} for plans (not run here)
    notes: dict = field(default_factory=dict)  # e.g. fusions applied, TensorRT profiles

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = [s.to_dict() for s in self.inputs]
        d["outputs"] = [s.to_dict() for s in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GraphRecord":
        d = dict(d)
        d["inputs"] = [TensorSpec.from_dict(s) for s in d["inputs"]]
        d["outputs"] = [TensorSpec.from_dict(s) for s in d["outputs"]]
        return cls(**d)


@dataclass
class Manifest:
    """The whole export folder's record; ``graphs`` in the order they were written."""

    model: str  # zoo name, or the checkpoint file's name
    family: str  # "clip" or "vqgan"
    source: dict  # {"path": ..., "sha256": ...}: the checkpoint (or state dict) exported
    opset: int
    created: str  # ISO 8601 UTC
    versions: dict  # package -> version: torch, onnx, onnxruntime, vqclip
    config: dict  # the architecture config, as a dict
    graphs: list[GraphRecord] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    directory: Path | None = field(default=None, compare=False)  # where it was read from; not saved

    def graph(self, component: str, precision: str = "fp32", fmt: str = "onnx") -> GraphRecord:
        """The record of one graph; ``ManifestError`` naming what the folder has otherwise."""
        for g in self.graphs:
            if (g.component, g.precision, g.format) == (component, precision, fmt):
                return g
        have = ", ".join(f"{g.component}/{g.precision}/{g.format}" for g in self.graphs)
        raise ManifestError(f"no {fmt} graph {component!r} at {precision} in this export; it has: {have}; "
                            f"re-export with that precision")

    def path(self, record: GraphRecord) -> Path:
        """Absolute path of a record's file (needs ``directory``, set by ``read_manifest``)."""
        if self.directory is None:
            raise ManifestError("this manifest was not read from a folder; use read_manifest(dir)")
        return self.directory / record.file

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("graphs", "directory")}
        d["graphs"] = [g.to_dict() for g in self.graphs]
        return d


def write_manifest(manifest: Manifest, directory: Path) -> Path:
    """Write ``manifest.json`` into ``directory`` (temp file + rename, so never half-written)."""
    path = directory / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Read an export folder's manifest; with ``verify``, check every listed file's sha256.

    Raises ``ManifestError`` when the folder or manifest is missing, the JSON is not a
    vqclip manifest, its format version is newer than this vqclip reads, a listed file is
    missing, or a file's hash differs from the recorded one (the message says to
    re-export). ``verify=False`` skips the hashing (seconds for large graphs) but still
    checks that the files exist.

    Example: ``read_manifest("exports/vit-b-32").graph("text_encoder").file``
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{directory}: no {MANIFEST} here; is it an export folder? "
                            "create one with `vqclip export MODEL --out DIR`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable ({e}); re-export the model") from e
    if not isinstance(data, dict) or "format_version" not in data:
        raise ManifestError(f"{path}: not a vqclip export manifest (no format_version); re-export the model")
    if data["format_version"] > FORMAT_VERSION:
        raise ManifestError(f"{path}: format version {data['format_version']}, this vqclip reads up to "
                            f"{FORMAT_VERSION}; upgrade vqclip or re-export with this one")
    try:
        graphs = [GraphRecord.from_dict(g) for g in data.pop("graphs")]
        manifest = Manifest(**data, graphs=graphs, directory=directory)
    except (KeyError, TypeError) as e:
        raise ManifestError(f"{path}: malformed manifest ({e}); re-export the model") from e
    for g in manifest.graphs:
        file = directory / g.file
        if not file.is_file():
            raise ManifestError(f"{directory}: {g.file} is listed in the manifest but missing; re-export the model")
        if verify and sha256_file(file) != g.sha256:
            raise ManifestError(f"{file}: sha256 differs from the manifest's (the file changed after "
                                "export); re-export the model with `vqclip export ... --force`")
    return manifest
