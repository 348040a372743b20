"""The bundled shapes models: they load by name, know their world (looser floors than the
model card's figures, on fewer held-out images), and fail clearly when their files are bad."""
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from vqclip._hashing import sha256_file
from vqclip.checkpoints import infer_clip_config, load_clip, load_vqgan, read_tensors
from vqclip.errors import CheckpointError, OutputPathError, UnknownModelError
from vqclip.recipe import quality
from vqclip.zoo import get, list_models, registry, shapes
from vqclip.zoo.bundled import WEIGHTS_DIR, weights_file
from vqclip.zoo.judge import load_judge, to_signed


@pytest.fixture(scope="module")
def clip_model():
    return load_clip("shapes-clip")


@pytest.fixture(scope="module")
def vqgan_model():
    return load_vqgan("shapes-vqgan")


@pytest.fixture(scope="module")
def test_set():
    scenes = shapes.sample_scenes("test", 0, 300)
    return scenes, shapes.render_batch(scenes)


@pytest.mark.parametrize("name", ["shapes-clip", "shapes-vqgan"])
def test_registered_with_checked_weights(name):
    rec = get(name)
    assert name in list_models(rec.family)
    assert rec.default_template == "{}"
    assert rec.weights.sha256 and len(rec.weights.sha256) == 64
    path = weights_file(rec)
    assert path.parent == WEIGHTS_DIR and sha256_file(path) == rec.weights.sha256


def test_bundled_weights_fit_the_size_cap():
    total = sum(weights_file(get(n)).stat().st_size for n in ("shapes-clip", "shapes-vqgan"))
    total += (WEIGHTS_DIR / "shape-judge.safetensors").stat().st_size
    assert total < 40e6


def test_shapes_clip_config_is_inferred_from_its_weights():
    sd = read_tensors(weights_file(get("shapes-clip")))
    assert infer_clip_config(sd) == get("shapes-clip").config


def test_shapes_clip_zero_shot_floor(clip_model, test_set):
    scenes, images = test_set
    acc = quality.clip_zero_shot(clip_model, scenes, images)
    # The model card's figures are on 2,000 images; these floors leave room for a 300-image sample.
    assert acc["colour"] >= 0.95, acc
    assert acc["shape"] >= 0.85, acc
    assert acc["colour+shape"] >= 0.80, acc


def test_shapes_clip_a_known_image_wins_its_label(clip_model):
    scene = replace(shapes.sample_scene("test", 0), shape="star", colour="yellow", rgb=shapes.COLOURS["yellow"],
                    radius=0.35, cx=0.5, cy=0.5, background="blue", style="plain", shade=shapes.COLOURS["blue"])
    img = quality.to_pixels(shapes.render(scene)[None])
    txt = quality.tokenize([shapes.label(c, s) for c, s in shapes.all_labels()], clip_model.context_length)
    with torch.no_grad():
        logits, _ = clip_model(img, txt)
    assert shapes.all_labels()[int(logits.argmax())] == ("yellow", "star")


@pytest.mark.slow
def test_shapes_vqgan_reconstruction_floor(vqgan_model, test_set):
    scenes, images = test_set
    x = to_signed(images[:96])
    rec, codes = quality.vqgan_reconstruct(vqgan_model, x)
    assert rec.shape == x.shape and codes.shape == (96, 16, 16)
    assert float(quality.psnr(x, rec).mean()) >= 30.0  # 33.5 dB measured on these 96
    # Usage on 96 images x 256 cells (99.6% measured): the card's figure is on 2,000 images.
    assert torch.unique(codes).numel() / vqgan_model.config.n_embed >= 0.5
    judge = load_judge()
    truth = [s.shape for s in scenes[:96]]
    assert np.mean([p == t for p, t in zip(judge.predict(images[:96]), truth)]) >= 0.97  # the judge itself
    # A regression floor under the 98%: the shipped model reads 99.0% of 2,000
    # held-out reconstructions right (MODEL_CARD.md) and all 96 of these; the critic-trained
    # model it replaced read 95.6% and 92.7%, the L1/L2-only one before it 89.7% and 91.7%.
    assert np.mean([p == t for p, t in zip(judge.predict(rec.clamp(-1, 1)), truth)]) >= 0.95


