"""The differentiable pieces against float64 references and their gradient rules."""
import math

import numpy as np
import torch

from vqclip.jobs.generate import ops


def test_spherical_distance_matches_float64():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 16))
    b = rng.standard_normal((3, 16))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    ref = 2 * np.arcsin(np.linalg.norm(a[:, None] - b[None], axis=-1) / 2) ** 2  # (5, 3)
    got = ops.spherical_distance(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_straight_through_quantiser_gives_codes_forward_and_identity_backward():
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(20, 4, generator=g)
    z = torch.randn(2, 4, 3, 5, generator=g, requires_grad=True)
    zq = ops.quantise(z, codebook)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4).double()
    picked = zq.detach().permute(0, 2, 3, 1).reshape(-1, 4).double()
    assert all(any(torch.equal(row, c) for c in codebook.double()) for row in picked)  # every output is a code
    d = torch.cdist(flat, codebook.double())  # (N, K), float64
    # the nearest code, up to float32 rounding of the distances
    assert ((picked - flat).norm(dim=1) <= d.min(1).values + 1e-5).all()
    w = torch.randn_like(z)
    (zq * w).sum().backward()
    assert torch.equal(z.grad, w)


def test_clamp_gradient_only_points_back_into_range():
    x = torch.tensor([-0.5, 0.5, 1.5, -0.2, 1.2], requires_grad=True)
    y = ops.clamp_with_grad(x, 0, 1)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.5, 1.0, 0.0, 1.0]))
    # Descent moves x by -grad: below the range only negative gradients (x grows) pass,
    # above it only positive ones; inside, everything passes.
    y.backward(torch.tensor([-1.0, 1.0, 1.0, 1.0, -1.0]))
    assert x.grad.tolist() == [-1.0, 1.0, 1.0, 0.0, 0.0]


def test_prompt_loss_weights_signs_and_stops():
    e = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    e.requires_grad_(True)
    d = ops.spherical_distance(e, t).mean(0)  # (2,)
    loss = ops.prompt_loss(e, t, torch.tensor([2.0, -0.5]), torch.tensor([-math.inf, -math.inf]))
    torch.testing.assert_close(loss, torch.stack([2 * d[0], -0.5 * d[1]]))
    stopped = ops.prompt_loss(e, t, torch.tensor([1.0, 1.0]), torch.tensor([10.0, -math.inf]))
    stopped.sum().backward()  # prompt 0 is below its stop: only prompt 1 pulls
    e2 = e.detach().clone().requires_grad_(True)
    ops.prompt_loss(e2, t[1:], torch.tensor([1.0]), torch.tensor([-math.inf])).sum().backward()
    torch.testing.assert_close(e.grad, e2.grad)
    torch.testing.assert_close(stopped.detach(), d.detach())  # the value is unchanged by the stop


def test_regularisers_are_per_image():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x[1] = x[1].flip(-1) * 0 + 0.5  # a flat, symmetric image
    for f in (ops.smoothness, ops.symmetry, ops.saturation_loss):
        v = f(x)
        assert v.shape == (3,)
        torch.testing.assert_close(v[0], f(x[:1])[0])
    assert ops.smoothness(x)[1] == 0 and ops.symmetry(x)[1] == 0 and ops.saturation_loss(x)[1] == 0
    pal = ops.palette_loss(x, torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]))
    assert pal.shape == (3,) and pal[1] == 0
