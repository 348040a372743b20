"""Tiny CLIP and VQGAN models and their exports, shared by the export tests.

Exporting is the slow part (the torch.export-based exporter traces and decomposes each
graph), so each model is exported once per session and the tests read the folders.
"""
import logging

import pytest
import torch

from engine.models.clip import CLIP, CLIPConfig
from engine.models.vqgan import VQGAN, VQGANConfig

# Real vocabulary size, so the end-of-text id is OpenAI's 49407.
TINY_CLIP = CLIPConfig(embed_dim=32, image_size=32, vision_patch_size=8, vision_width=64, vision_layers=2,
                       vision_heads=2, context_length=77, text_width=32, text_layers=2, text_heads=2)
# Two levels: factor 2; attention at the 16-px level, as the f16 models have it at theirs.
TINY_VQGAN = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32,
                         z_channels=32, embed_dim=16, n_embed=64)


@pytest.fixture(autouse=True, scope="session")
def _quiet_exporter():
    # The exporter and ORT's quantiser log every step at INFO/WARNING; keep failures readable.
    for name in ("torch.onnx", "onnxscript", "onnx_ir", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(TINY_CLIP).eval()


def tiny_vqgan(seed: int = 0, with_encoder: bool = True) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(TINY_VQGAN, with_encoder=with_encoder).eval()


def probe_for(model: CLIP):
    from export import ZeroShotProbe
    from export.graphs import components_for

    g = torch.Generator().manual_seed(7)
    ids = components_for(model)[1].parity_inputs()[0][:4]  # 4 "labels"
    return ZeroShotProbe(pixels=torch.randn(16, 3, 32, 32, generator=g), label_ids=ids)


@pytest.fixture(scope="session")
def clip_model():
    return tiny_clip()


@pytest.fixture(scope="session")
def clip_export(tmp_path_factory, clip_model):
    """A CLIP export at all three precisions with a zero-shot probe, plus a Triton repo."""
    from export import export_model

    root = tmp_path_factory.mktemp("clip")
    manifest = export_model(clip_model, root / "tiny-clip", ["fp16", "int8"], triton_repo=root / "triton",
                            probe=probe_for(clip_model), name="tiny-clip")
    return manifest


@pytest.fixture(scope="session")
def vqgan_model():
    return tiny_vqgan()


@pytest.fixture(scope="session")
def vqgan_export(tmp_path_factory, vqgan_model):
    from export import export_model

    root = tmp_path_factory.mktemp("vqgan")
    return export_model(vqgan_model, root / "tiny-vqgan", ["fp16"], triton_repo=root / "triton",
                        name="tiny-vqgan")
