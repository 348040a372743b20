"""Facts shared across layers, defined once: the bundled defaults and OpenAI's pixel statistics."""
from __future__ import annotations

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "DEFAULT_CLIP", "DEFAULT_VQGAN"]

# OpenAI CLIP's per-channel RGB mean and std on the [0, 1] scale (clip/clip.py's Normalize).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_CLIP = "shapes-clip"  # the bundled CLIP: every job uses it when no model is named
DEFAULT_VQGAN = "shapes-vqgan"  # the bundled VQGAN, generation's default decoder
