"""Measured quality of the shapes models on held-out scenes of the shapes world.

Used by the training recipe (progress), ``benchmarks/bench_shapes_quality.py`` (the
figures in the model card) and the bundled-model tests (looser floors).

Example::

    acc = clip_zero_shot(model, shapes.sample_scenes("test", 0, 500))
    acc["colour+shape"]  # fraction right, top-1 over the 40 "a {colour} {shape}" labels
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from vqclip.constants import OPENAI_MEAN, OPENAI_STD
from vqclip.zoo import shapes

log = logging.getLogger(__name__)

__all__ = ["tokenize", "to_pixels", "clip_zero_shot", "search_precision_at_k", "vqgan_reconstruction", "psnr"]


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """(N, context_length) int64 token ids of ``texts`` with OpenAI's BPE."""
    from vqclip.tokenizer import tokenize as bpe_tokenize

    return torch.from_numpy(bpe_tokenize(list(texts), context_length=context_length))


def to_pixels(images: np.ndarray, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, scaled to [0, 1] and normalised."""
    # np.array copies: inputs may be read-only (memory-mapped caches, PIL buffers).
    x = torch.as_tensor(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def _image_embeddings(model, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        pix = to_pixels(images[i: i + batch]).to(model.dtype)
        out.append(F.normalize(model.encode_image(pix).float(), dim=-1))
    return torch.cat(out)  # (N, E)


@torch.no_grad()
def _text_embeddings(model, texts: list[str]) -> torch.Tensor:
    ids = tokenize(texts, model.context_length)
    return F.normalize(model.encode_text(ids).float(), dim=-1)  # (N, E)


def _class_and_image_embeddings(model, scenes: list[shapes.Scene], images: np.ndarray | None):
    """The 40 (colour, shape) classes, their "a {colour} {shape}" embeddings (40, E) and the
    scenes' image embeddings (N, E), rendering the scenes when ``images`` is None."""
    model.eval()
    if images is None:
        images = shapes.render_batch(scenes)
    classes = shapes.all_labels()
    return classes, _text_embeddings(model, [shapes.label(c, s) for c, s in classes]), _image_embeddings(model, images)


def clip_zero_shot(model, scenes: list[shapes.Scene], images: np.ndarray | None = None) -> dict[str, float]:
    """Top-1 zero-shot accuracy over the 40 "a {colour} {shape}" labels.

    Colour and shape accuracies read the colour / shape of the same top-1 label, so one
    prediction is scored three ways. Returns fractions in [0, 1] for keys "colour",
    "shape" and "colour+shape".
    """
    classes, txt, img = _class_and_image_embeddings(model, scenes, images)  # 40 labels; (40, E), (N, E)
    pred = (img @ txt.T).argmax(dim=1).tolist()
    colour = np.mean([classes[p][0] == sc.colour for p, sc in zip(pred, scenes)])
    shape = np.mean([classes[p][1] == sc.shape for p, sc in zip(pred, scenes)])
    both = np.mean([classes[p] == (sc.colour, sc.shape) for p, sc in zip(pred, scenes)])
    return {"colour": float(colour), "shape": float(shape), "colour+shape": float(both)}


def search_precision_at_k(model, scenes: list[shapes.Scene], images: np.ndarray | None = None,
                          k: int = 10) -> float:
    """Mean precision@k of text-to-image search for every "a {colour} {shape}" query.

    Each of the 40 queries ranks the whole gallery by cosine similarity; a hit is an
    image of that colour and shape. Queries whose class has fewer than ``k`` images in
    the gallery are scored against the number there is (the best reachable is 1.0).
    """
    classes, txt, img = _class_and_image_embeddings(model, scenes, images)  # 40 labels; (40, E), (N, E)
    top = (txt @ img.T).topk(min(k, len(scenes)), dim=1).indices.tolist()  # (40, k)
    precisions = []
    for (c, s), ids in zip(classes, top):
        present = sum(sc.colour == c and sc.shape == s for sc in scenes)
        if present == 0:
            continue
        hits = sum(scenes[i].colour == c and scenes[i].shape == s for i in ids)
        precisions.append(hits / min(k, present))
    return float(np.mean(precisions))


def psnr(reference: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (N, 3, H, W) tensors in [-1, 1], measured on 8-bit pixel values.

    The output is clamped and rounded to 0..255 first, as a saved PNG would be.
    """
    ref = ((reference.float() + 1) * 127.5).round().clamp(0, 255)
    out = ((output.float() + 1) * 127.5).round().clamp(0, 255)
    mse = ((ref - out) ** 2).flatten(1).mean(1).clamp_min(1e-10)  # (N,)
    return 10 * torch.log10(255.0**2 / mse)


@torch.no_grad()
def vqgan_reconstruct(model, x: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstructions (N, 3, H, W) and code indices (N, h, w) of ``x`` (N, 3, H, W) in [-1, 1]."""
    model.eval()
    recs, codes = [], []
    for i in range(0, len(x), batch):
        z_q, idx = model.encode(x[i: i + batch].to(next(model.parameters()).dtype))
        recs.append(model.decode(z_q).float())
        codes.append(idx)
    return torch.cat(recs), torch.cat(codes)


def vqgan_reconstruction(model, x: torch.Tensor) -> dict[str, float]:
    """Mean per-image PSNR (dB) and codebook usage (fraction of entries used) on ``x``."""
    rec, codes = vqgan_reconstruct(model, x)
    used = torch.unique(codes).numel() / model.config.n_embed
    return {"psnr": round(float(psnr(x, rec).mean()), 3), "usage": round(used, 4)}
