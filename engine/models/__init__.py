"""Model families in plain PyTorch, sized by config dataclasses."""
from vqclip.models.clip import CLIP, CLIPConfig
from vqclip.models.vqgan import VQGAN, VQGANConfig

__all__ = ["CLIP", "CLIPConfig", "VQGAN", "VQGANConfig"]
