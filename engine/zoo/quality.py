"""Measured quality of the shapes models on held-out scenes of the shapes world.

Used by the training recipe (progress), ``benchmarks/bench_shapes_quality.py`` (the
figures in the model card) and the bundled-model tests (looser floors).

Example::

    acc = clip_zero_shot(model, shapes.sample_scenes("test", 0, 500))
    acc["colour+shape"]  # fraction right, top-1 over the 40 "a {colour} {shape}" labels
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from engine.zoo import shapes
from engine.zoo.registry import OPENAI_MEAN, OPENAI_STD

log = logging.getLogger(__name__)

__all__ = ["tokenize", "to_pixels", "clip_zero_shot", "search_precision_at_k"]


@lru_cache(maxsize=1)
def _encoder():
    # The project tokenizer when present; clip-anytorch's reference otherwise (same ids).
    try:
        from engine.tokenizer import tokenize as project_tokenize
    except ImportError:
        project_tokenize = None
    if project_tokenize is not None:
        return project_tokenize
    import importlib.util
    from pathlib import Path

    # Load clip/simple_tokenizer.py by path: clip/__init__ imports pkg_resources, which
    # recent setuptools no longer ships.
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("no tokenizer: engine.tokenizer is missing and clip-anytorch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "simple_tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    bpe = mod.SimpleTokenizer()
    sot, eot = bpe.encoder["<|startoftext|>"], bpe.encoder["<|endoftext|>"]

    def fallback(texts: list[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [sot, *bpe.encode(t), eot]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"text {t!r} is longer than {context_length} tokens")
                ids = ids[:context_length]
                ids[-1] = eot
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    return fallback


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """(N, context_length) int64 token ids of ``texts`` with OpenAI's BPE."""
    return _encoder()(list(texts), context_length=context_length)


def to_pixels(images: np.ndarray, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, scaled to [0, 1] and normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
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


def clip_zero_shot(model, scenes: list[shapes.Scene], images: np.ndarray | None = None) -> dict[str, float]:
    """Top-1 zero-shot accuracy over the 40 "a {colour} {shape}" labels.

    Colour and shape accuracies read the colour / shape of the same top-1 label, so one
    prediction is scored three ways. Returns fractions in [0, 1] for keys "colour",
    "shape" and "colour+shape".
    """
    model.eval()
    if images is None:
        images = shapes.render_batch(scenes)
    classes = shapes.all_labels()
    txt = _text_embeddings(model, [shapes.label(c, s) for c, s in classes])  # (40, E)
    img = _image_embeddings(model, images)  # (N, E)
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
    model.eval()
    if images is None:
        images = shapes.render_batch(scenes)
    classes = shapes.all_labels()
    txt = _text_embeddings(model, [shapes.label(c, s) for c, s in classes])  # (40, E)
    img = _image_embeddings(model, images)  # (N, E)
    top = (txt @ img.T).topk(min(k, len(scenes)), dim=1).indices.tolist()  # (40, k)
    precisions = []
    for (c, s), ids in zip(classes, top):
        present = sum(sc.colour == c and sc.shape == s for sc in scenes)
        if present == 0:
            continue
        hits = sum(scenes[i].colour == c and scenes[i].shape == s for i in ids)
        precisions.append(hits / min(k, present))
    return float(np.mean(precisions))
