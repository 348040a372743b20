"""An independent shape classifier for the shapes world: the judge that no generator optimises.

A small CNN trained on the world's shape labels (not on CLIP, not on reconstructions),
so "the judge names the right shape" measures whether an image really shows the shape:
whether the VQGAN kept its edges, or whether a generated image is a shape rather than a
pattern that fools the guiding CLIP. Trained by ``python -m vqclip.recipe.train judge``;
its weights ship as ``vqclip/zoo/weights/shape-judge.safetensors`` (about 0.1 MB).

Example::

    judge = load_judge()
    judge.predict(images)  # (N, 64, 64, 3) uint8 -> list of shape names
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vqclip.zoo import shapes

__all__ = ["ShapeJudge", "load_judge", "to_signed"]


def to_signed(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1], the VQGAN's and the judge's range."""
    # np.array copies: inputs may be read-only (memory-mapped caches, PIL buffers).
    x = torch.as_tensor(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


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
            images = to_signed(images)
        out: list[str] = []
        for i in range(0, len(images), batch):
            idx = self(images[i: i + batch].float()).argmax(1).tolist()
            out += [shapes.SHAPES[j] for j in idx]
        return out


def load_judge(path: str | Path | None = None) -> ShapeJudge:
    """The trained judge from ``path`` (the bundled, checksum-checked file by default), in eval mode."""
    from safetensors.torch import load_file

    from vqclip.zoo.bundled import JUDGE, weights_file

    model = ShapeJudge()
    tensors = load_file(str(path if path is not None else weights_file(JUDGE)))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return model.eval()
