"""Judging generated shapes-world images with checkers that did not guide the generation.

- shape: the bundled shape judge (``vqclip.zoo.judge``), a CNN trained on the world's
  labels, never on CLIP and never used as a loss;
- colour: measured from the pixels with no model: a background fitted to the image border
  (plain, noisy or gradient), the pixels far from it taken as the shape, their median
  colour named by the nearest of the world's colours.

The guiding CLIP's own verdict is recorded beside them: a high CLIP rate with low judge
rates is the adversarial failure (patterns that fool CLIP, not shapes). The prompt lists
are fixed and disjoint: "val" for choosing settings, "test" measured once.

Example::

    report = judge_run(prompt_list("test"), grid="grid.png")
    report["rates"]   # {"colour": 0.9, "shape": 0.75, "both": 0.7, "clip": 0.95, "n": 40}
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vqclip.zoo import shapes

__all__ = ["measure_colour", "prompt_list", "Judges", "judge_run", "grid_png"]

_COLOUR_NAMES = list(shapes.COLOURS)
_PALETTE = np.array([shapes.COLOURS[c] for c in _COLOUR_NAMES], np.float32)  # (8, 3)
_LIST_SEED = {"val": 101, "test": 202}  # the lists' own randomness; they never share a seed


def _fit_background(img: np.ndarray, border: int = 3, rounds: int = 3) -> np.ndarray:
    """(H, W, 3) background: per channel a + b*x + c*y fitted to the border pixels, refitted
    without the border pixels far from the fit (a shape touching the edge)."""
    h, w, _ = img.shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    ring = np.zeros((h, w), bool)
    ring[:border], ring[-border:], ring[:, :border], ring[:, -border:] = True, True, True, True
    basis = np.stack([np.ones_like(xx), xx, yy], -1)  # (H, W, 3)
    a, b = basis[ring], img[ring]  # (R, 3), (R, 3)
    keep = np.ones(len(a), bool)
    for _ in range(rounds):
        coef, *_ = np.linalg.lstsq(a[keep], b[keep], rcond=None)  # (3, 3)
        res = np.linalg.norm(b - a @ coef, axis=1)
        keep = res <= max(3 * np.median(res[keep]), 30.0)
        if keep.sum() < 12:
            break
    return basis @ coef


def measure_colour(image: np.ndarray, min_distance: float = 45.0) -> str | None:
    """The colour name of the shape in an (H, W, 3) uint8 image, or None when nothing stands out.

    Shape pixels are those whose RGB distance from the fitted background exceeds
    max(min_distance, half its 98th percentile); their per-channel median is named by the
    nearest world colour.
    """
    img = image.astype(np.float32)
    dist = np.linalg.norm(img - _fit_background(img), axis=-1)  # (H, W)
    fg = dist > max(min_distance, 0.5 * np.percentile(dist, 98))
    if fg.sum() < 4:
        return None
    med = np.median(img[fg], axis=0)  # (3,)
    return _COLOUR_NAMES[int(np.linalg.norm(_PALETTE - med, axis=1).argmin())]


def prompt_list(name: str) -> list[dict[str, Any]]:
    """The fixed "val" or "test" list: each of the 40 (colour, shape) classes once, with a
    caption template, size word and background drawn by the list's own generator, and a
    generation seed. Items: {"text", "colour", "shape", "seed"}."""
    if name not in _LIST_SEED:
        raise ValueError(f"prompt list {name!r}; expected one of {sorted(_LIST_SEED)}")
    rng = np.random.default_rng(_LIST_SEED[name])
    templates = [t for t in shapes.TEMPLATES if "{c}" in t and "{s}" in t]  # both judgeable
    out = []
    for k, (colour, shape) in enumerate(shapes.all_labels()):
        fmt = templates[rng.integers(len(templates))]
        size = ["small", "large", None][rng.integers(3)]
        if size is None:
            fmt = fmt.replace("{z} ", "")
        backs = [b for b, rgb in shapes.BACKGROUNDS.items()
                 if np.linalg.norm(np.subtract(rgb, shapes.COLOURS[colour])) >= 90]
        back = backs[rng.integers(len(backs))]
        text = shapes.caption_text(fmt, colour=colour, shape=shape, size=size, background=back)
        out.append({"text": text, "colour": colour, "shape": shape, "seed": _LIST_SEED[name] * 1000 + k})
    return out


class Judges:
    """The shape judge, the colour measure and the guiding CLIP's own top-1 label."""

    def __init__(self, clip: Any):
        from vqclip.tokenizer import tokenize
        from vqclip.zoo.judge import load_judge

        self.judge = load_judge()
        self.clip = clip
        self.labels = shapes.all_labels()
        ids = torch.from_numpy(tokenize([shapes.label(c, s) for c, s in self.labels],
                                        context_length=clip.config.context_length))
        with torch.no_grad():
            self.label_emb = F.normalize(clip.encode_text(ids).float(), dim=-1)  # (40, E)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, items: list[dict], mean, std) -> list[dict]:
        """Verdicts for (N, S, S, 3) uint8 images (area-resized to 64 for the judges)."""
        if images.shape[1] != 64:
            t = torch.from_numpy(images).permute(0, 3, 1, 2).float()
            images = F.adaptive_avg_pool2d(t, 64).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        shape_pred = self.judge.predict(images)
        size = self.clip.config.image_size
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True) if size != 64 else x
        emb = F.normalize(self.clip.encode_image((x - mean.cpu()) / std.cpu()).float(), dim=-1)
        clip_pred = [self.labels[i] for i in (emb @ self.label_emb.T).argmax(1).tolist()]
        out = []
        for im, it, sp, cp in zip(images, items, shape_pred, clip_pred):
            col = measure_colour(im)
            out.append({**it, "judge_colour": col, "judge_shape": sp, "clip": list(cp),
                        "colour_ok": col == it["colour"], "shape_ok": sp == it["shape"],
                        "clip_ok": tuple(cp) == (it["colour"], it["shape"])})
        return out


