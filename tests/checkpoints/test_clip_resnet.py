"""OpenAI's ResNet CLIPs (RN50 ... RN50x64): loaded from their formats, exported, served.

The reference is OpenAI's own ``clip/model.py`` (clip-anytorch) on the same random weights,
BatchNorm statistics included; the bound is test_clip_checkpoints.py's (1e-4 max abs, fp32).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_clip_checkpoints import _openai_model_module  # the peer's clip/model.py, imported alone

from vqclip.checkpoints import infer_clip_config, load_clip
from vqclip.models.clip import CLIP
from vqclip.zoo import get

ATOL = 1e-4
EOT = 49407
OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


def _peer_resnet_clip():
    """OpenAI's CLIP with a small ModifiedResNet tower, every weight and BN statistic random."""
    m = _openai_model_module()
    torch.manual_seed(0)
    ref = m.CLIP(embed_dim=64, image_resolution=64, vision_layers=(1, 2, 1, 1), vision_width=16,
                 vision_patch_size=None, context_length=16, vocab_size=EOT + 1, transformer_width=128,
                 transformer_heads=2, transformer_layers=2)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.05)
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)  # a variance: positive
    return ref.eval()


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, 3, 64, 64, generator=g)
    ids = torch.zeros(batch, 16, dtype=torch.long)
    for i in range(batch):
        n = 3 + 4 * i
        ids[i, 0], ids[i, n] = EOT - 1, EOT
        ids[i, 1:n] = torch.randint(1, EOT - 1, (n - 1,), generator=g)
    return pixels, ids


def _assert_matches(ours: CLIP, ref) -> None:
    pixels, ids = _inputs()
    with torch.no_grad():
        ri, rt = ref.encode_image(pixels), ref.encode_text(ids)
        assert ri.abs().max() > 0.1 and rt.abs().max() > 0.1
        assert (ours.encode_image(pixels) - ri).abs().max().item() <= ATOL
        assert (ours.encode_text(ids) - rt).abs().max().item() <= ATOL


def test_openai_resnet_state_dict_matches_openai(tmp_path):
    ref = _peer_resnet_clip()
    sd = dict(ref.state_dict())
    sd.update(input_resolution=torch.tensor(64), context_length=torch.tensor(16), vocab_size=torch.tensor(EOT + 1))
    torch.save(sd, tmp_path / "RN-tiny.pt")
    ours = load_clip(tmp_path / "RN-tiny.pt")
    c = ours.config
    assert (c.is_resnet, c.vision_layers, c.vision_width, c.vision_heads, c.image_size) == (True, (1, 2, 1, 1), 16, 8, 64)
    _assert_matches(ours, ref)


def test_openai_resnet_torchscript_archive_matches_openai(tmp_path):
    ref = _peer_resnet_clip()
    pixels, ids = _inputs(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ref, (pixels, ids), check_trace=False)
    traced.save(str(tmp_path / "RN-tiny.pt"))
    ours = load_clip(tmp_path / "RN-tiny.pt")
    assert ours.config.is_resnet
    _assert_matches(ours, ref)


def test_saves_without_batchnorm_counters_load(tmp_path):
    ref = _peer_resnet_clip()
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["input_resolution"] = torch.tensor(64)
    torch.save(sd, tmp_path / "rn.pt")
    _assert_matches(load_clip(tmp_path / "rn.pt"), ref)


@pytest.mark.parametrize("name,size", [("RN50", 224), ("RN101", 224), ("RN50x4", 288), ("RN50x16", 384),
                                       ("RN50x64", 448)])
def test_zoo_resnets_have_openai_shapes_and_sizes(name, size):
    cfg = get(name).config
    assert cfg.image_size == size and cfg.is_resnet
    with torch.device("meta"):
        sd = CLIP(cfg).state_dict()
    assert infer_clip_config(sd) == cfg


def test_rn50_parameter_count_is_openais():
    # The zoo's RN50 is OpenAI's build of RN50, key for key and parameter for parameter.
    m = _openai_model_module()
    with torch.device("meta"):
        peer = m.CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12)
        ours = CLIP(get("RN50").config)
    assert set(peer.state_dict()) == set(ours.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in peer.parameters())


@pytest.mark.slow
def test_resnet_clip_exports_and_runs_on_onnxruntime(tmp_path):
    from vqclip.encoder import open_encoder
    from vqclip.export import export_model
    from vqclip.manifest import read_manifest

    ref = _peer_resnet_clip()
    sd = dict(ref.state_dict(), input_resolution=torch.tensor(64))
    torch.save(sd, tmp_path / "rn.pt")
    ours = load_clip(tmp_path / "rn.pt")
    export_model(ours, tmp_path / "export", ["fp32", "int8"], name="rn-tiny")  # parity-checked, else it raises
    manifest = read_manifest(tmp_path / "export")
    assert manifest.config["vision_layers"] == [1, 2, 1, 1] and manifest.config["activation"] == "quick_gelu"
    pixels, ids = _inputs(3)
    with torch.no_grad():
        want_i = torch.nn.functional.normalize(ref.encode_image(pixels), dim=-1).numpy()
        want_t = torch.nn.functional.normalize(ref.encode_text(ids), dim=-1).numpy()
    for precision, bound in (("fp32", ATOL), ("int8", 0.05)):
        enc = open_encoder(ours, "onnxruntime", precision=precision, export_dir=tmp_path / "export")
        assert np.abs(enc.encode_image(pixels.numpy()) - want_i).max() <= bound
        assert np.abs(enc.encode_text(ids.numpy()) - want_t).max() <= bound
