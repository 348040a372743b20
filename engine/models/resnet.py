"""CLIP's ResNet image tower (RN50, RN101, RN50x4, RN50x16, RN50x64), in plain PyTorch.

OpenAI's variant of the ResNet: a three-convolution stem, strided convolutions replaced
by an average pool after them (anti-aliasing), and a single-query attention pool in place
of the global average pool. Parameter names follow OpenAI's ``clip/model.py`` key for key
(``visual.layer1.0.downsample.0.weight``, ``visual.attnpool.q_proj.weight``), so the
``visual.`` part of an OpenAI RN checkpoint loads with ``strict=True`` and nothing else.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ModifiedResNet", "Bottleneck", "AttentionPool2d"]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block, four times wider at the output than inside.

    Every convolution has stride 1; when the block downsamples, a ``stride`` x ``stride``
    average pool after the 3x3 (and before the shortcut's 1x1) does it instead, which
    blurs before subsampling rather than skipping pixels.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        # No parameters, so free to share with the shortcut below.
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu3 = nn.ReLU()
        # OpenAI's shortcut is Sequential(pool "-1", conv "0", bn "1"): the pool holds no
        # weights, so (conv, bn) after our shared pool gives the same keys and the same sum.
        self.downsample: nn.Sequential | None = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))  # (B, P, H, W)
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))  # (B, 4P, H/s, W/s)
        shortcut = x if self.downsample is None else self.downsample(self.avgpool(x))
        return self.relu3(y + shortcut)


class AttentionPool2d(nn.Module):
    """Pools a feature map to one vector by attention from its mean.

    The mean of the grid is prepended as an extra token, positions are added to all
    tokens, and that first token alone queries all of them (itself included): one query
    row, written as plain matmuls and a softmax so it exports to plain ONNX MatMul/Softmax.
    """

    def __init__(self, grid: int, embed_dim: int, heads: int, output_dim: int | None = None):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[0], x.shape[1]  # (B, C, g, g)
        d = C // self.heads
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, T, C), T = 1 + g*g
        x = x + self.positional_embedding.to(x.dtype)
        # As nn.MultiheadAttention: the projected query (bias included) is scaled by d ** -0.5.
        q = self.q_proj(x[:, :1]) * d**-0.5  # (B, 1, C)
        q = q.view(B, 1, self.heads, d).transpose(1, 2)  # (B, H, 1, d)
        k = self.k_proj(x).view(B, -1, self.heads, d).transpose(1, 2)  # (B, H, T, d)
        v = self.v_proj(x).view(B, -1, self.heads, d).transpose(1, 2)  # (B, H, T, d)
        w = torch.softmax(q @ k.transpose(-2, -1), dim=-1)  # (B, H, 1, T)
        y = (w @ v).reshape(B, C)  # (B, H, 1, d) -> (B, C), heads concatenated
        return self.c_proj(y)  # (B, output_dim)


class ModifiedResNet(nn.Module):
    """Image tower: pixels (B, 3, S, S), normalised -> embedding (B, output_dim), unnormalised.

    ``width`` is the stem's output channels; stage ``i`` has ``width * 2**i`` channels
    inside its blocks and four times that out, so the pooled feature has ``width * 32``
    channels. OpenAI builds it with ``heads = width * 32 // 64`` and ``S`` a multiple of
    32 (the feature grid is ``S // 32`` per side, which the positional embedding fixes).

    Example::

        rn50 = ModifiedResNet(layers=(3, 4, 6, 3), output_dim=1024, heads=32).eval()
        emb = rn50(torch.randn(2, 3, 224, 224))  # (2, 1024)
    """

    def __init__(self, layers: tuple[int, ...], output_dim: int, heads: int, input_resolution: int = 224,
                 width: int = 64):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give the block count of 4 stages, not {tuple(layers)}")
        if input_resolution % 32:
            raise ValueError(f"input_resolution {input_resolution} is not a multiple of 32")
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        # Stem: one stride-2 3x3 and two stride-1 3x3s, then a 2x2 average pool (S -> S/4).
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)  # (B, 3, S, S)
        x = self.relu1(self.bn1(self.conv1(x)))  # (B, W/2, S/2, S/2)
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))  # (B, W, S/2, S/2)
        x = self.avgpool(x)  # (B, W, S/4, S/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32W, S/32, S/32)
        return self.attnpool(x)  # (B, output_dim)
