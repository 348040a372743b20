"""The training-only perceptual term of the shapes-vqgan recipe (engine/zoo/_perceptual.py)."""
from __future__ import annotations

import pytest
import torch

from vqclip.models.clip import ConvStem
from vqclip.recipe.perceptual import StemPerceptual


@pytest.fixture(scope="module")
def bundled() -> StemPerceptual:
    return StemPerceptual.from_zoo()


def test_distance_matches_its_definition_on_a_random_stem():
    torch.manual_seed(0)
    stem = ConvStem(width=32, patch_size=8).layers  # three ReLU stages, the last one not tapped
    term = StemPerceptual(stem)
    x, y = torch.rand(2, 2, 3, 16, 16) * 2 - 1
    h, g = ((x + 1) / 2 - term.mean) / term.std, ((y + 1) / 2 - term.mean) / term.std
    want = 0.0
    for i, layer in enumerate(stem):  # float64 reference of the sum over the tapped stages
        h, g = layer(h), layer(g)
        if i in term.taps:
            hn = h.double() / (h.double().norm(dim=1, keepdim=True) + 1e-6)
            gn = g.double() / (g.double().norm(dim=1, keepdim=True) + 1e-6)
            want += ((hn - gn) ** 2).sum(1).mean().item()
    assert term.taps == [2, 5]
    assert term(y, x).item() == pytest.approx(want, rel=1e-5)


def test_identical_images_cost_nothing_and_different_ones_cost_more(bundled):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    assert bundled(x, x).item() == 0.0
    near = bundled(x + 0.02 * torch.randn_like(x), x).item()
    far = bundled(x + 0.3 * torch.randn_like(x), x).item()
    assert 0.0 < near < far


def test_gradient_reaches_the_output_not_the_frozen_stem(bundled):
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # a training crop: the stem is fully convolutional
    rec = (x + 0.1 * torch.randn_like(x)).requires_grad_()
    bundled(rec, x).backward()
    assert rec.grad is not None and rec.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in bundled.parameters())


def test_batchnorm_keeps_its_running_statistics_in_training(bundled):
    before = {k: v.clone() for k, v in bundled.state_dict().items()}
    bundled.train()  # what a training loop calling model.train() on a parent would do
    assert not bundled.training and not any(m.training for m in bundled.modules())
    bundled(torch.rand(4, 3, 64, 64) * 2 - 1, torch.zeros(4, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in bundled.state_dict().items())


def test_a_patch_stem_clip_is_refused(monkeypatch):
    import vqclip.checkpoints as checkpoints
    from vqclip.models.clip import CLIP, CLIPConfig

    cfg = CLIPConfig(embed_dim=16, image_size=32, vision_patch_size=8, vision_width=32, vision_layers=1,
                     vision_heads=1, context_length=8, text_width=16, text_layers=1, text_heads=1)
    monkeypatch.setattr(checkpoints, "load_clip", lambda name: CLIP(cfg))
    with pytest.raises(ValueError, match="patch stem"):
        StemPerceptual.from_zoo("any")
