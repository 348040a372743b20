"""The two records of the zoo: a named architecture, and where its weights come from.

Architecture (a config dataclass) and provenance (``WeightsRecord``) are separate
records: the same ViT-B/32 architecture can be filled from OpenAI's file, an OpenCLIP
file or a Hugging Face export.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vqclip.constants import OPENAI_MEAN, OPENAI_STD

__all__ = ["ModelRecord", "WeightsRecord"]


@dataclass(frozen=True)
class WeightsRecord:
    """Where a model's weights come from and how its inputs were prepared in training."""

    path: str  # file name inside vqclip/zoo/weights (bundled) or an absolute path
    sha256: str | None = None  # checked on load when given
    mean: tuple[float, float, float] = OPENAI_MEAN  # per-channel pixel mean, RGB in [0, 1]
    std: tuple[float, float, float] = OPENAI_STD  # per-channel pixel std
    interpolation: str = "bicubic"  # resize filter used in training


@dataclass(frozen=True)
class ModelRecord:
    """One named model: its family, architecture config and (optionally) bundled weights."""

    name: str  # canonical name, "/" spelled "-" (ViT-B-32)
    family: str  # "clip" or "vqgan"
    config: Any  # CLIPConfig or VQGANConfig
    weights: WeightsRecord | None = None  # None: architecture only, weights from a user path
    default_template: str = "a photo of a {}."  # zero-shot prompt for a bare label
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