def judge_run(items: list[dict], settings: Any = None, *, generator: Any = None, batch: int = 8,
              grid: str | Path | None = None) -> dict:
    """Generate every item (``batch`` jobs stepped as one) and judge the results.

    Returns {"rates": {colour, shape, both, clip, n}, "verdicts": [...], "seconds", "settings"}
    and writes a grid PNG of all results with their verdicts when ``grid`` is given.
    """
    from vqclip.jobs.generate.generator import Generator

    gen = generator or Generator()
    settings = settings or gen.default_settings()
    t0 = time.perf_counter()
    images = []
    for i in range(0, len(items), batch):
        jobs = [gen.add_job(it["text"], settings.with_(seed=it["seed"])) for it in items[i:i + batch]]
        list(gen.run())
        images += [j.result for j in jobs]
    images = np.stack(images)
    verdicts = Judges(gen.clip)(images, items, gen.mean, gen.std)
    rate = lambda key: float(np.mean([v[key] for v in verdicts]))  # noqa: E731
    rates = {"colour": rate("colour_ok"), "shape": rate("shape_ok"),
             "both": float(np.mean([v["colour_ok"] and v["shape_ok"] for v in verdicts])),
             "clip": rate("clip_ok"), "n": len(items)}
    if grid is not None:
        grid_png(images, verdicts, Path(grid))
    return {"rates": rates, "verdicts": verdicts, "seconds": time.perf_counter() - t0,
            "settings": settings.to_dict()}


def grid_png(images: np.ndarray, verdicts: list[dict], path: Path, cols: int = 8, scale: int = 2) -> Path:
    """Tiles of the results (upscaled ``scale``x) with the prompt's colour and shape and what
    the judges read ("C"/"c": colour right/wrong, "S"/"s": shape right/wrong)."""
    from PIL import Image, ImageDraw

    from vqclip.jobs.generate.outputs import save_png

    s = images.shape[1] * scale
    tile_h = s + 30
    rows = -(-len(images) // cols)
    canvas = Image.new("RGB", (cols * s, rows * tile_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (im, v) in enumerate(zip(images, verdicts)):
        x, y = (k % cols) * s, (k // cols) * tile_h
        canvas.paste(Image.fromarray(im).resize((s, s), Image.NEAREST), (x, y))
        mark = ("C" if v["colour_ok"] else "c") + ("S" if v["shape_ok"] else "s")
        draw.text((x + 2, y + s + 1), f"{v['colour']} {v['shape']}"[:21], fill=(0, 0, 0))
        ok = v["colour_ok"] and v["shape_ok"]
        draw.text((x + 2, y + s + 14), f"{mark} {v['judge_colour']} {v['judge_shape']}"[:21],
                  fill=(0, 128, 0) if ok else (200, 0, 0))
    return save_png(path, np.asarray(canvas), {"what": "generation verdicts", "n": len(images)})
