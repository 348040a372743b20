"""The training-only adversarial pieces of the shapes-vqgan recipe (engine/zoo/_patchgan.py)."""
from __future__ import annotations

import torch

from vqclip.recipe.patchgan import PatchCritic, adaptive_weight, hinge_critic_loss


def test_critic_scores_one_logit_per_patch():
    critic = PatchCritic(width=8)
    for side in (16, 32, 64):
        out = critic(torch.zeros(2, 3, side, side))
        assert out.shape == (2, 1, side // 4 - 1, side // 4 - 1)


def test_hinge_loss_is_zero_only_beyond_the_margins():
    confident = hinge_critic_loss(torch.full((4,), 1.5), torch.full((4,), -2.0))
    assert confident.item() == 0.0
    # real at 0 costs 1, fake at 0 costs 1, halved: 1.0
    assert hinge_critic_loss(torch.zeros(4), torch.zeros(4)).item() == 1.0


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    rec = (w ** 2).sum()  # gradient 2w, norm 2 * sqrt(14)
    gen = (5.0 * w).sum()  # gradient 5 everywhere, norm 5 * sqrt(3)
    got = adaptive_weight(rec, gen, w)
    want = 2 * 14 ** 0.5 / (5 * 3 ** 0.5 + 1e-4)
    assert abs(got.item() - want) < 1e-5 and not got.requires_grad
    assert adaptive_weight(rec, gen, w, cap=0.5).item() == 0.5
