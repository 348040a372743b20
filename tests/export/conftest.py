"""Exports of the tiny models, shared by the export tests.

Exporting is the slow part (the torch.export-based exporter traces and decomposes each
graph), so each model is exported once per session and the tests read the folders.
"""
import pytest
import torch


@pytest.fixture(scope="session")
def probe(tiny_clip):
    """A zero-shot probe for the tiny CLIP: 16 random images, 4 "labels"."""
    from vqclip.export import ZeroShotProbe
    from vqclip.export.graphs import components_for

    g = torch.Generator().manual_seed(7)
    ids = components_for(tiny_clip)[1].parity_inputs()[0][:4]  # 4 "labels"
    size = tiny_clip.config.image_size
    return ZeroShotProbe(pixels=torch.randn(16, 3, size, size, generator=g), label_ids=ids)


@pytest.fixture(scope="session")
def clip_export(tmp_path_factory, tiny_clip, probe):
    """A CLIP export at all three precisions with a zero-shot probe, plus a Triton repo."""
    from vqclip.export import export_model

    root = tmp_path_factory.mktemp("clip")
    return export_model(tiny_clip, root / "tiny-clip", ["fp16", "int8"], triton_repo=root / "triton",
                        probe=probe, name="tiny-clip")


@pytest.fixture(scope="session")
def vqgan_checkpoint(tmp_path_factory, tiny):
    """A taming-style Lightning checkpoint of the tiny VQGAN: {"state_dict": ...} in a .ckpt."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-vqgan.ckpt"
    torch.save({"state_dict": tiny.vqgan().state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def vqgan_model(vqgan_checkpoint, tiny):
    from vqclip.checkpoints import load_vqgan

    return load_vqgan(vqgan_checkpoint, config=tiny.VQGAN).eval()


@pytest.fixture(scope="session")
def vqgan_export(tmp_path_factory, vqgan_checkpoint):
    """The VQGAN exported through the CLI, from the checkpoint path, with a Triton repo."""
    from vqclip.cli import main
    from vqclip.export import read_manifest

    root = tmp_path_factory.mktemp("vqgan")
    rc = main(["export", str(vqgan_checkpoint), "--out", str(root / "tiny-vqgan"), "--precision", "fp16",
               "--triton", str(root / "triton")])
    assert rc == 0
    return read_manifest(root / "tiny-vqgan")
