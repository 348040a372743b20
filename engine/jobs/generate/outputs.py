"""What a generation run leaves on disk: PNGs that carry their settings, a JSON sidecar,
an optional video, and resume checkpoints. Every file is written atomically (temp file +
rename), so an interrupt never leaves a torn image.

The settings live in the PNG's text chunk ``vqclip`` as JSON (prompts, seed, every
setting, the models' identities, the step), which is what peers' users asked for: a
result that says how to make it again. ``read_png_settings`` reads them back.
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vqclip._files import atomic_write_bytes, prepare_folder, read_regular
from vqclip.errors import InvalidInputError, OutputPathError

log = logging.getLogger(__name__)

__all__ = ["prepare_folder", "save_png", "read_png_settings", "write_json", "write_video", "save_checkpoint",
           "load_checkpoint", "PNG_KEY"]

PNG_KEY = "vqclip"  # the PNG text chunk holding the run's JSON record


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise OutputPathError(f"cannot write {str(path)!r} ({e.strerror}); check the output folder") from e


def png_bytes(image: np.ndarray, record: dict | None = None) -> bytes:
    """``image`` (H, W, 3) uint8 as PNG bytes; with ``record``, its ``vqclip`` text chunk holds
    it (JSON), plus a ``Description`` with the prompts for viewers that show one."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if record is not None:
        info.add_text(PNG_KEY, json.dumps(record, ensure_ascii=False, default=str))
        if record.get("prompts"):
            info.add_text("Description", str(record["prompts"]))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def save_png(path: str | os.PathLike, image: np.ndarray, record: dict) -> Path:
    """Write ``png_bytes(image, record)`` to ``path`` atomically."""
    path = Path(path)
    _write(path, png_bytes(image, record))
    return path


def read_png_settings(path: str | os.PathLike) -> dict:
    """The ``vqclip`` record of a PNG written by ``save_png``; ``InvalidInputError`` if it has none."""
    from PIL import Image

    try:  # read_regular: a FIFO or a device named here must not block or never end
        with Image.open(io.BytesIO(read_regular(path, 1 << 30))) as im:
            text = im.text.get(PNG_KEY) if hasattr(im, "text") else None
    except OSError as e:
        raise InvalidInputError(f"cannot read {os.fspath(path)!r} as a PNG ({e})") from e
    if text is None:
        raise InvalidInputError(f"{os.fspath(path)!r} holds no vqclip settings (was it made by vqclip generate?)")
    return json.loads(text)


def write_json(path: str | os.PathLike, record: dict) -> Path:
    path = Path(path)
    _write(path, (json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n").encode())
    return path


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: int = 12) -> Path:
    """Frames (H, W, 3) uint8 as an MP4 (imageio-ffmpeg, which ships its own ffmpeg) or,
    where that is not installed, an animated GIF (Pillow); returns the file written
    (``path`` with its suffix changed to what was written)."""
    if not frames:
        raise InvalidInputError("no frames to write a video from; save frames with save_every or --video")
    path = Path(path)
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        out = path.with_suffix(".mp4")
        tmp = out.with_name(f".{out.name}.tmp.mp4")
        h, w = frames[0].shape[:2]
        writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, macro_block_size=1,
                                             output_params=["-pix_fmt", "yuv420p"])
        writer.send(None)
        try:
            for f in frames:
                writer.send(np.ascontiguousarray(f, dtype=np.uint8))
        finally:
            writer.close()
        os.replace(tmp, out)
        return out
    from PIL import Image

    out = path.with_suffix(".gif")
    buf = io.BytesIO()
    images = [Image.fromarray(np.ascontiguousarray(f, dtype=np.uint8)) for f in frames]
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    _write(out, buf.getvalue())
    log.info("imageio-ffmpeg is not installed: wrote an animated GIF (%s); pip install imageio-ffmpeg for MP4", out)
    return out


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a resume checkpoint (tensors, numbers, strings, dicts) atomically, readable with
    ``torch.load(weights_only=True)``: nothing executable is stored."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    path = Path(path)
    _write(path, buf.getvalue())
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by ``save_checkpoint``; ``InvalidInputError`` naming the file otherwise."""
    import pickle

    import torch

    try:
        data = read_regular(path, 4 << 30)  # a FIFO would block torch.load
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise InvalidInputError(f"resume checkpoint {os.fspath(path)!r} does not exist") from e
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise InvalidInputError(f"{os.fspath(path)!r} is not a vqclip generation checkpoint ({e}); "
                                "give a .ckpt written with --checkpoint-every") from e
