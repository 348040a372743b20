"""Model families in plain PyTorch, sized by config dataclasses."""
from engine.models.clip import CLIP, CLIPConfig

__all__ = ["CLIP", "CLIPConfig"]
