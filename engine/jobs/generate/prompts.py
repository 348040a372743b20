"""Prompts as VQGAN-CLIP and pixray users write them, parsed into checked records.

``"a red star:1|blurry:-0.5:0.3"`` is two text prompts: ``text:weight:stop``, the weight
(default 1) signed (a negative weight pushes away), the stop (default none) a distance
below which the prompt stops pulling. ``^`` separates the prompt sets of a story, each used
for ``story_every`` steps. A colon inside a text is written ``\\:``. Image prompts
(``"photo.png:0.5"``) aim at an image's embedding; noise prompts are a seeded random
embedding with a weight. Every mistake is an ``InvalidInputError`` naming the prompt.

Example::

    sets = parse_prompts("a red star:1|blurry:-0.5^a blue circle")
    sets[0][1]   # Prompt(kind='text', value='blurry', weight=-0.5, stop=-inf)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from vqclip.errors import InvalidInputError

__all__ = ["Prompt", "parse_prompts", "parse_prompt", "image_prompt", "noise_prompt"]

_UNESCAPED_COLON = re.compile(r"(?<!\\):")


@dataclass(frozen=True)
class Prompt:
    """One target of the optimisation: a text, an image file, or a seeded noise embedding."""

    kind: str  # "text", "image" or "noise"
    value: str | int  # the text, the image path, or the noise seed
    weight: float = 1.0  # signed: negative weights push the image away from the target
    stop: float = -math.inf  # spherical distance below which this prompt no longer pulls

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "weight": self.weight,
                "stop": None if self.stop == -math.inf else self.stop}

    def __str__(self) -> str:
        stop = "" if self.stop == -math.inf else f":{self.stop:g}"
        return f"{self.kind}:{self.value}:{self.weight:g}{stop}"


def _number(field: str, what: str, prompt: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise InvalidInputError(f"prompt {prompt!r}: the {what} {field.strip()!r} is not a number; write a "
                                "colon inside the text as '\\:'") from None
    if math.isnan(value) or math.isinf(value):
        raise InvalidInputError(f"prompt {prompt!r}: the {what} must be a finite number, got {field.strip()!r}")
    return value


def _split(spec: str) -> tuple[str, float, float]:
    """``"text:weight:stop"`` -> (text, weight, stop); the last two fields optional."""
    parts = _UNESCAPED_COLON.split(spec)
    if len(parts) > 3:  # the text itself holds colons: everything before the last two fields
        parts = [":".join(parts[:-2]), *parts[-2:]]
    head = parts[0].replace("\\:", ":").strip()
    weight = _number(parts[1], "weight", spec) if len(parts) > 1 else 1.0
    stop = _number(parts[2], "stop", spec) if len(parts) > 2 else -math.inf
    return head, weight, stop


def parse_prompt(spec: str) -> Prompt:
    """One text prompt ``"text[:weight[:stop]]"``."""
    text, weight, stop = _split(spec)
    if not text:
        raise InvalidInputError(f"prompt {spec!r} has no text; give some words, e.g. 'a red star:1'")
    return Prompt("text", text, weight, stop)


def image_prompt(spec: str) -> Prompt:
    """``"path[:weight[:stop]]"``: aim at the embedding of the image at ``path`` (read later)."""
    path, weight, stop = _split(spec)
    if not path:
        raise InvalidInputError(f"image prompt {spec!r} names no file; give 'path/to/image.png[:weight]'")
    return Prompt("image", path, weight, stop)


def noise_prompt(seed: int, weight: float = 1.0) -> Prompt:
    """A random unit embedding drawn from ``seed``, pulled toward (or, negative, away) with ``weight``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"noise prompt seed must be a whole number >= 0, got {seed!r}")
    return Prompt("noise", seed, float(weight))


def parse_prompts(text: str | None, image_prompts: Iterable[str] = (),
                  noise_prompts: Sequence[tuple[int, float]] = ()) -> list[tuple[Prompt, ...]]:
    """The prompt sets of a run: ``text`` split on ``^`` (story) and ``|`` (prompts), each
    set followed by the image and noise prompts, which hold for the whole run.

    Raises ``InvalidInputError`` when there is no prompt at all, a set or prompt is empty,
    or a weight or stop is not a number.
    """
    shared = tuple(image_prompt(s) for s in image_prompts) + tuple(noise_prompt(s, w) for s, w in noise_prompts)
    sets = []
    if text is not None and text.strip():
        for i, part in enumerate(text.split("^")):
            prompts = [p for p in part.split("|")]
            if not all(p.strip() for p in prompts):
                raise InvalidInputError(f"prompt set {i + 1} of {text!r} has an empty prompt; remove the extra "
                                        "'|' or '^'")
            sets.append(tuple(parse_prompt(p) for p in prompts) + shared)
    elif shared:
        sets.append(shared)
    if not sets:
        raise InvalidInputError("no prompts were given; give a text prompt such as 'a red star', or an image or "
                                "noise prompt")
    return sets
