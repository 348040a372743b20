"""CLIP's image preprocessing, at parity with OpenAI's pipeline.

``Preprocessor`` turns RGB images into the image encoder's input, float32 ``[B, 3, S, S]``:
resize the short side to ``S`` with PIL's bicubic filter (the long side is
``int(S * long / short)``), centre crop ``S x S`` at OpenAI's offset
``int(round((h - S) / 2))``, scale to [0, 1], normalise with the model's mean/std.
Decoding (EXIF, RGB, the pixel limit) is ``vqclip.decode.load_image``'s job.

Two places where Hugging Face's ``CLIPImageProcessor`` (transformers 5.x, PIL backend)
is not OpenAI's pipeline, found by ``tests/test_preprocess.py``; vqclip follows OpenAI,
whose models these are:

- crop offset: HF floors ``(h - S) // 2``; OpenAI (torchvision's ``CenterCrop``) rounds
  half to even, so when ``h - S`` is odd and ``(h - S) // 2`` is odd the crops differ
  by one pixel (e.g. an image resized to 224 x 227).
- transparency: HF composites RGBA/LA/PA and transparent-palette images onto white;
  OpenAI's ``convert("RGB")`` keeps the colour under the transparent pixels.

Example:
    >>> from vqclip.preprocess import Preprocessor
    >>> Preprocessor()(["cat.jpg", open("dog.png", "rb").read()]).shape
    (2, 3, 224, 224)
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vqclip.constants import OPENAI_MEAN, OPENAI_STD
from vqclip.decode import DEFAULT_MAX_PIXELS, ImageSource, load_image
from vqclip.errors import ImageDecodeError, InputShapeError

__all__ = ["Preprocessor", "INTERPOLATIONS"]

INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,  # OpenAI CLIP, OpenCLIP defaults
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

class Preprocessor:
    """CLIP image preprocessing: resize short side, centre crop, scale, normalise.

    Args:
        size: output side ``S`` (224 for ViT-B/32, B/16, L/14; 336 for L/14@336).
        mean, std: per-channel RGB statistics on the [0, 1] scale; OpenAI's by default
            (take a model's from ``vqclip.zoo.get(name).weights``).
        interpolation: PIL filter for the resize, one of ``INTERPOLATIONS``.
        max_pixels: decompression-bomb limit passed to ``load_image``.

    Example:
        >>> pre = Preprocessor(size=224)
        >>> x = pre(["a.jpg", "b.png"])  # float32 (2, 3, 224, 224)
    """

    def __init__(
        self,
        size: int = 224,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        interpolation: str = "bicubic",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputShapeError(f"size={size!r}, expected a positive int such as 224")
        if interpolation not in INTERPOLATIONS:
            raise InputShapeError(
                f"interpolation={interpolation!r}, expected one of {sorted(INTERPOLATIONS)}"
            )
        mean_a = np.asarray(mean, dtype=np.float32).reshape(-1)
        std_a = np.asarray(std, dtype=np.float32).reshape(-1)
        if mean_a.shape != (3,) or std_a.shape != (3,) or not (std_a > 0).all():
            raise InputShapeError(
                f"mean={tuple(mean)} std={tuple(std)}, expected three values each, std > 0"
            )
        self.size = size
        self.mean = tuple(float(m) for m in mean_a)
        self.std = tuple(float(s) for s in std_a)
        self.interpolation = interpolation
        self.max_pixels = max_pixels
        self._resample = INTERPOLATIONS[interpolation]
        self._mean = mean_a
        self._std = std_a
        # Every uint8 value's normalised float32, computed with the same float32 operations
        # (x / 255 - mean) / std that the formula applies per pixel, so a table lookup gives
        # identical bits with one gather per channel instead of three float passes.
        levels = np.arange(256, dtype=np.float32)[None, :]  # (1, 256)
        self._lut = np.ascontiguousarray((levels / 255.0 - mean_a[:, None]) / std_a[:, None])  # (3, 256)

    def __repr__(self) -> str:
        return (
            f"Preprocessor(size={self.size}, mean={self.mean}, std={self.std}, "
            f"interpolation={self.interpolation!r})"
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the short side is resized to ``size``, long side floored."""
        s = self.size
        if width <= height:
            return s, int(s * height / width)
        return int(s * width / height), s

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centre crop of a ``width x height`` image.

        OpenAI's rule, ``int(round((h - S) / 2))``: Python rounds halves to even. An image
        smaller than ``S`` on a side (impossible after ``resized_size``) is not padded.
        """
        s = self.size
        left = int(round((width - s) / 2.0))
        top = int(round((height - s) / 2.0))
        return left, top, left + s, top + s

    def transform(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """One RGB image -> float32 ``[3, S, S]``, normalised (written into ``out`` if given)."""
        if image.mode != "RGB":
            raise InputShapeError(f"image mode is {image.mode}, expected RGB; pass it through load_image first")
        resized = image.resize(self.resized_size(*image.size), resample=self._resample)
        cropped = resized.crop(self.crop_box(*resized.size))
        return self._normalise(np.asarray(cropped), out)  # (3, S, S)

    def _normalise(self, rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (3, H, W), ``(x / 255 - mean) / std`` per channel, into
        ``out`` when given."""
        if out is None:
            out = np.empty((3,) + rgb.shape[:2], dtype=np.float32)  # (3, H, W)
        for c in range(3):
            np.take(self._lut[c], rgb[:, :, c], out=out[c], mode="clip")  # uint8: never clips; "raise" would buffer
        return out

    def __call__(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """Images -> float32 ``[B, 3, S, S]``, normalised, in input order.

        Accepts one source or a list of them (anything ``load_image`` takes); each is
        decoded with ``vqclip.decode.load_image`` (decode many in parallel with
        ``vqclip.decode.decode_batches``). An empty list gives shape ``(0, 3, S, S)``.

        Raises ``ImageDecodeError`` naming the position of the first bad image.
        """
        if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)) or hasattr(
            images, "read"
        ):
            images = [images]
        elif not isinstance(images, Sequence):
            raise InputShapeError(
                f"images is {type(images).__name__}, expected one image source or a list of them"
            )
        out = np.empty((len(images), 3, self.size, self.size), dtype=np.float32)  # (B, 3, S, S)
        for i, src in enumerate(images):
            try:
                rgb = load_image(src, self.max_pixels, copy=False)  # only read below
            except ImageDecodeError as e:
                raise ImageDecodeError(f"batch item {i}: {e}") from e
            self.transform(rgb, out[i])
        return out
