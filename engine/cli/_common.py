"""Argument helpers the ``vqclip`` subcommands share: sizes, model/backend flags, image globs."""
from __future__ import annotations

import argparse
import glob
import os

__all__ = ["positive_int", "nonneg_int", "add_model_args", "expand_images"]


def _whole(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type for sizes (batch, workers): an integer >= 1."""
    return _whole(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type for counts where 0 means off (save every N steps, seeds): an integer >= 0."""
    return _whole(text, 0)


def add_model_args(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument("--model", default=None, metavar="NAME|PATH",
                       help="zoo name (see `vqclip models`), checkpoint file or model folder; default: shapes-clip")
        p.add_argument("--arch", default=None, metavar="NAME",
                       help="architecture of a --model file that does not state it (a zoo name, e.g. ViT-B-32 "
                            "for OpenAI's weights, ViT-B-32-gelu for OpenCLIP's LAION ones)")
    p.add_argument("--backend", default="torch", metavar="NAME",
                   help="torch (default), onnxruntime or tensorrt (exports the model to ONNX once, cached)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"],
                   help="backend precision (default fp32; int8 on onnxruntime, bf16 on torch)")


def expand_images(args: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Paths and globs -> (files, [(arg, reason)] for args that name nothing)."""
    files, missing = [], []
    for a in args:
        if os.path.exists(a) or not glob.has_magic(a):
            if os.path.isdir(a):
                missing.append((a, "is a folder; give image files or a glob like 'dir/*.png'"))
            else:
                files.append(a)  # a missing file is reported by the decoder, with the others
            continue
        hits = sorted(h for h in glob.glob(a, recursive=True) if os.path.isfile(h))
        if not hits:
            missing.append((a, "the glob matches no files"))
        files.extend(hits)
    return files, missing
