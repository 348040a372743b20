"""Backends: one session interface over torch, ONNX Runtime and TensorRT, chosen by name."""
from engine.backends._io_spec import GraphSpec
from engine.backends.base import Backend, BackendInfo
from engine.backends.factory import BACKENDS, backend_status, open_backend
from engine.manifest import COMPONENTS, Manifest, TensorSpec, read_manifest

__all__ = [
    "BACKENDS",
    "COMPONENTS",
    "Backend",
    "BackendInfo",
    "GraphSpec",
    "Manifest",
    "TensorSpec",
    "backend_status",
    "open_backend",
    "read_manifest",
]
