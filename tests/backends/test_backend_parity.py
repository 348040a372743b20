"""Every backend available on this machine gives the torch backend's embeddings.

Graphs come from the export library (``export.export_model``) run on a tiny CLIP, once
per session. Tolerances, on L2-normalised embeddings (issue 5):
- fp32: max abs difference <= 1e-4 (same math, only op order and fusions differ);
- fp16: cosine >= 0.999 (11 significant bits; LayerNorm/softmax/normalise kept fp32);
- int8: cosine >= 0.99 (dynamic quantisation of the MatMul weights and activations).
Checked in the order shape, dtype, values, so a failure names the first thing wrong.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime
import pytest
import torch

from vqclip.backends import open_backend

BOUNDS = {"fp32": ("max_abs", 1e-4), "fp16": ("min_cos", 0.999), "int8": ("min_cos", 0.99)}

_ORT_EPS = onnxruntime.get_available_providers()
_HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
_NO_ORT_CUDA = "onnxruntime-gpu is not installed (no CUDAExecutionProvider in onnxruntime)"
_NO_ORT_TRT = "onnxruntime-gpu with TensorRT is not installed (no TensorrtExecutionProvider)"
_NO_TRT = "the tensorrt Python package or a CUDA GPU is missing"

CASES = [  # (backend, precision, options, skip reason or None)
    ("onnxruntime", "fp32", {}, None),
    ("onnxruntime", "fp16", {}, None),
    ("onnxruntime", "int8", {}, None),
    ("onnxruntime", "fp32", {"device": "cuda"}, None if "CUDAExecutionProvider" in _ORT_EPS else _NO_ORT_CUDA),
    ("onnxruntime", "fp16", {"device": "cuda"}, None if "CUDAExecutionProvider" in _ORT_EPS else _NO_ORT_CUDA),
    ("onnxruntime", "fp32", {"device": "tensorrt"}, None if "TensorrtExecutionProvider" in _ORT_EPS else _NO_ORT_TRT),
    ("tensorrt", "fp32", {}, None if _HAS_TRT else _NO_TRT),
    ("tensorrt", "fp16", {}, None if _HAS_TRT else _NO_TRT),
]


@pytest.fixture(scope="module")
def exported(tiny_clip, tiny_clip_export, tmp_path_factory):
    """The suite's shared export, or one with TensorRT plans where TensorRT runs."""
    if not _HAS_TRT:
        return tiny_clip_export
    from vqclip.export import export_model

    out = tmp_path_factory.mktemp("export") / "tiny-clip"
    export_model(tiny_clip, out, ["fp32", "fp16", "int8"], tensorrt=True, name="tiny-clip")
    return out


@pytest.fixture(scope="module")
def reference(tiny_clip):
    return open_backend("torch", clip=tiny_clip)


def _compare(got: np.ndarray, want: np.ndarray, precision: str, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}"
    kind, bound = BOUNDS[precision]
    if kind == "max_abs":
        err = float(np.abs(got - want).max())
        assert err <= bound, f"{what} {precision}: max abs diff {err:.2e} > {bound}"
    else:
        cos = float(((got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))).min())
        assert cos >= bound, f"{what} {precision}: min cosine {cos:.6f} < {bound}"


@pytest.mark.parametrize("name, precision, options, skip", CASES,
                         ids=[f"{n}-{p}-{o.get('device', 'default')}" for n, p, o, _ in CASES])
def test_backend_matches_torch(exported, reference, pixels, ids, name, precision, options, skip):
    if skip:
        pytest.skip(skip)
    be = open_backend(name, exported, precision=precision, **options)
    info = be.describe()
    assert (info.backend, info.precision) == (name, precision)
    assert info.components == ("image_encoder", "text_encoder")
    for batch in (1, 3):  # dynamic batch: one and several items through the same session
        _compare(be.encode_image(pixels[:batch]), reference.encode_image(pixels[:batch]), precision, "image")
        _compare(be.encode_text(ids[:batch]), reference.encode_text(ids[:batch]), precision, "text")


@pytest.mark.parametrize("options", [
    {"intra_op_threads": 1, "allow_spinning": False, "dynamic_block_base": 4},
    {"graph_optimization_level": "basic", "enable_mem_pattern": False, "enable_cpu_mem_arena": False},
    {"inter_op_threads": 2},  # parallel executor
])
def test_session_options_change_speed_not_results(exported, reference, pixels, options):
    be = open_backend("onnxruntime", exported, **options)
    _compare(be.encode_image(pixels), reference.encode_image(pixels), "fp32", f"image {options}")
    info = be.describe()
    for key, value in options.items():
        got = info.threads[key.removesuffix("_threads")] if key.endswith("_threads") else info.options[key]
        assert got == value


def test_warmup_then_bad_input(exported, ids):
    from vqclip.errors import InputShapeError

    be = open_backend("onnxruntime", exported, precision="int8")
    be.warmup(batch_sizes=(1, 2))
    with pytest.raises(InputShapeError, match=r"expected input_ids: int64\[batch,77\]"):
        be.encode_text(ids.astype(np.int32))
    with pytest.raises(InputShapeError, match=r"token ids in \[0, 49408\)"):  # vocab from the manifest
        be.encode_text(ids + 49408)
