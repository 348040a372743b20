"""An independent shape classifier for the shapes world: the judge of VQGAN reconstructions.

A small CNN trained on the world's shape labels (not on CLIP, not on reconstructions),
so "the judge names the right shape on a reconstruction" measures whether the VQGAN
kept the shape's edges. Trained by ``python -m engine.zoo.train judge``; its weights ship
as ``engine/zoo/weights/shape-judge.safetensors`` (about 0.1 MB) for the benchmark and tests.

Example::

    judge = load_judge()
    judge.predict(images)  # (N, 64, 64, 3) uint8 -> list of shape names
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.zoo import shapes

__all__ = ["ShapeJudge", "load_judge", "JUDGE_FILE"]

JUDGE_FILE = Path(__file__).parent / "weights" / "shape-judge.safetensors"


class ShapeJudge(nn.Module):
    """Four stride-2 conv blocks, global max pool, a linear layer over ``shapes.SHAPES``.

    Input (B, 3, H, W) float in [-1, 1], H and W >= 16; output (B, len(SHAPES)) logits.
    Global max pooling makes it position-free, as the world is.
    """

    def __init__(self, width: int = 48):
        super().__init__()
        chans = [3, width // 2, width, width * 2, width * 2]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], len(shapes.SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, C, H/16, W/16)
        return self.head(h.amax(dim=(2, 3)))  # (B, n_shapes)

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, batch: int = 256) -> list[str]:
        """Shape names for (N, H, W, 3) uint8 images or (N, 3, H, W) float tensors in [-1, 1]."""
        self.eval()
        if isinstance(images, np.ndarray):
            from engine.zoo.quality import vqgan_input

            images = vqgan_input(images)
        out: list[str] = []
        for i in range(0, len(images), batch):
            idx = self(images[i: i + batch].float()).argmax(1).tolist()
            out += [shapes.SHAPES[j] for j in idx]
        return out


def load_judge(path: str | Path = JUDGE_FILE) -> ShapeJudge:
    """The trained judge from ``path`` (the bundled file by default), in eval mode."""
    from engine.checkpoints import read_tensors

    model = ShapeJudge()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in read_tensors(path).items()})
    return model.eval()
