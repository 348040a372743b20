"""Model families in plain PyTorch, sized by config dataclasses."""
from engine.models.clip import CLIP, CLIPConfig
from engine.models.vqgan import VQGAN, VQGANConfig

__all__ = ["CLIP", "CLIPConfig", "VQGAN", "VQGANConfig"]
