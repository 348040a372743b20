"""The model registry: look up a named architecture (and its bundled weights) by name.

The records themselves are plain data in ``vqclip.zoo.configs``; this module indexes them
by their canonical names and aliases, and lets a user register their own.
"""
from __future__ import annotations

from vqclip.errors import UnknownModelError
from vqclip.zoo.configs import RECORDS
from vqclip.zoo.records import ModelRecord

__all__ = ["register", "get", "list_models", "canonical_name", "record_with_weights"]

_REGISTRY: dict[str, ModelRecord] = {}


def canonical_name(name: str) -> str:
    """'ViT-B/32' and 'vit-b-32' both become the registry key 'vit-b-32'."""
    return name.strip().replace("/", "-").replace("@", "-").lower()


def register(record: ModelRecord) -> ModelRecord:
    """Add ``record`` under its name and aliases; a name taken by another record is a ``ValueError``."""
    for key in (record.name, *record.aliases):
        k = canonical_name(key)
        if k in _REGISTRY and _REGISTRY[k] is not record:
            raise ValueError(f"model name {key!r} is registered twice")
        _REGISTRY[k] = record
    return record


def list_models(family: str | None = None) -> list[str]:
    """Canonical names of the registered models, optionally of one family, sorted."""
    names = {r.name for r in _REGISTRY.values() if family is None or r.family == family}
    return sorted(names)


def get(name: str, family: str | None = None) -> ModelRecord:
    """The record for ``name`` ("ViT-B/32", "ViT-B-32" and "vit-b-32" are the same).

    Raises ``UnknownModelError`` listing the known names when there is no such model, or
    when it is not of ``family``.
    """
    rec = _REGISTRY.get(canonical_name(name))
    if rec is None or (family is not None and rec.family != family):
        known = ", ".join(list_models(family))
        kind = f"{family} model" if family else "model"
        raise UnknownModelError(f"unknown {kind} {name!r}; available: {known}")
    return rec


def record_with_weights(sha256: str, family: str | None = None) -> ModelRecord | None:
    """The record whose bundled weights have this digest (its preprocessing and default
    prompt then apply to a module loaded from them), or None."""
    for rec in {id(r): r for r in _REGISTRY.values()}.values():
        if rec.weights is not None and rec.weights.sha256 == sha256 and (family is None or rec.family == family):
            return rec
    return None


for _record in RECORDS:
    register(_record)
