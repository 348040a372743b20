"""The model registry: named architectures, and where their weights come from.

Architecture (a config dataclass) and provenance (``WeightsRecord``) are separate
records: the same ViT-B/32 architecture can be filled from OpenAI's file, an OpenCLIP
file or a Hugging Face export.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import UnknownModelError

__all__ = ["ModelRecord", "WeightsRecord", "register", "get", "list_models", "canonical_name"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class WeightsRecord:
    """Where a model's weights come from and how its inputs were prepared in training."""

    path: str  # file name inside engine/zoo/weights (bundled) or an absolute path
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


_REGISTRY: dict[str, ModelRecord] = {}


def canonical_name(name: str) -> str:
    """'ViT-B/32' and 'vit-b-32' both become the registry key 'vit-b-32'."""
    return name.strip().replace("/", "-").replace("@", "-").lower()


def register(record: ModelRecord) -> ModelRecord:
    for key in (record.name, *record.aliases):
        k = canonical_name(key)
        if k in _REGISTRY and _REGISTRY[k] is not record:
            raise ValueError(f"model name {key!r} is registered twice")
        _REGISTRY[k] = record
    return record


def list_models(family: str | None = None) -> list[str]:
    """Canonical names of the registered models, optionally of one family, sorted."""
    _load_builtin()
    names = {r.name for r in _REGISTRY.values() if family is None or r.family == family}
    return sorted(names)


def get(name: str, family: str | None = None) -> ModelRecord:
    """The record for ``name`` ("ViT-B/32", "ViT-B-32" and "vit-b-32" are the same).

    Raises ``UnknownModelError`` listing the known names when there is no such model, or
    when it is not of ``family``.
    """
    _load_builtin()
    rec = _REGISTRY.get(canonical_name(name))
    if rec is None or (family is not None and rec.family != family):
        known = ", ".join(list_models(family))
        kind = f"{family} model" if family else "model"
        raise UnknownModelError(f"unknown {kind} {name!r}; available: {known}")
    return rec


def _load_builtin() -> None:
    # Importing the config module registers the built-in records (once).
    from engine.zoo import configs  # noqa: F401
