"""The VQGAN components through each backend: decode (and encode) match the torch backend.

The decoder's output is an image, not a unit vector, so fp32 is bounded relatively, as
export's parity check does: max |diff| <= 1e-4 x max |reference|. Only fp32 is exported
here, to keep the suite fast: the fp16 file selection is the encoders' (test_backend_parity.py),
and export's own tests check its fp16 VQGAN graphs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vqclip.backends import open_backend
from vqclip.errors import InputShapeError, UnsupportedOperationError
from vqclip.models.vqgan import VQGAN, VQGANConfig

# Two levels (factor 2) with attention at the lowest: every block type, exported in seconds.
SMALL = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), z_channels=32,
                    embed_dim=16, n_embed=64, resolution=32)


@pytest.fixture(scope="module")
def vqgan():
    torch.manual_seed(0)
    return VQGAN(SMALL).eval()


@pytest.fixture(scope="module")
def exported(vqgan, tmp_path_factory):
    from vqclip.export import export_model

    out = tmp_path_factory.mktemp("export") / "tiny-vqgan"
    export_model(vqgan, out, ["fp32"], name="tiny-vqgan")
    return out


def _rel_max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_torch_backend_is_the_module(vqgan):
    be = open_backend("torch", vqgan=vqgan)
    z = np.random.default_rng(0).standard_normal((2, 16, 3, 5), dtype=np.float32)
    img = be.decode(z)
    with torch.no_grad():
        want = vqgan.decode(torch.from_numpy(z)).numpy()
    assert img.shape == (2, 3, 6, 10) and img.dtype == np.float32
    np.testing.assert_allclose(img, want, atol=1e-6)
    lat = be.encode_latent(np.zeros((1, 3, 8, 4), np.float32))
    assert lat.shape == (1, 16, 4, 2)
    with pytest.raises(InputShapeError, match="multiples of 2"):
        be.encode_latent(np.zeros((1, 3, 8, 5), np.float32))
    with pytest.raises(UnsupportedOperationError, match="no image_encoder"):
        be.encode_image(np.zeros((1, 3, 8, 8), np.float32))


def test_decode_only_model_has_no_encoder(vqgan):
    dec_only = VQGAN(SMALL, with_encoder=False)
    dec_only.load_state_dict({k: v for k, v in vqgan.state_dict().items() if k in dec_only.state_dict()})
    be = open_backend("torch", vqgan=dec_only)
    assert be.components == ("vqgan_decoder",)
    with pytest.raises(UnsupportedOperationError, match="no vqgan_encoder"):
        be.encode_latent(np.zeros((1, 3, 8, 8), np.float32))


def test_onnxruntime_matches_torch(vqgan, exported):
    ref = open_backend("torch", vqgan=vqgan)
    be = open_backend("onnxruntime", exported)
    assert be.components == ("vqgan_decoder", "vqgan_encoder")
    rng = np.random.default_rng(1)
    for shape in [(1, 16, 4, 4), (2, 16, 3, 5)]:  # dynamic batch and non-square latent sides
        z = rng.standard_normal(shape, dtype=np.float32)
        got, want = be.decode(z), ref.decode(z)
        assert got.shape == want.shape and got.dtype == np.float32
        assert _rel_max_abs(got, want) <= 1e-4
    img = np.tanh(rng.standard_normal((2, 3, 8, 12), dtype=np.float32))  # in (-1, 1)
    got, want = be.encode_latent(img), ref.encode_latent(img)
    assert got.shape == want.shape == (2, 16, 4, 6)
    assert _rel_max_abs(got, want) <= 1e-4
