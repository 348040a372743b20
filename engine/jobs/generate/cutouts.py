"""Cutouts and their augmentations, batched: what CLIP sees of each image at each step.

VQGAN-CLIP's default ("pooled") takes the whole image pooled to CLIP's size as
``(avg + max) / 2`` and augments ``cutn`` copies of it with a chain of kornia passes; the
original notebook ("crops") takes ``cutn`` random square crops of side ~ rand^cut_pow.
Here the geometric augmentations of a cutout (rotation, translation, shear, scale,
perspective) are one projective transform, so all cutouts of all jobs are warped by a
single ``grid_sample`` call; the pooled image is computed once per image, not once per
cutout; colour jitter, erasing and noise are tensor ops over the whole batch.

Every random parameter is drawn from the job's own ``torch.Generator`` on the CPU, in a
fixed order, so a job's cutouts are the same whether it runs alone or in a batch.

Example::

    spec = CutoutSpec(cutn=8)
    params = draw(spec, torch.Generator().manual_seed(0), image_size=(64, 64), cut_size=64)
    batch = apply([params], image, cut_size=64)   # image (1, 3, 64, 64) -> (8, 3, 64, 64)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from vqclip.errors import InvalidInputError

__all__ = ["CutoutSpec", "CutoutParams", "draw", "apply", "augment", "pooled", "sampling_grid", "keep_mask",
           "additive_noise", "CUT_METHODS", "PADDINGS"]

CUT_METHODS = ("pooled", "crops")
PADDINGS = ("zeros", "border", "reflection")


@dataclass(frozen=True)
class CutoutSpec:
    """How cutouts are taken and augmented (defaults: VQGAN-CLIP's ``-aug Af Pe Ji Er``)."""

    cutn: int = 32  # cutouts per image per step
    method: str = "pooled"  # "pooled": whole image pooled to CLIP's size; "crops": random squares
    cut_pow: float = 1.0  # "crops": side ~ min + rand^cut_pow * (max - min); > 1 favours small crops
    p: float = 0.7  # probability of each augmentation per cutout
    degrees: float = 15.0  # affine: rotation range, +-degrees (0: off)
    translate: float = 0.1  # affine: shift range, fraction of the side (0: off)
    shear: float = 5.0  # affine: shear range, +-degrees (0: off)
    scale: tuple[float, float] = (1.0, 1.0)  # affine: zoom range (1, 1: off)
    perspective: float = 0.7  # corner displacement, fraction of the half side (0: off)
    padding: str = "zeros"  # what the warp sees outside the image: "zeros" (kornia's), "border" or "reflection"
    brightness: float = 0.1  # colour jitter ranges, as kornia's ColorJitter (0: off)
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1  # in turns
    erasing: tuple[float, float] = (0.1, 0.4)  # erased area range, fraction of the cutout ((0, 0): off)
    noise: float = 0.1  # per-cutout Gaussian noise, std ~ U(0, noise) (0: off)

    def __post_init__(self) -> None:
        if isinstance(self.cutn, bool) or not isinstance(self.cutn, int) or self.cutn < 1:
            raise InvalidInputError(f"cutn must be a whole number >= 1, got {self.cutn!r}")
        if self.method not in CUT_METHODS:
            raise InvalidInputError(f"cut method {self.method!r} is not one of {', '.join(CUT_METHODS)}")
        if not 0 <= self.p <= 1:
            raise InvalidInputError(f"augmentation probability must be in [0, 1], got {self.p}")
        if self.cut_pow <= 0:
            raise InvalidInputError(f"cut_pow must be > 0, got {self.cut_pow}")
        if self.padding not in PADDINGS:
            raise InvalidInputError(f"padding {self.padding!r} is not one of {', '.join(PADDINGS)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CutoutParams:
    """The random draws of one image's cutouts at one step (cutn = n)."""

    crops: torch.Tensor  # (n, 3): crop side and top-left (y, x) in pixels ("crops"), else empty
    warp: torch.Tensor  # (n, 3, 3): output normalised coords -> source normalised coords
    jitter: torch.Tensor  # (n, 4): brightness, contrast, saturation factors and hue shift (turns)
    erase: torch.Tensor  # (n, 4): box (y0, x0, y1, x1) in [0, 1], or all zero for none
    noise: torch.Tensor  # (n,): noise std
    field: torch.Tensor | None  # (n, 3, S, S) standard normal draws the noise scales; None: no noise
    padding: str = "zeros"


def _affine(spec: CutoutSpec, gen: torch.Generator, n: int) -> torch.Tensor:
    """(n, 3, 3) random affine maps in normalised coords, identity where not applied."""
    u = torch.rand(n, 6, generator=gen, dtype=torch.float64)
    on = torch.rand(n, generator=gen, dtype=torch.float64) < spec.p  # (n,)
    angle = (u[:, 0] * 2 - 1) * math.radians(spec.degrees)
    tx, ty = (u[:, 1] * 2 - 1) * spec.translate * 2, (u[:, 2] * 2 - 1) * spec.translate * 2  # [-1, 1] spans 2
    shx, shy = (u[:, 3] * 2 - 1) * math.radians(spec.shear), (u[:, 4] * 2 - 1) * math.radians(spec.shear)
    s = spec.scale[0] + u[:, 5] * (spec.scale[1] - spec.scale[0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    m = torch.zeros(n, 3, 3, dtype=torch.float64)
    # rotation * shear * scale, then translation: maps output coords to source coords
    m[:, 0, 0] = (cos - sin * torch.tan(shy)) / s
    m[:, 0, 1] = (cos * torch.tan(shx) - sin) / s
    m[:, 1, 0] = (sin + cos * torch.tan(shy)) / s
    m[:, 1, 1] = (sin * torch.tan(shx) + cos) / s
    m[:, 0, 2], m[:, 1, 2], m[:, 2, 2] = tx, ty, 1.0
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    return torch.where(on[:, None, None], m, eye)


def _perspective(spec: CutoutSpec, gen: torch.Generator, n: int) -> torch.Tensor:
    """(n, 3, 3) random homographies moving each corner inward by up to ``perspective``."""
    d = torch.rand(n, 4, 2, generator=gen, dtype=torch.float64) * spec.perspective  # (n, 4, 2)
    on = torch.rand(n, generator=gen, dtype=torch.float64) < spec.p
    src = torch.tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64)  # corners
    dst = src - src.sign() * d  # each corner pulled toward the centre
    # Solve H (8 unknowns) with H @ src_i ~ dst_i for the four corners, per cutout.
    a = torch.zeros(n, 8, 8, dtype=torch.float64)
    b = torch.zeros(n, 8, dtype=torch.float64)
    for i in range(4):
        x, y = src[i]
        u, v = dst[:, i, 0], dst[:, i, 1]
        a[:, 2 * i, 0], a[:, 2 * i, 1], a[:, 2 * i, 2] = x, y, 1
        a[:, 2 * i, 6], a[:, 2 * i, 7] = -u * x, -u * y
        a[:, 2 * i + 1, 3], a[:, 2 * i + 1, 4], a[:, 2 * i + 1, 5] = x, y, 1
        a[:, 2 * i + 1, 6], a[:, 2 * i + 1, 7] = -v * x, -v * y
        b[:, 2 * i], b[:, 2 * i + 1] = u, v
    h = torch.cat([torch.linalg.solve(a, b), torch.ones(n, 1, dtype=torch.float64)], 1).view(n, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    return torch.where(on[:, None, None], h, eye)


def draw(spec: CutoutSpec, gen: torch.Generator, image_size: tuple[int, int], cut_size: int) -> CutoutParams:
    """The random parameters of one image's ``spec.cutn`` cutouts, from ``gen`` (CPU)."""
    n = spec.cutn
    h, w = image_size
    crops = torch.zeros(0, 3, dtype=torch.int64)
    if spec.method == "crops":
        side_max, side_min = min(h, w), min(h, w, cut_size)
        sides = (torch.rand(n, generator=gen, dtype=torch.float64) ** spec.cut_pow * (side_max - side_min)
                 + side_min).long()
        ys = (torch.rand(n, generator=gen, dtype=torch.float64) * (h - sides + 1)).long()
        xs = (torch.rand(n, generator=gen, dtype=torch.float64) * (w - sides + 1)).long()
        crops = torch.stack([sides, ys, xs], 1)
    warp = torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
    if spec.degrees or spec.translate or spec.shear or spec.scale != (1.0, 1.0):
        warp = _affine(spec, gen, n)
    if spec.perspective:
        warp = warp @ _perspective(spec, gen, n)
    jitter = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(n, 1)
    ranges = torch.tensor([spec.brightness, spec.contrast, spec.saturation, spec.hue])
    if ranges.any():
        u = torch.rand(n, 4, generator=gen) * 2 - 1  # (n, 4) in [-1, 1)
        on = (torch.rand(n, generator=gen) < spec.p)[:, None]
        jitter = torch.where(on, jitter + ranges * u, jitter)
    erase = torch.zeros(n, 4)
    if spec.erasing[1] > 0:
        u = torch.rand(n, 4, generator=gen)
        on = torch.rand(n, generator=gen) < spec.p
        area = spec.erasing[0] + u[:, 0] * (spec.erasing[1] - spec.erasing[0])
        ratio = torch.exp(math.log(0.3) + u[:, 1] * (math.log(1 / 0.3) - math.log(0.3)))  # kornia's (0.3, 3.3)
        eh, ew = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
        y0, x0 = u[:, 2] * (1 - eh), u[:, 3] * (1 - ew)
        erase = torch.where(on[:, None], torch.stack([y0, x0, y0 + eh, x0 + ew], 1), erase)
    noise, field = torch.zeros(n), None
    if spec.noise:
        noise = torch.rand(n, generator=gen) * spec.noise
        field = torch.randn(n, 3, cut_size, cut_size, generator=gen)
    return CutoutParams(crops, warp.float(), jitter, erase, noise, field, spec.padding)


def _sources(images: torch.Tensor, params: list[CutoutParams], cut_size: int) -> torch.Tensor:
    """What each cutout is warped from: (sum n, 3, S, S), in job order. An image whose
    params hold crops gives its crops; otherwise its pooled image, once per cutout."""
    s = cut_size
    pool = pooled(images, s)  # (J, 3, S, S)
    out = []
    for j, p in enumerate(params):
        if len(p.crops):
            for side, y, x in p.crops.tolist():  # as the original notebook resizes its crops
                out.append(F.adaptive_avg_pool2d(images[j:j + 1, :, y:y + side, x:x + side], s))
        else:
            out.append(pool[j:j + 1].expand(len(p.noise), -1, -1, -1))
    return torch.cat(out)


# RGB <-> YIQ (NTSC), for the hue rotation; float64, cast to the images' dtype where used.
_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                       dtype=torch.float64)
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def _jitter(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation (multiplicative) and hue (YIQ rotation) per cutout."""
    b, c, s, hue = (f[:, i].view(-1, 1, 1, 1) for i in range(4))
    x = x * b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    luma = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - luma) * s + luma
    # Hue: rotate the chroma plane of YIQ by hue * 2 pi.
    yiq = F.conv2d(x, _TO_YIQ.to(x)[:, :, None, None])  # a 1x1 convolution: one kernel, also in ONNX
    angle = hue.view(-1) * 2 * math.pi
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], i * cos - q * sin, i * sin + q * cos], 1)
    return F.conv2d(yiq, _FROM_YIQ.to(x)[:, :, None, None]).clamp(0, 1)  # kornia clamps too


def pooled(images: torch.Tensor, cut_size: int) -> torch.Tensor:
    """VQGAN-CLIP's pooled cutout source: (avg + max) / 2 to CLIP's size, (J, 3, S, S)."""
    return (F.adaptive_avg_pool2d(images, cut_size) + F.adaptive_max_pool2d(images, cut_size)) / 2


def sampling_grid(params: list[CutoutParams], cut_size: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Where each cutout pixel samples its source, for ``grid_sample``: (sum n, S, S, 2)."""
    warp = torch.cat([p.warp for p in params]).to(device, dtype)  # (N, 3, 3)
    lin = torch.linspace(-1 + 1 / cut_size, 1 - 1 / cut_size, cut_size, device=device, dtype=dtype)  # pixel centres
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    base = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(1, -1, 3)  # (1, S*S, 3)
    mapped = base @ warp.transpose(1, 2)  # (N, S*S, 3)
    return (mapped[..., :2] / mapped[..., 2:]).view(len(warp), cut_size, cut_size, 2)


def keep_mask(params: list[CutoutParams], cut_size: int, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """1 outside each cutout's erased box, 0 inside: (sum n, 1, S, S)."""
    erase = torch.cat([p.erase for p in params]).to(device, dtype)  # (N, 4)
    pos = (torch.arange(cut_size, device=device, dtype=dtype) + 0.5) / cut_size
    inside_y = (pos[None, :] >= erase[:, 0:1]) & (pos[None, :] < erase[:, 2:3])  # (N, S)
    inside_x = (pos[None, :] >= erase[:, 1:2]) & (pos[None, :] < erase[:, 3:4])
    return (~(inside_y[:, None, :, None] & inside_x[:, None, None, :])).to(dtype)


def additive_noise(params: list[CutoutParams], cut_size: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Each cutout's noise, its std times its standard normal field: (sum n, 3, S, S); None: no noise."""
    if all(p.field is None for p in params):
        return None
    fields = [p.field if p.field is not None else torch.zeros(len(p.noise), 3, cut_size, cut_size) for p in params]
    std = torch.cat([p.noise for p in params]).to(device, dtype).view(-1, 1, 1, 1)
    return std * torch.cat(fields).to(device, dtype)


def augment(src: torch.Tensor, grid: torch.Tensor, jitter: torch.Tensor, keep: torch.Tensor,
            noise: torch.Tensor | None, padding: str) -> torch.Tensor:
    """The differentiable part of the cutouts: warp, colour jitter, erase, noise; (N, 3, S, S)."""
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    out = _jitter(out, jitter) * keep
    return out if noise is None else out + noise


def apply(params: list[CutoutParams], images: torch.Tensor, cut_size: int) -> torch.Tensor:
    """All cutouts of all jobs: images (J, 3, H, W) in [0, 1], one ``CutoutParams`` per image
    (jobs may differ in cutn, method and augmentations) -> (sum n, 3, S, S), job by job."""
    src = _sources(images, params, cut_size)  # (N, 3, S, S)
    dev, dt = src.device, src.dtype
    grid = sampling_grid(params, cut_size, dt, dev)
    jitter = torch.cat([p.jitter for p in params]).to(dev, dt)
    keep, noise = keep_mask(params, cut_size, dt, dev), additive_noise(params, cut_size, dt, dev)
    paddings = [p.padding for p in params]
    if len(set(paddings)) == 1:
        return augment(src, grid, jitter, keep, noise, paddings[0])
    out, start = [], 0  # jobs that pad differently: one warp per job
    for p in params:
        part = slice(start, start + len(p.noise))
        out.append(augment(src[part], grid[part], jitter[part], keep[part], None if noise is None else noise[part],
                           p.padding))
        start = part.stop
    return torch.cat(out)
