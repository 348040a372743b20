"""The torch backend: the reference the other backends are compared against."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqclip.backends import open_backend
from vqclip.errors import BackendUnavailableError, InputShapeError, UnsupportedOperationError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_matches_module_and_normalises(tiny_clip, pixels, ids):
    be = open_backend("torch", clip=tiny_clip)
    img, txt = be.encode_image(pixels), be.encode_text(ids)
    assert img.shape == (3, 32) and txt.shape == (3, 32)
    assert img.dtype == np.float32 and txt.dtype == np.float32
    with torch.no_grad():
        want_img = F.normalize(tiny_clip.encode_image(torch.from_numpy(pixels)), dim=-1).numpy()
        want_txt = F.normalize(tiny_clip.encode_text(torch.from_numpy(ids)), dim=-1).numpy()
    # Same ops, same order, same dtype: only thread scheduling can differ.
    np.testing.assert_allclose(img, want_img, atol=1e-6)
    np.testing.assert_allclose(txt, want_txt, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1.0, atol=1e-5)


def test_callers_module_untouched(tiny_clip, pixels):
    tiny_clip.train()
    try:
        be = open_backend("torch", clip=tiny_clip, precision="bf16")
        be.encode_image(pixels)
        assert tiny_clip.training and tiny_clip.dtype == torch.float32
        assert not be.clip.training and be.clip.dtype == torch.bfloat16
    finally:
        tiny_clip.eval()


# Stated bounds on unit vectors: fp16 keeps 11 significant bits -> cosine >= 0.999 (issue 5);
# bf16 keeps 8, eight times coarser rounding of every activation -> cosine >= 0.995.
@pytest.mark.parametrize("precision, bound", [("fp16", 0.999), ("bf16", 0.995)])
def test_half_precision_on_cpu(tiny_clip, pixels, ids, precision, bound):
    ref = open_backend("torch", clip=tiny_clip)
    half = open_backend("torch", clip=tiny_clip, precision=precision)
    for enc in ("encode_image", "encode_text"):
        a, b = getattr(ref, enc)(pixels if enc == "encode_image" else ids), \
            getattr(half, enc)(pixels if enc == "encode_image" else ids)
        assert b.dtype == np.float32
        assert _cos(a, b).min() >= bound, (enc, _cos(a, b))


def test_describe_and_warmup(tiny_clip):
    before = torch.get_num_threads()  # threads= is process-wide: put it back for the other tests
    be = open_backend("torch", clip=tiny_clip, threads=1)
    try:
        be.warmup(batch_sizes=(1, 2))
        info = be.describe()
        assert (info.backend, info.device, info.precision) == ("torch", "cpu", "fp32")
        assert info.components == ("image_encoder", "text_encoder") and info.threads["intra_op"] == 1
        assert "torch fp32 on cpu" in str(info)
    finally:
        torch.set_num_threads(before)


def test_bad_input(tiny_clip, ids):
    be = open_backend("torch", clip=tiny_clip)
    with pytest.raises(InputShapeError, match="expected input_ids: int64\\[batch,77\\]"):
        be.encode_text(ids[:, :16])
    with pytest.raises(InputShapeError, match="token ids in \\[0, 49408\\)"):
        be.encode_text(ids - 100)
    with pytest.raises(UnsupportedOperationError, match="no vqgan_decoder.*pass vqgan="):
        be.decode(np.zeros((1, 4, 2, 2), np.float32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_cuda_requested_without_gpu(tiny_clip):
    with pytest.raises(BackendUnavailableError, match="sees no CUDA GPU"):
        open_backend("torch", clip=tiny_clip, device="cuda")
    with pytest.raises(BackendUnavailableError, match="cuda_graphs needs a CUDA device"):
        open_backend("torch", clip=tiny_clip, cuda_graphs=True)


@needs_cuda
@pytest.mark.parametrize("precision, bound", [("fp32", 0.99999), ("fp16", 0.999), ("bf16", 0.995)])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_matches_cpu(tiny_clip, pixels, ids, precision, bound, cuda_graphs):
    ref = open_backend("torch", clip=tiny_clip)
    gpu = open_backend("torch", clip=tiny_clip, device="cuda", precision=precision, cuda_graphs=cuda_graphs)
    for _ in range(2):  # the second call replays the captured graph
        assert _cos(ref.encode_image(pixels), gpu.encode_image(pixels)).min() >= bound
        assert _cos(ref.encode_text(ids), gpu.encode_text(ids)).min() >= bound
    # A new batch size captures a new graph; an old one still replays correctly.
    assert _cos(ref.encode_image(pixels[:1]), gpu.encode_image(pixels[:1])).min() >= bound
    assert gpu.describe().device.startswith("cuda")


@needs_cuda
def test_cuda_compiled(tiny_clip, pixels):
    ref = open_backend("torch", clip=tiny_clip)
    gpu = open_backend("torch", clip=tiny_clip, device="cuda", precision="fp16", compile=True)
    assert _cos(ref.encode_image(pixels), gpu.encode_image(pixels)).min() >= 0.999
