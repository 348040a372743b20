"""Training-only perceptual term for shapes-vqgan: distances in shapes-clip's conv stem.

Taming's VQGAN adds LPIPS (VGG features trained on ImageNet) to its pixel losses. No
ImageNet network can be downloaded here, so the features come from the bundled
shapes-clip image tower's convolutional stem, trained contrastively on the shapes
world's captions: the ReLU outputs of its first three stride-2 stages (32x32, 16x16
and 8x8 maps for a 64x64 image). The distance is LPIPS' form without the learned
per-channel weights: each stage's activations are unit-normalised over channels at
every position, and the squared differences are averaged over positions and summed
over stages. The stem is fully convolutional, so it serves the 32x32 training crops as
well as whole images. The shape judge that scores reconstructions
(``vqclip.zoo.judge``) is a separate network trained on labels, never used here.

Example::

    perceptual = StemPerceptual.from_zoo()         # frozen, eval mode
    loss = perceptual(rec, x)                       # (B, 3, H, W) in [-1, 1] -> scalar
"""
from __future__ import annotations

import torch
from torch import nn

from vqclip.constants import OPENAI_MEAN, OPENAI_STD

__all__ = ["StemPerceptual"]


class StemPerceptual(nn.Module):
    """Sum over the stem's ReLU stages of mean squared differences of unit-normalised features."""

    def __init__(self, stem: nn.Sequential):
        super().__init__()
        self.taps = [i for i, m in enumerate(stem) if isinstance(m, nn.ReLU)][:-1]  # all but the 4x4 one
        self.stem = stem[: self.taps[-1] + 1].eval().requires_grad_(False)  # nothing after the last tap
        mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @classmethod
    def from_zoo(cls, name: str = "shapes-clip") -> "StemPerceptual":
        """The stem of a bundled CLIP with a conv stem (float32, frozen)."""
        from vqclip.checkpoints import load_clip

        clip = load_clip(name).float()
        if not hasattr(clip.visual, "stem"):
            raise ValueError(f"{name!r} has a patch stem; the perceptual term needs a conv stem")
        return cls(clip.visual.stem.layers)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x + 1) / 2 - self.mean) / self.std  # [-1, 1] -> CLIP's normalised pixels
        out = []
        for i, layer in enumerate(self.stem):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-6))
        return out

    def train(self, mode: bool = True) -> "StemPerceptual":
        return super().train(False)  # BatchNorm stays on its running statistics

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self.features(target)
        return sum(((a - b) ** 2).sum(1).mean() for a, b in zip(self.features(output), ref))
