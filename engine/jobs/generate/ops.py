"""The differentiable pieces of a VQGAN+CLIP step: straight-through quantisation, a clamp
whose gradient only points back into range, the spherical-distance prompt loss and the
image regularisers users reach for (pixray's symmetry, smoothness, palette, saturation).

All take and give batched tensors; reductions are per image, so the losses of different
jobs in one batch never mix.
"""
from __future__ import annotations

import torch

__all__ = ["REGULARISERS", "quantise", "nearest_codes", "clamp_with_grad", "keep_into_range", "prompt_loss",
           "spherical_distance", "smoothness", "symmetry",
           "palette_loss", "saturation_loss", "codebook_bounds"]

# The image and latent regularisers, in the order the exported step reports them.
REGULARISERS = ("init", "smoothness", "symmetry", "saturation", "palette")


class _ClampWithGrad(torch.autograd.Function):
    """``x.clamp(lo, hi)`` forward; backward passes the gradient where it points back into
    [lo, hi] (or x is inside), so a pixel stuck at 0 or 1 can still be pulled back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return keep_into_range(grad, x, ctx.lo, ctx.hi), None, None


def clamp_with_grad(x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Clamp to [lo, hi] with the gradient rule of VQGAN-CLIP's ``ClampWithGrad``."""
    return _ClampWithGrad.apply(x, lo, hi)


class _StraightThrough(torch.autograd.Function):
    """Forward ``codes`` exactly, backward the gradient unchanged to ``z``."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return codes

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The nearest codebook vector at each position (ties to the lower index), no gradient:
    z (B, C, h, w), codebook (K, C) -> (B, C, h, w)."""
    b, c, h, w = z.shape
    with torch.no_grad():
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, c)  # (N, C)
        d = (flat**2).sum(1, keepdim=True) + (codebook**2).sum(1) - 2 * flat @ codebook.t()  # (N, K)
        return codebook[d.argmin(1)].view(b, h, w, c).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)


def quantise(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codebook vectors with a straight-through gradient: forward exactly
    ``nearest_codes(z, codebook)``, backward the identity to ``z``."""
    return _StraightThrough.apply(z, nearest_codes(z, codebook))


def keep_into_range(grad: torch.Tensor, x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """``clamp_with_grad``'s backward: ``grad`` where a descent step (-grad) does not push x
    further out of [lo, hi], else 0."""
    return grad * ((grad * (x - x.clamp(lo, hi))) >= 0)


def codebook_bounds(codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel min and max of the codebook (K, C) as (1, C, 1, 1): where z is kept."""
    return codebook.min(0).values.view(1, -1, 1, 1), codebook.max(0).values.view(1, -1, 1, 1)


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``2 * arcsin(|a - b| / 2)^2`` of unit vectors: a (..., N, E), b (..., P, E) -> (..., N, P)."""
    return (a[..., :, None, :] - b[..., None, :, :]).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def prompt_loss(embeddings: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                stops: torch.Tensor) -> torch.Tensor:
    """The weighted loss of each prompt for one image: (P,).

    embeddings (N, E): unit embeddings of its N cutouts; targets (P, E) unit prompt
    embeddings; weights (P,) signed; stops (P,) distances under which a prompt stops
    pulling (-inf: never). Per prompt: ``|w| * mean_n(sign(w) * d)``, the gradient cut
    where ``sign(w) * d`` is below the stop, as VQGAN-CLIP's ``Prompt`` does. Leading batch
    dims (one per image) broadcast: (J, N, E), (J, P, E), (J, P) -> (J, P).
    """
    d = spherical_distance(embeddings, targets) * torch.sign(weights)[..., None, :]  # (..., N, P)
    floored = torch.maximum(d, stops[..., None, :])
    d = d.detach() + (floored - floored.detach())  # value of d, gradient of max(d, stop)
    return weights.abs() * d.mean(-2)


def smoothness(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, per image: x (B, 3, H, W) -> (B,)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return dx + dy


def symmetry(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference to the left-right mirror image, per image: (B, 3, H, W) -> (B,)."""
    return (x - x.flip(-1)).pow(2).mean(dim=(1, 2, 3))


def palette_loss(x: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each pixel to the nearest palette colour, per image.

    x (B, 3, H, W) in [0, 1], colours (P, 3) or one set per image (B, P, 3) in [0, 1] -> (B,).
    Squared, so the pull fades smoothly as a pixel reaches its colour.
    """
    px = x.permute(0, 2, 3, 1)  # (B, H, W, 3)
    colours = colours[:, None, None] if colours.dim() == 3 else colours
    d = (px[..., None, :] - colours).pow(2).sum(-1)  # (B, H, W, P)
    return d.min(-1).values.mean(dim=(1, 2))


def saturation_loss(x: torch.Tensor) -> torch.Tensor:
    """Negative mean saturation (max - min channel), per image: lower loss is more colourful."""
    return -(x.amax(1) - x.amin(1)).mean(dim=(1, 2))
