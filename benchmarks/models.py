"""The models a bench job runs: a checkpoint path or a zoo name with weights as given, a zoo
architecture without weights as random weights (speed does not depend on the values)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BenchModel", "resolve_model", "load_module"]


@dataclass(frozen=True)
class BenchModel:
    """``source``: what ``open_encoder`` / ``vqclip serve --model`` take; ``label`` names it in rows."""

    name: str
    label: str
    source: str


def resolve_model(name: str) -> BenchModel:
    """A checkpoint path, a zoo name with bundled weights, or a zoo CLIP architecture, whose
    random weights (seed 0) are written once under the cache so that its export is cached too.

    Raises ``UnknownModelError`` for a name that is neither a path nor in the zoo."""
    from vqclip.zoo import canonical_name, get

    path = Path(name).expanduser()
    if path.exists():
        return BenchModel(name, path.stem, str(path))
    record = get(name, family="clip")
    if record.weights is not None:
        return BenchModel(name, record.name, record.name)
    return BenchModel(name, f"{record.name} (random weights)", str(_random_checkpoint(canonical_name(name))))


def _random_checkpoint(name: str) -> Path:
    from vqclip._files import cache_root

    path = cache_root() / "bench" / f"{name}-random-seed0.safetensors"
    if path.is_file():
        return path
    import torch
    from safetensors.torch import save_file

    from vqclip.models.clip import CLIP
    from vqclip.zoo import get

    config = get(name, family="clip").config
    torch.manual_seed(0)
    model = CLIP(config).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"config": json.dumps(config.to_dict())})  # the architecture, stated
    os.replace(tmp, path)  # a killed run leaves a .part, never a half file under the real name
    return path


def load_module(model: BenchModel, device: str = "cpu"):
    """The CLIP module of ``model`` (for the torch peers that need the weights themselves)."""
    from vqclip.checkpoints import load_clip

    return load_clip(model.source, device=device).eval()
