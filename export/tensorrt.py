"""TensorRT engines (``.plan``) built from the exported fp32 ONNX graphs.

NOT RUN in this project's tests: neither ``tensorrt`` nor a GPU with it is available to
them, so this module is written against TensorRT 10's documented Python API
(``Builder``, ``OnnxParser``, ``IBuilderConfig``, optimisation profiles, timing cache)
and kept small. What the tests do cover is the gate: without the package or a CUDA GPU,
``require_tensorrt`` raises ``BackendUnavailableError`` naming what is missing, before
any work is done.

Each engine gets one optimisation profile with min/opt/max for every dynamic input
(batch; for the text encoder also the token axis, up to the context length; for the VQGAN
graphs also the latent / image size). fp16 engines keep
normalisation, softmax and reductions in fp32 (``OBEY_PRECISION_CONSTRAINTS``): fp16
LayerNorm and softmax overflow costs ViT accuracy in TensorRT (NVIDIA/TensorRT #2564,
#2709). int8 needs calibration batches and is refused without them. The timing cache is
read from and written back to ``timing_cache`` so rebuilds take seconds.

Example::

    require_tensorrt()
    build_engine(Path("d/image_encoder.onnx"), Path("d/image_encoder.fp16.plan"),
                 profile_for(component), precision="fp16", timing_cache=Path("d/trt.cache"))
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from vqclip.errors import BackendUnavailableError, InputShapeError
from vqclip.export.graphs import Component

log = logging.getLogger(__name__)

__all__ = ["require_tensorrt", "profile_for", "build_engine", "Profile"]

# name -> (min, opt, max) full input shapes
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

BATCH = (1, 8, 32)  # min/opt/max batch: latency at 1, throughput at 8..32
LATENT = (1, 16, 32)  # VQGAN latent side; f16: 16 px .. 256 px (opt) .. 512 px
TOKENS = (1, 16)  # min/opt token axis of a text batch (padded to its longest query); max: the context


def require_tensorrt() -> None:
    """Raise ``BackendUnavailableError`` in one line when TensorRT cannot build here."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError("--tensorrt needs the `tensorrt` package, which is not installed "
                                      "(pip install 'vqclip[trt]' on a machine with an NVIDIA GPU)") from e
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("--tensorrt needs an NVIDIA GPU; torch sees no CUDA device here")


def profile_for(component: Component, batch: tuple[int, int, int] = BATCH,
                latent: tuple[int, int, int] = LATENT) -> Profile:
    """min/opt/max shapes of each input: batch for all, plus the token axis for the text
    encoder (``TOKENS``, up to ``component.tokens``) and spatial sizes for the VQGAN.

    ``latent`` is the latent side (h, w); image sides are ``factor`` times it.
    """
    tokens = (min(TOKENS[0], component.tokens), min(TOKENS[1], component.tokens), component.tokens)
    out: Profile = {}
    for spec in component.inputs:
        shapes = []
        for i in range(3):
            dims = []
            for d in spec.shape:
                if d == "batch":
                    dims.append(batch[i])
                elif d in ("h", "w"):
                    dims.append(latent[i])
                elif d in ("H", "W"):
                    dims.append(component.factor * latent[i])
                elif d == "tokens":
                    dims.append(tokens[i])
                else:
                    dims.append(int(d))
            shapes.append(tuple(dims))
        out[spec.name] = (shapes[0], shapes[1], shapes[2])
    return out


class _Calibrator:
    """Feeds calibration batches to TensorRT's entropy calibrator from CUDA tensors."""

    def __new__(cls, batches: list[dict[str, np.ndarray]], cache: Path):
        import tensorrt as trt
        import torch

        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                super().__init__()
                self._batches, self._i, self._live = batches, 0, {}

            def get_batch_size(self):
                return next(iter(batches[0].values())).shape[0]

            def get_batch(self, names):
                if self._i >= len(self._batches):
                    return None
                self._live = {n: torch.from_numpy(self._batches[self._i][n]).cuda() for n in names}
                self._i += 1
                return [int(self._live[n].data_ptr()) for n in names]

            def read_calibration_cache(self):
                return cache.read_bytes() if cache.is_file() else None

            def write_calibration_cache(self, data):
                cache.write_bytes(bytes(data))

        return Calibrator()


def build_engine(onnx_path: Path, plan_path: Path, profile: Profile, *, precision: str = "fp16",
                 timing_cache: Path | None = None,
                 calibration: Iterable[dict[str, np.ndarray]] | None = None,
                 workspace_bytes: int = 2 << 30) -> dict:
    """Build and serialise one TensorRT engine; returns notes for the manifest.

    ``precision`` "fp32", "fp16" or "int8" (int8 needs ``calibration``: batches as
    ``{input name: array}``, and also enables fp16 for the layers int8 does not cover).
    Raises ``InputShapeError`` for int8 without calibration data, ``RuntimeError`` when
    TensorRT cannot parse or build the graph (its messages included).
    """
    if precision == "int8" and calibration is None:
        raise InputShapeError("TensorRT int8 needs calibration data (batches of real inputs); "
                              "build fp16 instead or pass calibration batches")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a cache from another GPU is just ignored
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        keep = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in keep:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _Calibrator(list(calibration), plan_path.with_suffix(".calib"))
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    if precision == "int8":
        config.set_calibration_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {plan_path.name}; run with -v for its log")
    plan_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("built %s (%.1f MB)", plan_path.name, plan_path.stat().st_size / 1e6)
    plan_path.with_suffix(".calib").unlink(missing_ok=True)  # the folder holds what the manifest lists
    return {"tensorrt": trt.__version__, "timing_cache": timing_cache.name if timing_cache else None,
            "profile": {k: [list(s) for s in v] for k, v in profile.items()}, "run_in_tests": False}
