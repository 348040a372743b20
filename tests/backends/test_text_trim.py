"""Cutting text ids past the end-of-text token (``trim_to_eot``, ``cut_after_eot``): the
shapes it gives, and that the torch and ONNX Runtime backends' embeddings stay those of the
full 77-token context while their text encoders run the cut batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqclip.backends import open_backend
from vqclip.backends._io_spec import GraphSpec, cut_after_eot, with_context_length
from vqclip.backends.torch_backend import trim_to_eot
from vqclip.errors import InputShapeError
from vqclip.manifest import TensorSpec


def _ids(eots: list[int], T: int = 77, V: int = 49408) -> np.ndarray:
    rng = np.random.default_rng(3)
    ids = np.zeros((len(eots), T), dtype=np.int64)  # (B, T), zero padding as the tokenizer writes
    for row, e in enumerate(eots):
        ids[row, 0] = V - 2  # start of text
        ids[row, 1:e] = rng.integers(1, V - 2, e - 1)
        ids[row, e] = V - 1  # end of text, the largest id
    return ids


@pytest.mark.parametrize("eots, keep", [
    ([4], 16), ([15], 16), ([16], 32), ([4, 40], 48), ([63], 64), ([64], 77), ([76], 77), ([2, 76], 77),
])
def test_trim_shapes(eots, keep):
    ids = _ids(eots)
    out = trim_to_eot(ids)
    assert out.shape == (len(eots), keep) and out.dtype == np.int64 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ids[:, :keep])
    assert (out.argmax(axis=1) == ids.argmax(axis=1)).all()  # the pooled position survives


def test_trim_keeps_untrimmable_input_as_is():
    ids = _ids([76])
    assert trim_to_eot(ids) is ids  # nothing to cut: no copy


def test_torch_backend_gives_full_context_embeddings(tiny_clip):
    # Rows with EOT early, in the middle and last, in one batch and one by one.
    ids = _ids([3, 9, 30, 76], V=tiny_clip.config.vocab_size)
    be = open_backend("torch", clip=tiny_clip)
    with torch.no_grad():
        want = F.normalize(tiny_clip.encode_text(torch.from_numpy(ids)), dim=-1).numpy()  # (4, E), all 77
    # The causal mask makes the cut exact in real arithmetic; in float32 the matmuls over
    # fewer rows may block and sum differently, which moves unit vectors by ~1e-7.
    np.testing.assert_allclose(be.encode_text(ids), want, atol=2e-6)
    for i in range(len(ids)):
        np.testing.assert_allclose(be.encode_text(ids[i:i + 1]), want[i:i + 1], atol=2e-6)


def test_torch_backend_runs_the_cut_ids(tiny_clip):
    be = open_backend("torch", clip=tiny_clip)
    seen = []
    hook = be.clip.token_embedding.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        be.encode_text(_ids([5], V=tiny_clip.config.vocab_size))
        be.encode_text(_ids([5, 70], V=tiny_clip.config.vocab_size))
    finally:
        hook.remove()
    assert seen == [(1, 16), (2, 77)]


@pytest.mark.parametrize("eots, keep", [([4], 5), ([1], 2), ([4, 40], 41), ([76], 77), ([0], 1)])
def test_cut_pads_a_batch_to_its_longest_query(eots, keep):
    ids = _ids([max(e, 1) for e in eots])
    if eots == [0]:  # an end-of-text first (what warm-up feeds): one position
        ids[:] = 0
        ids[0, 0] = 49407
    out = cut_after_eot(ids)
    assert out.shape == (len(eots), keep)
    np.testing.assert_array_equal(out, ids[:, :keep])


def test_only_text_graphs_with_a_token_axis_are_cut():
    emb = (TensorSpec("embedding", "float32", ("batch", 32)),)
    dynamic = GraphSpec("text_encoder", "fp32", (TensorSpec("input_ids", "int64", ("batch", "tokens")),), emb)
    spec, cut = with_context_length(dynamic, 77)
    assert cut and spec.inputs[0].shape == ("batch", 77) and spec.outputs == emb  # callers pass (B, 77)
    fixed = GraphSpec("text_encoder", "fp32", (TensorSpec("input_ids", "int64", ("batch", 77)),), emb)
    assert with_context_length(fixed, 77) == (fixed, False)  # an export of vqclip <= 0.2.0: run as it is
    image = GraphSpec("image_encoder", "fp32", (TensorSpec("pixels", "float32", ("batch", 3, 32, 32)),), emb)
    assert with_context_length(image, 77) == (image, False)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_runs_the_cut_ids_with_full_context_embeddings(tiny_clip, tiny_clip_export, precision):
    V = tiny_clip.config.vocab_size
    be = open_backend("onnxruntime", tiny_clip_export, precision=precision)
    assert be.spec("text_encoder").inputs[0].shape == ("batch", 77)  # what callers pass, as before
    sess = be._session("text_encoder")
    seen = []

    class Spy:  # records the shape each call feeds the graph
        def __getattr__(self, name):
            return getattr(sess, name)

        def run(self, outputs, feed):
            seen.append(next(iter(feed.values())).shape)
            return sess.run(outputs, feed)

    be._sessions["text_encoder"] = Spy()
    ids = _ids([3, 9, 30], V=V)
    got = be.encode_text(ids)
    be.encode_text(ids[:1])
    assert seen == [(3, 31), (1, 4)]
    with torch.no_grad():
        want = F.normalize(tiny_clip.encode_text(torch.from_numpy(ids)), dim=-1).numpy()
    if precision == "fp32":
        np.testing.assert_allclose(got, want, atol=1e-4)  # the fp32 parity bound
    else:
        assert (got * want).sum(1).min() >= 0.99  # int8's
    with pytest.raises(InputShapeError, match=r"shape \[1, 30\]; expected input_ids: int64\[batch,77\]"):
        be.encode_text(ids[:1, :30])  # callers pass the full context, as to every backend
