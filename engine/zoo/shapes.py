"""The shapes world: seedable images of one coloured shape on a background, with captions.

The bundled models (``shapes-clip``, ``shapes-vqgan``) are trained and evaluated on this
world. A scene is a few numbers (shape, colour, size, position, rotation, background);
``render`` turns it into pixels with supersampled, anti-aliased edges, at any size.

Determinism: scene ``i`` of a split is drawn from ``numpy.random.default_rng((split_id, i))``,
so every split is a separate random stream; the training split ("train") never produces
a scene of the held-out splits ("val", "test"), whatever the indices.

Example::

    from vqclip.zoo import shapes
    scenes = shapes.sample_scenes("test", 0, 4)            # 4 held-out scenes
    pixels = shapes.render_batch(scenes, size=64)          # (4, 64, 64, 3) uint8
    shapes.caption(scenes[0], template=0).text             # 'a red circle'
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPES", "COLOURS", "BACKGROUNDS", "SPLITS", "TEMPLATES", "Scene", "Caption",
    "sample_scene", "sample_scenes", "render", "render_batch", "caption", "caption_text", "random_caption",
    "label", "all_labels",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

# Shape colours, RGB 0..255. Far enough apart that jitter and anti-aliasing keep them named.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "green": (30, 160, 50),
    "blue": (35, 70, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 45, 175),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

# Background colours: the shape colours plus grey; a scene never uses its shape's colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {**COLOURS, "grey": (128, 128, 128)}

BACKGROUND_STYLES: tuple[str, ...] = ("plain", "noisy", "gradient")

# Split name -> first element of the seed tuple; streams of different splits never meet.
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

SMALL_BELOW = 0.22  # circumradius / image size under which a shape is "small"
LARGE_ABOVE = 0.33  # ... and over which it is "large"
_RADIUS_RANGE = (0.14, 0.42)
_MIN_CONTRAST = 90.0  # least RGB distance between the shape and any background shade
_COLOUR_JITTER = 12  # +- per channel on the shape colour, so a colour is a region, not a point

# Caption templates. Fields: {c} colour, {s} shape, {z} size word, {b} background colour.
# A template that leaves a field out says nothing about it (label-aware training uses that).
TEMPLATES: tuple[str, ...] = (
    "a {c} {s}",
    "{c} {s}",
    "a photo of a {c} {s}",
    "an image of a {c} {s}",
    "a drawing of a {c} {s}",
    "a {z} {c} {s}",
    "a photo of a {z} {c} {s}",
    "a {c} {s} on a {b} background",
    "a {z} {c} {s} on a {b} background",
    "a {s} that is {c}",
    "a {c} shape",
    "a {s}",
    "a photo of a {s}",
    "something {c}",
)


@dataclass(frozen=True)
class Scene:
    """One image of the world, as numbers; ``render`` draws it.

    Lengths are fractions of the image side, so a scene renders at any size.
    """

    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    rgb: tuple[int, int, int]  # the jittered shape colour actually drawn
    radius: float  # circumradius / image side
    cx: float  # centre x / image side
    cy: float  # centre y / image side
    rotation: float  # degrees, counter-clockwise
    background: str  # one of BACKGROUNDS, never == colour
    style: str  # one of BACKGROUND_STYLES
    shade: tuple[int, int, int]  # second colour of a gradient (a lighter/darker background)
    angle: float  # gradient direction, degrees
    noise: float  # std of the background noise in 0..255 units (0 unless "noisy")
    seed: int  # seeds the noise pattern

    @property
    def size_word(self) -> str | None:
        """'small', 'large' or None (medium sizes have no word)."""
        if self.radius < SMALL_BELOW:
            return "small"
        if self.radius > LARGE_ABOVE:
            return "large"
        return None


@dataclass(frozen=True)
class Caption:
    """A caption and what it asserts; ``None`` fields are not stated by the text."""

    text: str
    colour: str | None
    shape: str | None
    size: str | None
    background: str | None

    def matches(self, scene: Scene) -> bool:
        """True when every attribute the caption states holds for ``scene``."""
        return ((self.colour is None or self.colour == scene.colour)
                and (self.shape is None or self.shape == scene.shape)
                and (self.size is None or self.size == scene.size_word)
                and (self.background is None or self.background == scene.background))


def _rng(split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    return np.random.default_rng((SPLITS[split], index))


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def sample_scene(split: str, index: int) -> Scene:
    """Scene ``index`` of ``split`` ("train", "val" or "test"); the same inputs give the same scene."""
    rng = _rng(split, index)
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    rgb = tuple(int(np.clip(v + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1), 0, 255))
                for v in COLOURS[colour])
    radius = float(rng.uniform(*_RADIUS_RANGE))
    # The whole shape stays inside the frame (a little margin for anti-aliasing).
    lo, hi = radius + 0.02, 1.0 - radius - 0.02
    cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
    rotation = float(rng.uniform(0.0, 360.0))
    style = BACKGROUND_STYLES[rng.integers(len(BACKGROUND_STYLES))]
    angle = float(rng.uniform(0.0, 360.0))
    noise = float(rng.uniform(8.0, 22.0)) if style == "noisy" else 0.0
    seed = int(rng.integers(2**31))
    # Background: another named colour, a shade of it for gradients; redraw until the
    # shape stands out from every part of it (a white star on a white-ish gradient is no test).
    names = [b for b in BACKGROUNDS if b != colour]
    while True:
        background = names[rng.integers(len(names))]
        base = BACKGROUNDS[background]
        if style == "gradient":
            toward = 255.0 if rng.random() < 0.5 else 0.0
            t = float(rng.uniform(0.25, 0.45))
            shade = tuple(int(round(v + (toward - v) * t)) for v in base)
        else:
            shade = base
        if min(_distance(rgb, base), _distance(rgb, shade)) >= _MIN_CONTRAST:
            break
    return Scene(shape, colour, rgb, radius, cx, cy, rotation, background, style, shade, angle, noise, seed)


def sample_scenes(split: str, start: int, count: int) -> list[Scene]:
    """Scenes ``start .. start+count-1`` of ``split``."""
    return [sample_scene(split, i) for i in range(start, start + count)]


def _vertices(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    """Polygon of ``shape`` with circumradius ``r`` (pixels) around (cx, cy), y pointing down."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = 1.0 if k % 2 == 0 else 0.45  # fat inner radius: points survive at 64 px
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        h = 0.34  # half-width of an arm, as a fraction of the arm length (circumradius ~ 1)
        a = 1.0 / math.sqrt(1 + h * h)  # arm length so the outer corners sit on the unit circle
        hw = h * a
        pts = [(hw, -a), (hw, -hw), (a, -hw), (a, hw), (hw, hw), (hw, a),
               (-hw, a), (-hw, hw), (-a, hw), (-a, -hw), (-hw, -hw), (-hw, -a)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    t = math.radians(rotation)
    c, s = math.cos(t), math.sin(t)
    return [(cx + r * (x * c + y * s), cy + r * (-x * s + y * c)) for x, y in pts]


def _background(scene: Scene, size: int) -> np.ndarray:
    """(size, size, 3) float32 background in 0..255."""
    base = np.asarray(BACKGROUNDS[scene.background], np.float32)
    if scene.style == "gradient":
        t = math.radians(scene.angle)
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        proj = np.cos(t) * coords[None, :] + np.sin(t) * coords[:, None]  # (H, W), in about -0.7..0.7
        w = np.clip(proj / 1.42 + 0.5, 0.0, 1.0)[..., None]  # (H, W, 1), 0..1 across the image
        return base * (1 - w) + np.asarray(scene.shade, np.float32) * w
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    if scene.style == "noisy":
        img = img + np.random.default_rng(scene.seed).normal(0.0, scene.noise, (size, size, 3)).astype(np.float32)
    return img


def render(scene: Scene, size: int = 64, supersample: int = 4) -> np.ndarray:
    """Draw ``scene`` as a (size, size, 3) uint8 RGB array.

    The shape is drawn at ``size * supersample`` and box-filtered down, so edges are
    anti-aliased the same way at any size; background noise is per output pixel.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    big = size * supersample
    bg = np.clip(_background(scene, size), 0, 255).astype(np.uint8)  # (size, size, 3)
    # Nearest upsampling then box downsampling returns the background pixels unchanged.
    canvas = Image.fromarray(np.repeat(np.repeat(bg, supersample, 0), supersample, 1))
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = scene.cx * big, scene.cy * big, scene.radius * big
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=scene.rgb)
    else:
        draw.polygon(_vertices(scene.shape, cx, cy, r, scene.rotation), fill=scene.rgb)
    if supersample > 1:
        canvas = canvas.resize((size, size), Image.BOX)
    return np.array(canvas, dtype=np.uint8)  # a writable copy (PIL's buffer view is read-only)


def render_batch(scenes: list[Scene], size: int = 64, supersample: int = 4) -> np.ndarray:
    """(N, size, size, 3) uint8 images of ``scenes``; (0, size, size, 3) for an empty list."""
    out = np.empty((len(scenes), size, size, 3), np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = render(scene, size, supersample)
    return out


def caption(scene: Scene, template: int) -> Caption:
    """The caption of ``scene`` from ``TEMPLATES[template]``.

    A template with a size word falls back to the same template without it for a
    medium-sized shape (which has no size word).
    """
    fmt = TEMPLATES[template]
    size = scene.size_word
    if "{z}" in fmt and size is None:
        fmt = fmt.replace("{z} ", "")
    text = caption_text(fmt, colour=scene.colour, shape=scene.shape, size=size, background=scene.background)
    return Caption(
        text=text,
        colour=scene.colour if "{c}" in fmt else None,
        shape=scene.shape if "{s}" in fmt else None,
        size=size if "{z}" in fmt else None,
        background=scene.background if "{b}" in fmt else None,
    )


def caption_text(fmt: str, *, colour: str, shape: str, size: str | None = None, background: str = "") -> str:
    """A template (``TEMPLATES``' fields {c} {s} {z} {b}) filled in, with English articles:
    ``caption_text("a {c} {s}", colour="orange", shape="star")`` -> "an orange star"."""
    return _articles(fmt.format(c=colour, s=shape, z=size, b=background))


def _articles(text: str) -> str:
    """'a orange' -> 'an orange': captions read as English."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def random_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """A caption from a template chosen by ``rng``; half the time the plain "a {c} {s}" forms."""
    if rng.random() < 0.5:
        return caption(scene, int(rng.integers(5)))
    return caption(scene, int(rng.integers(len(TEMPLATES))))


def label(colour: str, shape: str) -> str:
    """The zero-shot label (and caption) of a colour + shape class: 'a red circle'."""
    return _articles(f"a {colour} {shape}")


def all_labels() -> list[tuple[str, str]]:
    """Every (colour, shape) class, colour-major: 8 colours x 5 shapes = 40."""
    return [(c, s) for c in COLOURS for s in SHAPES]