@pytest.mark.parametrize("name,loader", [("shapes-clip", load_clip), ("shapes-vqgan", load_vqgan)])
def test_missing_bundled_file_names_it_and_the_recipe(name, loader, monkeypatch, tmp_path):
    rec = get(name)
    moved = replace(rec, weights=replace(rec.weights, path=str(tmp_path / "gone.safetensors")))
    monkeypatch.setitem(registry._REGISTRY, name, moved)
    with pytest.raises(CheckpointError, match=r"gone\.safetensors.*missing.*python -m vqclip\.recipe\.train"):
        loader(name)


@pytest.mark.parametrize("name,loader", [("shapes-clip", load_clip), ("shapes-vqgan", load_vqgan)])
def test_corrupt_bundled_file_names_it_and_the_recipe(name, loader, monkeypatch, tmp_path):
    rec = get(name)
    bad = tmp_path / "bad.safetensors"
    shutil.copy(weights_file(rec), bad)
    with open(bad, "r+b") as f:  # flip bytes in the middle of the tensor data
        f.seek(bad.stat().st_size // 2)
        f.write(b"\x00\xff" * 8)
    monkeypatch.setitem(registry._REGISTRY, name, replace(rec, weights=replace(rec.weights, path=str(bad))))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*corrupt.*python -m vqclip\.recipe\.train"):
        loader(name)


def test_truncated_file_without_a_checksum_is_refused(monkeypatch, tmp_path):
    rec = get("shapes-vqgan")
    bad = tmp_path / "short.safetensors"
    bad.write_bytes(weights_file(rec).read_bytes()[:5000])
    monkeypatch.setitem(registry._REGISTRY, "shapes-vqgan",
                        replace(rec, weights=replace(rec.weights, path=str(bad), sha256=None)))
    with pytest.raises(CheckpointError, match="short.safetensors"):
        load_vqgan("shapes-vqgan")


@pytest.mark.parametrize("family,loader", [("clip", load_clip), ("vqgan", load_vqgan)])
def test_unknown_name_lists_the_bundled_models(family, loader):
    with pytest.raises(UnknownModelError, match="shapes-clip" if family == "clip" else "shapes-vqgan"):
        get("shapes-clip-xl", family=family)
    with pytest.raises(CheckpointError, match="shapes-clip" if family == "clip" else "shapes-vqgan"):
        loader("shapes-clip-xl")


def test_training_recipe_refuses_an_unwritable_output_folder(tmp_path, capsys):
    from vqclip.recipe import train

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputPathError, match="a-file"):
        train.check_writable(blocker / "run")
    for what in ("clip", "vqgan", "judge"):
        assert train.main([what, "--out", str(blocker / "run"), "--cache", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err
        assert "not writable" in err and "--out" in err
    assert not (tmp_path / "cache").exists()  # refused before any rendering


def test_every_caption_fits_the_clip_context():
    ctx = get("shapes-clip").config.context_length
    texts = {shapes.caption(s, t).text for s in shapes.sample_scenes("test", 0, 400)
             for t in range(len(shapes.TEMPLATES))}
    texts |= {f"a large {c} triangle on a {b} background" for c in shapes.COLOURS for b in shapes.BACKGROUNDS}
    ids = quality.tokenize(sorted(texts), ctx)  # raises on a text longer than the context
    assert ids.shape == (len(texts), ctx)


@pytest.mark.parametrize("what,extra", [
    ("clip", ["--batch", "8", "--val-images", "16"]),
    ("vqgan", ["--batch", "4", "--val-images", "4", "--full-fraction", "0.5"]),  # the shipped recipe's terms
    ("vqgan", ["--batch", "4", "--val-images", "4", "--full-fraction", "0.5", "--perceptual-weight", "0"]),
    ("vqgan", ["--batch", "4", "--val-images", "4", "--full-fraction", "0.5", "--perceptual-weight", "0",
               "--disc-weight", "0.5", "--disc-start", "0"]),  # the critic path, from the first step
])
def test_recipe_is_reproducible_from_its_seed(what, extra, tmp_path):
    from safetensors.torch import load_file

    from vqclip.recipe import train

    common = ["--cache", str(tmp_path / "cache"), "--train-images", "64", "--steps", "2", "--log-every", "1000",
              "--eval-every", "1000", *extra]
    for run in ("a", "b"):
        assert train.main([what, "--out", str(tmp_path / run), *common]) == 0
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("a", "b"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train.main([what, "--out", str(tmp_path / "c"), "--seed", "1", *common]) == 0
    c = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters, so the check can fail
