"""The peer for the generation benchmark: one optimisation step as nerdyrodent's VQGAN-CLIP
``generate.py`` runs it by default, rebuilt on vqclip's model classes (the same arithmetic as
taming-transformers' and OpenAI's modules, so the models cost the same).

What it does per step, as generate.py does: nearest-code quantisation with a replace-grad
straight-through, decode, ``(x+1)/2`` clamped with its gradient rule, the "latest" cutouts
(the whole image pooled to CLIP's size as ``(avg+max)/2``, recomputed ``cutn`` times, then
kornia's RandomAffine(15, 0.1, shear 5), RandomPerspective(0.7), ColorJitter(0.1 x 4) and
RandomErasing, each p=0.7, then per-cutout noise U(0, 0.1)), CLIP normalisation, the image
encoder in fp32 eager, the spherical-distance prompt loss, Adam, z clamped to the
codebook's range; on display steps (every ``save_every``) a second decode for the PNG.
Benchmark-only: needs ``kornia`` (pip install kornia).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _ReplaceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_forward, x_backward):
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad_in):
        return None, grad_in.sum_to_size(ctx.shape)


class _ClampWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad_in):
        (x,) = ctx.saved_tensors
        return grad_in * (grad_in * (x - x.clamp(ctx.lo, ctx.hi)) >= 0), None, None


class BaselineStep:
    """One VQGAN-CLIP job (batch 1), stepped as generate.py does; ``step()`` times one step."""

    def __init__(self, clip, vqgan, text_embedding: torch.Tensor, size: tuple[int, int], cutn: int,
                 save_every: int = 50, seed: int = 0, mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711)):
        import kornia.augmentation as K

        torch.manual_seed(seed)
        self.clip, self.vqgan = clip, vqgan
        self.cut_size, self.cutn, self.save_every = clip.config.image_size, cutn, save_every
        self.embed = F.normalize(text_embedding.float(), dim=-1)[None]  # (1, 1, E)
        dev = text_embedding.device
        self.mean = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=dev).view(1, 3, 1, 1)
        self.augs = torch.nn.Sequential(
            K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros", keepdim=True),
            K.RandomPerspective(distortion_scale=0.7, p=0.7),
            K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
            K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True, p=0.7))
        codebook = vqgan.quantize.embedding.weight.detach()
        self.codebook = codebook
        f = vqgan.config.factor
        toks_x, toks_y = size[0] // f, size[1] // f
        codes = torch.randint(codebook.shape[0], [toks_y * toks_x]).to(dev)
        one_hot = F.one_hot(codes, codebook.shape[0]).float()
        self.z = (one_hot @ codebook).view(1, toks_y, toks_x, -1).permute(0, 3, 1, 2).requires_grad_(True)
        self.z_min = codebook.min(dim=0).values[None, :, None, None]
        self.z_max = codebook.max(dim=0).values[None, :, None, None]
        self.opt = torch.optim.Adam([self.z], lr=0.1)
        self.i = 0

    def _synth(self, z: torch.Tensor) -> torch.Tensor:
        x = z.movedim(1, 3)
        d = x.pow(2).sum(dim=-1, keepdim=True) + self.codebook.pow(2).sum(dim=1) - 2 * x @ self.codebook.T
        x_q = F.one_hot(d.argmin(-1), self.codebook.shape[0]).to(d.dtype) @ self.codebook
        z_q = _ReplaceGrad.apply(x_q, x).movedim(3, 1)
        return _ClampWithGrad.apply(self.vqgan.decode(z_q).add(1).div(2), 0, 1)

    def _cutouts(self, img: torch.Tensor) -> torch.Tensor:
        cutouts = []
        for _ in range(self.cutn):  # generate.py pools the same image once per cutout
            cutouts.append((F.adaptive_avg_pool2d(img, self.cut_size) + F.adaptive_max_pool2d(img, self.cut_size)) / 2)
        batch = self.augs(torch.cat(cutouts, dim=0))
        facs = batch.new_empty([self.cutn, 1, 1, 1]).uniform_(0, 0.1)
        return batch + facs * torch.randn_like(batch)

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        out = self._synth(self.z)
        emb = self.clip.encode_image((self._cutouts(out) - self.mean) / self.std).float()
        dists = F.normalize(emb[:, None], dim=2).sub(self.embed).norm(dim=2).div(2).arcsin().pow(2).mul(2)
        loss = dists.mean()
        if self.save_every and self.i % self.save_every == 0:
            with torch.inference_mode():
                self._synth(self.z)  # generate.py's checkin: a second decode for the saved PNG
        loss.backward()
        self.opt.step()
        with torch.inference_mode():
            self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))
        self.i += 1
        return float(loss.detach())
