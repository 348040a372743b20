"""Backends: one session interface over torch, ONNX Runtime and TensorRT, chosen by name."""
from vqclip.backends._io_spec import GraphSpec
from vqclip.backends.base import Backend, BackendInfo
from vqclip.backends.factory import BACKENDS, backend_status, open_backend, resolve_backend_name
from vqclip.manifest import COMPONENTS, Manifest, TensorSpec, read_manifest

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
    "resolve_backend_name",
]
