"""The fixtures every test folder shares: one tiny CLIP, one tiny VQGAN, encoders on them,
and image files good and bad.

One tiny CLIP for the whole suite: small enough that export, four ORT sessions and
hundreds of images a second fit a shared 2-core CPU; two layers and two heads per tower
(so attention and the causal mask matter); OpenAI's vocabulary (the real tokenizer's ids
index it, and the end-of-text id is OpenAI's 49407). Saved to a file (``tiny.checkpoint``)
with its config in the safetensors metadata, as vqclip's recipe saves models, so the
file loads as the same model.
"""
from __future__ import annotations

import os

# As the CLI does: idle OpenMP threads sleep, so a busy neighbour on a small shared machine
# does not starve the suite (benchmarks/RESULTS.md, "OpenMP waiting"). Set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vqclip.models.clip import CLIP, CLIPConfig  # noqa: E402
from vqclip.models.vqgan import VQGAN, VQGANConfig  # noqa: E402

TINY_CLIP = CLIPConfig(embed_dim=32, image_size=32, vision_patch_size=8, vision_width=64, vision_layers=2,
                       vision_heads=2, context_length=77, text_width=64, text_layers=2, text_heads=2)
# Two levels: factor 2; attention at the 16-px level, as the f16 models have it at theirs.
TINY_VQGAN = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32,
                         z_channels=32, embed_dim=16, n_embed=64)


def make_clip(seed: int = 0, config: CLIPConfig = TINY_CLIP) -> CLIP:
    """A random-weight CLIP, the same weights for the same seed in every process."""
    torch.manual_seed(seed)
    return CLIP(config).eval()


def make_vqgan(seed: int = 0, with_encoder: bool = True) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(TINY_VQGAN, with_encoder=with_encoder).eval()


class CountingBackend:
    """The real torch backend, counting how many images and texts it encodes."""

    def __init__(self, backend):
        self._backend = backend
        self.images = 0
        self.texts = 0

    def describe(self):
        return self._backend.describe()

    def encode_image(self, pixels):
        self.images += len(pixels)
        return self._backend.encode_image(pixels)

    def encode_text(self, ids):
        self.texts += len(ids)
        return self._backend.encode_text(ids)


def make_encoder(seed: int = 0, default_template: str | None = None):
    """``open_encoder`` on the tiny CLIP of ``seed`` (torch backend), its calls counted."""
    from vqclip.encoder import ModelIdentity, open_encoder

    enc = open_encoder(make_clip(seed))
    enc.identity = ModelIdentity(f"tiny-{seed}", enc.identity.digest)  # a readable name in messages
    enc.session = CountingBackend(enc.session)
    if default_template is not None:
        enc.default_template = default_template
    return enc


def save_checkpoint(path: Path, seed: int = 0) -> Path:
    """The tiny CLIP saved as a safetensors file, as a user would pass it to --model."""
    import json

    from safetensors.torch import save_file

    model = make_clip(seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"config": json.dumps(model.config.to_dict())})
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


@pytest.fixture(scope="session")
def tiny():
    """Builders of the tiny models: ``tiny.clip(seed)``, ``tiny.vqgan(seed, with_encoder)``,
    ``tiny.encoder(seed, default_template)``, ``tiny.checkpoint(path, seed)``, and the
    configs ``tiny.CLIP`` / ``tiny.VQGAN``."""
    return SimpleNamespace(clip=make_clip, vqgan=make_vqgan, encoder=make_encoder, checkpoint=save_checkpoint,
                           CLIP=TINY_CLIP, VQGAN=TINY_VQGAN)


@pytest.fixture(scope="session")
def images():
    """Image files for tests: ``images.png(path, seed, size)``, ``images.truncated(path)``,
    ``images.huge(path, side)``."""
    return SimpleNamespace(png=save_png, truncated=truncated_png, huge=huge_png)


@pytest.fixture(scope="session")
def bundled_clip():
    """The bundled shapes-clip, loaded once; a test that needs it skips, saying why, where its
    weights are missing or damaged."""
    from vqclip.checkpoints import load_clip
    from vqclip.errors import CheckpointError

    try:
        return load_clip("shapes-clip")
    except CheckpointError as e:
        pytest.skip(f"bundled shapes-clip weights missing: {e}")


@pytest.fixture(scope="session")
def tiny_clip() -> CLIP:
    """The tiny CLIP of seed 0 (shared: tests must not change it)."""
    return make_clip(0)


@pytest.fixture(scope="session")
def tiny_vqgan() -> VQGAN:
    """The tiny VQGAN of seed 0 (shared: tests must not change it)."""
    return make_vqgan(0)


@pytest.fixture(scope="session")
def tiny_clip_export(tmp_path_factory, tiny_clip):
    """The tiny CLIP exported once at fp32, fp16 and int8 (the folder; read it, never write)."""
    from vqclip.export import export_model

    out = tmp_path_factory.mktemp("tiny-clip-export") / "tiny-clip"
    export_model(tiny_clip, out, ["fp32", "fp16", "int8"], name="tiny-clip")
    return out


@pytest.fixture(autouse=True, scope="session")
def _quiet_exporter():
    # The exporter and ORT's quantiser log every step at INFO/WARNING; keep failures readable.
    for name in ("torch.onnx", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)


# The bundled pair's generation step exported once: the preset's padding and palette, cutn 2.
BUNDLED_STEP = {"size": (64, 64), "cutn": 2, "prompts": 8, "palette": 9, "padding": "border"}


@pytest.fixture(scope="session")
def bundled_step_graph(tmp_path_factory, bundled_clip):
    """``vqclip export shapes-clip --generation --cutn 2`` made once (the folder; read it, never write)."""
    from vqclip.export.generation import StepShape, export_generation
    from vqclip.jobs.generate import Generator

    gen = Generator()
    out = tmp_path_factory.mktemp("generation-step") / "shapes"
    export_generation(gen.clip, gen.vqgan, out, StepShape(**BUNDLED_STEP), mean=tuple(gen.mean.flatten().tolist()),
                      std=tuple(gen.std.flatten().tolist()))
    return out
