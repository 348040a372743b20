"""Every setting of a generation run, checked once, and written into its outputs.

``GenerateSettings`` holds what VQGAN-CLIP's ``generate.py`` and pixray expose (size,
steps, optimiser and learning rate with drops, init, cutouts and augmentations, the
regularisers, story and zoom) with their defaults; ``to_dict`` / ``from_dict`` round-trip
it through the PNG metadata and the JSON sidecar, so a result says how it was made.

Example::

    s = GenerateSettings(steps=200, cutouts=CutoutSpec(cutn=16), seed=7)
    s.checked(factor=4)   # InvalidInputError for anything out of range
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from vqclip.errors import InvalidInputError
from vqclip.jobs.generate.cutouts import CutoutSpec

__all__ = ["GenerateSettings", "OPTIMISERS", "INITS", "INIT_MODES", "PRECISIONS", "parse_colour", "preset_for",
           "init_term"]

OPTIMISERS = ("adam", "adamw", "adamax", "adagrad", "rmsprop", "radam")
INITS = ("random", "plain", "noise", "gradient", "image")
INIT_MODES = ("decay", "init")  # regulariser: VQGAN-CLIP's decaying mse(z, 0), or mse to the initial z
PRECISIONS = ("fp32", "bf16", "fp16", "auto")

_NAMED_COLOURS = {  # the shapes world's colours and a few more, for palettes and plain inits
    "red": (215, 30, 30), "green": (30, 160, 50), "blue": (35, 70, 215), "yellow": (240, 215, 35),
    "purple": (135, 45, 175), "orange": (245, 135, 20), "white": (245, 245, 245), "black": (15, 15, 15),
    "grey": (128, 128, 128), "gray": (128, 128, 128),
}


def parse_colour(text: str) -> tuple[float, float, float]:
    """'#ff8800', 'ff8800', '255,136,0' or a name ('red') -> RGB in [0, 1]."""
    t = str(text).strip().lower()
    if t in _NAMED_COLOURS:
        return tuple(c / 255 for c in _NAMED_COLOURS[t])  # type: ignore[return-value]
    try:
        if "," in t:
            rgb = [int(v) for v in t.split(",")]
        else:
            h = t.lstrip("#")
            if len(h) != 6:
                raise ValueError
            rgb = [int(h[i:i + 2], 16) for i in (0, 2, 4)]
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError
    except ValueError:
        raise InvalidInputError(f"colour {text!r} does not parse; write '#rrggbb', 'r,g,b' (0-255) or a name "
                                f"({', '.join(sorted(_NAMED_COLOURS))})") from None
    return tuple(v / 255 for v in rgb)  # type: ignore[return-value]


@dataclass(frozen=True)
class GenerateSettings:
    """One run's settings. ``None`` where the model decides (size: the VQGAN's native)."""

    size: tuple[int, int] | None = None  # (width, height) in pixels, multiples of the VQGAN factor
    steps: int = 200  # optimisation steps
    seed: int | None = None  # None: drawn at random and recorded
    optimiser: str = "adam"  # one of OPTIMISERS
    lr: float = 0.1  # learning rate (VQGAN-CLIP's default step size)
    lr_drops: tuple[float, ...] = ()  # fractions of the run at which lr drops by 10x (pixray)
    auto_stop: int | None = None  # stop when the loss has not improved for this many steps
    init: str = "random"  # one of INITS: random codes, a plain colour, noise, a gradient, or an image
    init_image: str | None = None  # the image for init="image"
    init_colour: str = "grey"  # the colour for init="plain"
    init_weight: float = 0.0  # weight of the z regulariser (0: off)
    init_mode: str = "decay"  # one of INIT_MODES
    cutouts: CutoutSpec = field(default_factory=CutoutSpec)
    smoothness: float = 0.0  # total-variation weight (pixray's smoothness)
    symmetry: float = 0.0  # left-right symmetry weight
    saturation: float = 0.0  # weight of the "more saturated" term
    palette: tuple[str, ...] = ()  # colours the image should use
    palette_weight: float = 0.0  # weight of the palette term
    story_every: int = 0  # steps per prompt set of a story ("a^b"); 0: switch evenly over the run
    save_every: int = 50  # write the image every N steps (0: only at the end)
    zoom_every: int = 0  # zoom mode: every N steps zoom/shift/rotate, re-encode, reset the optimiser
    zoom_scale: float = 1.02
    zoom_shift: tuple[int, int] = (0, 0)  # pixels right, down
    zoom_rotate: float = 0.0  # degrees
    precision: str = "fp32"  # one of PRECISIONS; "auto": half precision on CUDA and AMX CPUs, else fp32
    cut_batches: int = 1  # cutouts in this many micro-batches, gradients accumulated (less memory)
    truncate: bool = False  # cut text prompts longer than CLIP's context instead of refusing them
    # A colour: a text prompt (positive weight) that names no background is split into
    # "text" and "text on a <colour> background", half the weight each, so a canvas
    # filled with the shape's colour no longer satisfies it (None: prompts as given).
    background_prompt: str | None = None

    def checked(self, factor: int) -> "GenerateSettings":
        """These settings, validated for a VQGAN of downsampling ``factor``; raises
        ``InvalidInputError`` with one line for the first problem found."""
        def whole(name: str, v: Any, low: int) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidInputError(f"{name} must be a whole number >= {low}, got {v!r}")

        whole("steps", self.steps, 1)
        whole("save_every", self.save_every, 0)
        whole("story_every", self.story_every, 0)
        whole("zoom_every", self.zoom_every, 0)
        whole("cut_batches", self.cut_batches, 1)
        if self.auto_stop is not None:
            whole("auto_stop", self.auto_stop, 1)
        if self.seed is not None:
            whole("seed", self.seed, 0)
        if self.size is not None:
            for side in self.size:
                whole("size", side, factor)
                if side % factor:
                    lo, hi = side - side % factor, side - side % factor + factor
                    raise InvalidInputError(f"size {self.size[0]}x{self.size[1]}: {side} is not a multiple of {factor} "
                                            f"(the VQGAN's factor); use {lo} or {hi}")
        for name in ("lr", "zoom_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InvalidInputError(f"{name} must be a number > 0, got {v!r}")
        for name in ("init_weight", "smoothness", "symmetry", "saturation", "palette_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InvalidInputError(f"{name} must be a number >= 0, got {v!r}")
        if any(not 0 < f < 1 for f in self.lr_drops):
            raise InvalidInputError(f"lr_drops are fractions of the run in (0, 1), got {self.lr_drops}")
        for name, value, allowed in (("optimiser", self.optimiser, OPTIMISERS), ("init", self.init, INITS),
                                     ("init_mode", self.init_mode, INIT_MODES),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise InvalidInputError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.init == "image" and not self.init_image:
            raise InvalidInputError("init='image' needs init_image, the path of the image to start from")
        parse_colour(self.init_colour)
        if self.background_prompt is not None:
            parse_colour(self.background_prompt)
        for c in self.palette:
            parse_colour(c)
        if self.palette_weight and not self.palette:
            raise InvalidInputError("palette_weight is set but no palette colours were given")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cutouts"] = self.cutouts.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GenerateSettings":
        """The settings recorded by ``to_dict`` (unknown keys are an ``InvalidInputError``)."""
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise InvalidInputError(f"unknown generation settings {sorted(extra)}; known: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("cutouts"), dict):
            cut = dict(d["cutouts"])
            for k in ("scale", "erasing"):
                if k in cut:
                    cut[k] = tuple(cut[k])
            d["cutouts"] = CutoutSpec(**cut)
        for k in ("size", "lr_drops", "palette", "zoom_shift"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def with_(self, **changes: Any) -> "GenerateSettings":
        return replace(self, **changes)


# Settings chosen for model pairs on a validation prompt list (benchmarks/bench_generate.py
# quality --list val; the table of choices is in benchmarks/RESULTS.md). Other pairs start
# from GenerateSettings(), VQGAN-CLIP's defaults.
PRESETS: dict[tuple[str, str], GenerateSettings] = {
    # The bundled shapes models: a plain grey start kept by an MSE to it, total variation, a
    # palette of the world's colours, full-turn rotations and zoom in the cutouts, a grey
    # background asked for, lr 0.2 dropping at 75% (how each was chosen: benchmarks/RESULTS.md).
    ("shapes-clip", "shapes-vqgan"): GenerateSettings(
        steps=200, lr=0.2, lr_drops=(0.75,), init="plain", init_colour="grey", init_weight=0.06, init_mode="init",
        smoothness=3.0, palette=("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey"),
        palette_weight=3.0, background_prompt="grey",
        cutouts=CutoutSpec(cutn=16, degrees=180.0, translate=0.15, scale=(0.8, 1.2), padding="border",
                           brightness=0.0, contrast=0.0)),
}


def preset_for(clip: str, vqgan: str) -> GenerateSettings:
    """The tuned starting settings for this (clip, vqgan) zoo pair, else the defaults."""
    return PRESETS.get((clip, vqgan), GenerateSettings())


def init_term(settings: GenerateSettings, step: int) -> tuple[float, bool]:
    """The init regulariser at ``step`` as ``coef * mean((z - ref)^2)``: (coef, whether ref is the
    initial z; else 0). "decay" is VQGAN-CLIP's ``mse(z, 0) * w / (2i + 1) / 2``; "init" keeps z
    near its start, ``mse(z, z_init) * w / 2``; weight 0: (0.0, False)."""
    w = settings.init_weight
    if not w:
        return 0.0, False
    if settings.init_mode == "decay":
        return w / (2 * step + 1) / 2, False
    return w / 2, True
