"""Choosing a backend by name: ``open_backend("onnxruntime", "exports/vit-b-32")``.

The backend modules are imported only when chosen, so ``import vqclip.backends`` never
pulls in onnxruntime, TensorRT or CUDA.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from vqclip.backends.base import Backend
from vqclip.errors import BackendUnavailableError, UnknownBackendError

__all__ = ["BACKENDS", "BACKEND_PRECISIONS", "open_backend", "backend_status", "check_device", "resolve_backend_name"]

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# What each backend runs: torch its dtypes (torch_backend.TORCH_PRECISIONS), the exported ones
# the graphs `vqclip export` writes (TensorRT int8 needs calibration data, so no int8 plans).
BACKEND_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32", "fp16", "int8"),
                      "tensorrt": ("fp32", "fp16")}
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}
_CLASSES = {  # name -> (module, class)
    "torch": ("vqclip.backends.torch_backend", "TorchBackend"),
    "onnxruntime": ("vqclip.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "tensorrt": ("vqclip.backends.tensorrt_backend", "TensorRTBackend"),
}


def resolve_backend_name(name: str) -> str:
    """The canonical backend name for ``name`` in any case or alias ("Torch", "ORT" -> ...);
    ``UnknownBackendError`` listing the names otherwise."""
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in _CLASSES:
        raise UnknownBackendError(
            f"unknown backend {name!r}; available: {', '.join(BACKENDS)} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in _ALIASES.items())})"
        )
    return key


def open_backend(name: str, source: str | Path | None = None, **options: Any) -> Backend:
    """Open the backend called ``name`` ("torch", "onnxruntime" or "tensorrt"; "ort", "trt"; any case).

    ``source`` is the export folder for "onnxruntime" and "tensorrt"; the torch backend
    takes its modules as ``clip=`` / ``vqgan=`` options instead. The other options go to
    the backend's constructor (``precision``, ``device``, thread and session settings:
    see ``TorchBackend``, ``OnnxRuntimeBackend``, ``TensorRTBackend``).

    Raises ``UnknownBackendError`` (listing the names) for an unknown name and
    ``BackendUnavailableError`` (naming what is missing) when the backend cannot run here.

    Example: ``be = open_backend("onnxruntime", "exports/vit-b-32", precision="int8")``.
    """
    key = resolve_backend_name(name)
    module_name, cls_name = _CLASSES[key]
    cls = getattr(importlib.import_module(module_name), cls_name)  # imported only when chosen
    check_device(key, options.get("device"))
    if key == "torch":
        if source is not None:
            raise BackendUnavailableError(
                "the torch backend runs vqclip's modules, not an export folder: "
                "open_backend('torch', clip=model, vqgan=vqgan)"
            )
        return cls(**options)
    if source is None:
        raise BackendUnavailableError(f"the {key} backend needs an export folder: open_backend({key!r}, 'DIR')")
    return cls(source, **options)


def check_device(name: str, device: str | None) -> None:
    """Refuse a ``device`` the backend ``name`` cannot run on, worded for Python and for the
    CLI (``BackendUnavailableError``); None (the backend's default) always passes. The CLI
    calls it before loading a model; the backends check again when built directly.

    Example: ``check_device("tensorrt", "cpu")`` raises; ``check_device("torch", "cpu")`` passes.
    """
    key = resolve_backend_name(name)
    if device is None:
        return  # each backend's own default: cpu, or cuda for tensorrt
    device = str(device)
    if key == "tensorrt" and not device.startswith("cuda"):
        msg = f"tensorrt backend runs on a CUDA GPU, not {device!r}"
        raise BackendUnavailableError(f"{msg}; pass device='cuda' (or leave it out)",
                                      cli=f"{msg}; pass --device cuda (or leave it out)")
    if key == "torch" and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            msg = (f"torch backend: device {device!r} needs CUDA, but this PyTorch ({torch.__version__}) sees "
                   "no CUDA GPU")
            raise BackendUnavailableError(f"{msg}; use device='cpu'", cli=f"{msg}; use --device cpu")


def backend_status() -> dict[str, str | None]:
    """For each backend, None when it can run on this machine, else why not (one line).

    Checks packages and devices only, not export folders. Cheap: imports, no sessions.
    """
    status: dict[str, str | None] = {"torch": None}
    try:
        import onnxruntime  # noqa: F401
        status["onnxruntime"] = None
    except ImportError:
        status["onnxruntime"] = "the onnxruntime package is not installed"
    try:
        from vqclip.backends.tensorrt_backend import _import_tensorrt_and_cuda

        _import_tensorrt_and_cuda()
        status["tensorrt"] = None
    except BackendUnavailableError as e:
        status["tensorrt"] = str(e)
    return status
