"""Cutting text ids past the end-of-text token (``trim_to_eot``): the shapes it gives, and
that the torch backend's embeddings stay those of the full 77-token context."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqclip.backends import open_backend
from vqclip.backends.torch_backend import trim_to_eot


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
