"""The TensorRT backend: serialised ``.plan`` engines from an export folder, run natively.

Written against the TensorRT 10 Python API (``deserialize_cuda_engine``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) with torch CUDA
tensors as device buffers. NOT RUN in this project's own tests: no machine here has the
``tensorrt`` package, and its parity test skips naming what is missing. A plan is tied
to the GPU model and TensorRT version that built it; rebuild with ``vqclip export
--tensorrt`` on the target machine.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vqclip.backends._io_spec import GraphSpec, cut_after_eot, specs_of
from vqclip.backends.base import Backend, BackendInfo
from vqclip.errors import BackendUnavailableError, InputShapeError, ManifestError
from vqclip.manifest import Manifest, read_manifest, verify_sha256

__all__ = ["TensorRTBackend"]

log = logging.getLogger(__name__)


def _import_tensorrt_and_cuda() -> tuple[Any, Any]:
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailableError(
            "tensorrt backend: the tensorrt Python package is not installed (pip install tensorrt, "
            "on a machine with an NVIDIA GPU)"
        ) from e
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "tensorrt backend: PyTorch sees no CUDA GPU (CPU-only build or no NVIDIA driver); "
            "TensorRT needs one"
        )
    return tensorrt, torch


class _Engine:
    """One deserialised engine with its execution context and I/O names."""

    def __init__(self, trt: Any, runtime: Any, spec: GraphSpec):
        self.engine = runtime.deserialize_cuda_engine(spec.path.read_bytes())
        if self.engine is None:
            raise ManifestError(
                f"TensorRT could not deserialise {spec.path} (built by another TensorRT version "
                "or for another GPU?); rebuild it with `vqclip export --tensorrt` on this machine"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if self.inputs != [t.name for t in spec.inputs] or self.outputs[:1] != [spec.outputs[0].name]:
            raise ManifestError(
                f"{spec.path.name} has inputs {self.inputs} / outputs {self.outputs}; its manifest says "
                f"{[t.name for t in spec.inputs]} / {[t.name for t in spec.outputs]}; re-export"
            )

    def check_profile(self, name: str, shape: tuple[int, ...], component: str) -> None:
        # Profile 0 is the one export builds; a shape outside it would fail inside enqueue.
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise InputShapeError(
                f"{component} input {name!r} has shape {list(shape)}; this TensorRT engine was "
                f"built for shapes from {list(lo)} to {list(hi)}: split the batch or rebuild "
                "the engine with a larger profile"
            )


class TensorRTBackend(Backend):
    """``.plan`` engines from an export folder on one CUDA device.

    Args:
        export_dir: a folder written by ``vqclip export --tensorrt``.
        precision: the engines' precision ("fp16" or "fp32"; "int8" only where export
            calibrated one).
        device: "cuda" or "cuda:N" (None: "cuda").
        verify: check each plan's sha256 against the manifest before loading it.

    Raises ``BackendUnavailableError`` naming what is missing (the package, a GPU, plans
    at ``precision``); ``ManifestError`` for a bad manifest, hash or plan;
    ``InputShapeError`` for input outside the engine's optimisation profile.

    Not run in this project's tests (no TensorRT here); see the module docstring.

    Example::

        be = TensorRTBackend("exports/vit-b-32", precision="fp16")
        emb = be.encode_image(pixels)  # (B, 512) float32, unit norm
    """

    name = "tensorrt"

    def __init__(self, export_dir: str | Path, *, precision: str = "fp16", device: str | None = None,
                 verify: bool = True):
        device = device or "cuda"
        if not device.startswith("cuda"):
            raise BackendUnavailableError(
                f"tensorrt backend runs on a CUDA GPU, not {device!r}; pass device='cuda' (or leave it out)"
            )
        self._trt, self._torch = _import_tensorrt_and_cuda()
        self.manifest: Manifest = read_manifest(export_dir, verify=False)  # each plan is hashed as it loads
        super().__init__(precision, vocab_size=self.manifest.vocab_size)
        # text plans in _cut_tokens run on batches cut to their longest query
        self._plans, self._cut_tokens = specs_of(self.manifest, precision, "tensorrt")
        if not self._plans:
            raise BackendUnavailableError(
                f"{export_dir} has no TensorRT plans at {precision}; it has: "
                f"{', '.join(self.manifest.precisions('tensorrt')) or 'none'} "
                "(export with --tensorrt on a GPU machine)"
            )
        self.device = self._torch.device(device)
        self.verify = verify
        self._runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
        self._engines: dict[str, _Engine] = {}
        self._stream = self._torch.cuda.Stream(device=self.device)
        self._lock = threading.Lock()  # one execution context and stream: one call at a time

    def _engine(self, component: str) -> _Engine:
        eng = self._engines.get(component)
        if eng is None:
            spec = self.spec(component)
            if self.verify and spec.sha256:
                verify_sha256(spec.path, spec.sha256)
            with self._torch.cuda.device(self.device):
                eng = _Engine(self._trt, self._runtime, spec)
            self._engines[component] = eng
            log.info("loaded TensorRT engine %s", spec.path.name)
        return eng

    def _specs(self) -> dict[str, GraphSpec]:
        return self._plans

    def load(self) -> None:
        for component in self.components:
            self._engine(component)

    def _run(self, component: str, x: np.ndarray) -> np.ndarray:
        if component in self._cut_tokens:
            x = cut_after_eot(x)  # (B, T' <= T): within the plan's token profile, less work
        with self._lock:
            return self._run_locked(component, x)

    def _run_locked(self, component: str, x: np.ndarray) -> np.ndarray:
        torch, trt = self._torch, self._trt
        eng = self._engine(component)
        name = eng.inputs[0]
        eng.check_profile(name, x.shape, component)
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            x_dev = torch.from_numpy(x).to(self.device, non_blocking=True)
            eng.context.set_input_shape(name, tuple(x_dev.shape))
            eng.context.set_tensor_address(name, x_dev.data_ptr())
            outs = {}
            for out_name in eng.outputs:  # every output needs an address, even unused ones
                shape = tuple(eng.context.get_tensor_shape(out_name))
                dtype = torch.from_numpy(np.empty(0, trt.nptype(eng.engine.get_tensor_dtype(out_name)))).dtype
                outs[out_name] = torch.empty(shape, dtype=dtype, device=self.device)
                eng.context.set_tensor_address(out_name, outs[out_name].data_ptr())
            if not eng.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to enqueue {component}; see the TensorRT log above")
            y = outs[eng.outputs[0]].float().cpu()  # synchronises on the stream
        return y.numpy()

    def describe(self) -> BackendInfo:
        return BackendInfo(
            backend=self.name,
            device=str(self.device),
            precision=self.precision,
            components=self.components,
            options={"tensorrt": self._trt.__version__, "export_dir": str(self.manifest.directory),
                     "gpu": self._torch.cuda.get_device_name(self.device)},
        )

    def close(self) -> None:
        self._engines.clear()
