"""Shared helpers for the runtime tests (classify, index, search, cli): a tiny seeded CLIP,
an encoder that counts its calls, and image files good and bad."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.encoder import Encoder, _TorchSession, ModelIdentity, weights_digest
from engine.models.clip import CLIP, CLIPConfig

# Small enough to run hundreds of images a second on a shared 2-core CPU; the vocabulary
# stays OpenAI's so the real tokenizer's ids index it, and the widths are multiples of 64
# so load_clip infers this config from a saved file by OpenAI's heads = width // 64 rule.
TINY = CLIPConfig(embed_dim=32, image_size=32, vision_patch_size=8, vision_width=64, vision_layers=1,
                  vision_heads=1, text_width=64, text_layers=1, text_heads=1)


def tiny_clip(seed: int = 0) -> CLIP:
    """A random-weight CLIP, the same weights for the same seed in every process."""
    torch.manual_seed(seed)
    return CLIP(TINY).eval()


class CountingSession(_TorchSession):
    """The real torch backend, counting how many images and texts it encodes."""

    def __init__(self, module):
        super().__init__(module)
        self.images = 0
        self.texts = 0

    def encode_image(self, pixels):
        self.images += len(pixels)
        return super().encode_image(pixels)

    def encode_text(self, ids):
        self.texts += len(ids)
        return super().encode_text(ids)


def tiny_encoder(seed: int = 0, default_template: str = "a photo of a {}.") -> Encoder:
    module = tiny_clip(seed)
    return Encoder(CountingSession(module), ModelIdentity(f"tiny-{seed}", weights_digest(module)),
                   image_size=TINY.image_size, mean=(0.48145466, 0.4578275, 0.40821073),
                   std=(0.26862954, 0.26130258, 0.27577711), default_template=default_template,
                   logit_scale=float(module.logit_scale.detach().exp()), context_length=77)


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """The tiny CLIP saved as a safetensors file, as a user would pass it to --model."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_clip(seed).state_dict().items()}, str(path))
    return path


def save_png(path: Path, seed: int, size: int = 40) -> Path:
    """A small random-colour PNG; different seeds give different images."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size + seed % 7, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def truncated_png(path: Path) -> Path:
    save_png(path, 999, 64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def huge_png(path: Path, side: int = 40000) -> Path:
    """A valid PNG header declaring side x side pixels (1.6 G for 40000), a few bytes on disk:
    the decompression-bomb case a decoder must refuse without allocating it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path
