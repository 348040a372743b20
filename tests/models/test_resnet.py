"""vqclip.models.resnet: OpenAI's ModifiedResNet image tower, judged against OpenAI's own code.

The peer is clip-anytorch's ``clip.model.ModifiedResNet`` on the same random weights,
copied into ours with ``load_state_dict(strict=True)`` (which is also the key-name test).
Random weights alone make a weak test: fresh BatchNorms are the identity and the
attention pool's softmax is near uniform, so a wrong head split moves the output by only
~5e-5 of its scale. So every BatchNorm gets random statistics and affine terms, and the
pool's query/key weights are scaled up to sharpen its softmax.

Bounds: in float64 both sides compute the same function and differ only in summation
order (~1e-15 of the output scale), so the bound is 1e-10 of the scale; in float32 the
normalised embeddings must agree to 1e-4 max abs (they differ by ~1e-7).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqclip.models.resnet import ModifiedResNet

FP64_RTOL = 1e-10  # max abs difference / max abs output, float64; see the module docstring
FP32_ATOL = 1e-4  # max abs difference of the L2-normalised embeddings, float32

# name: (layers, output_dim, heads, input_resolution, width, batch). Heads follow OpenAI's
# width * 32 // 64 rule. "small" has a 3x3 grid and stages with and without a shortcut conv.
CONFIGS = {
    "small": ((1, 2, 1, 2), 48, 8, 96, 16, 3),
    "RN50": ((3, 4, 6, 3), 1024, 32, 224, 64, 2),
    "RN50x4": ((4, 6, 10, 6), 640, 40, 288, 80, 1),
}
SLOW = {"RN50", "RN50x4"}


def _params(name: str):
    marks = [pytest.mark.slow] if name in SLOW else []
    return pytest.param(name, marks=marks, id=name)


@functools.cache
def _peer():
    """clip-anytorch's clip/model.py, imported alone: the package's __init__ needs pkg_resources."""
    spec = importlib.util.find_spec("clip")
    if spec is None or spec.origin is None:
        pytest.skip("clip-anytorch is not installed (pip install --no-deps clip-anytorch)")
    mspec = importlib.util.spec_from_file_location("_openai_clip_model", Path(spec.origin).parent / "model.py")
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorms and a sharp attention pool; works on ours and the peer alike."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
        model.attnpool.q_proj.weight.mul_(4.0)
        model.attnpool.k_proj.weight.mul_(4.0)
    return model


def _pair(name: str) -> tuple[nn.Module, ModifiedResNet, torch.Tensor]:
    """(peer, ours, pixels): the same randomised weights in both, eval mode, float32."""
    layers, out, heads, res, width, batch = CONFIGS[name]
    torch.manual_seed(0)
    peer = _randomize(_peer().ModifiedResNet(layers, out, heads, res, width)).eval()
    ours = ModifiedResNet(layers, out, heads, res, width).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    pixels = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(1))  # (B, 3, S, S)
    return peer, ours, pixels


# ---------------------------------------------------------------- key layout

@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_and_shapes_match_peer(name):
    layers, out, heads, res, width, _ = CONFIGS[name]
    with torch.device("meta"):  # shapes only: no RN50x4-sized allocation
        peer = _peer().ModifiedResNet(layers, out, heads, res, width)
        ours = ModifiedResNet(layers, out, heads, res, width)
    want = {k: (v.shape, v.dtype) for k, v in peer.state_dict().items()}
    got = {k: (v.shape, v.dtype) for k, v in ours.state_dict().items()}
    assert got.keys() == want.keys()
    assert got == want
    # BatchNorm's step counters are state-dict entries on both sides (int64 buffers).
    assert "layer1.0.downsample.1.num_batches_tracked" in got
    assert got["attnpool.positional_embedding"][0] == ((res // 32) ** 2 + 1, width * 32)


# ---------------------------------------------------------------- numerical parity

@pytest.mark.parametrize("name", [_params(n) for n in CONFIGS])
def test_parity_with_peer(name):
    peer, ours, pixels = _pair(name)
    with torch.no_grad():
        a, b = peer(pixels), ours(pixels)
        assert b.shape == (pixels.shape[0], CONFIGS[name][1]) and b.dtype == torch.float32
        err32 = (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max().item()
        assert err32 <= FP32_ATOL, f"{name} fp32: normalised max abs diff {err32:.3g}"

        peer.double()
        ours.double()
        a, b = peer(pixels), ours(pixels)  # float32 pixels: both cast to the weights' dtype
        assert b.dtype == torch.float64
        scale = a.abs().max().item()
        err64 = (a - b).abs().max().item()
        assert err64 <= FP64_RTOL * scale, f"{name} fp64: max abs diff {err64:.3g} at output scale {scale:.3g}"


def test_peer_in_training_mode_agrees_too():
    # Batch statistics instead of running ones: the BatchNorms sit at the same places.
    peer, ours, pixels = _pair("small")
    peer.train().double()
    ours.train().double()
    with torch.no_grad():
        a, b = peer(pixels), ours(pixels)
    assert (a - b).abs().max().item() <= FP64_RTOL * a.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_runs(dtype):
    _, ours, pixels = _pair("small")
    with torch.no_grad():
        ref = F.normalize(ours(pixels), dim=-1)
        try:
            low = ours.to(dtype)(pixels)
        except (NotImplementedError, RuntimeError) as e:  # an op without a CPU kernel in this dtype
            pytest.skip(f"{dtype} on CPU: {e}")
    assert low.dtype == dtype
    assert (F.normalize(low.float(), dim=-1) - ref).abs().max().item() < 2e-2


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        ModifiedResNet((1, 1, 1, 1), 32, 8, input_resolution=200, width=16)
    with pytest.raises(ValueError, match="multiple of heads"):
        ModifiedResNet((1, 1, 1, 1), 32, 7, input_resolution=64, width=16)
    with pytest.raises(ValueError, match="4 stages"):
        ModifiedResNet((1, 1, 1), 32, 8, input_resolution=64, width=16)


# ---------------------------------------------------------------- ONNX export

# The exporter's own chatter: torch.export's pytree FutureWarning, torch.onnx's notes.
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_onnx_export_dynamic_batch_matches_torch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from vqclip.export.onnx_export import OPSET

    _, ours, _ = _pair("small")
    res = CONFIGS["small"][3]
    path = tmp_path / "resnet.onnx"
    with torch.no_grad():
        program = torch.onnx.export(
            ours, (torch.randn(2, 3, res, res),), input_names=["pixels"], output_names=["embedding"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET, dynamo=True,
            external_data=False, verbose=False, optimize=True,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)

    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    ops = {(n.domain, n.op_type) for n in nodes}
    assert {d for d, _ in ops} <= {"", "ai.onnx"}, f"ops outside the standard domain: {sorted(ops)}"
    assert ("", "MatMul") in ops and ("", "Softmax") in ops
    assert not {op for _, op in ops} & {"Attention", "MultiHeadAttention", "ScaledDotProductAttention"}
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # batch is dynamic

    pixels = torch.randn(3, 3, res, res, generator=torch.Generator().manual_seed(2))  # not the traced batch
    with torch.no_grad():
        want = ours(pixels).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixels": pixels.numpy()})
    assert got.shape == want.shape == (3, CONFIGS["small"][1])
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
