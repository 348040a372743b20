"""Argument helpers the ``vqclip`` subcommands share: sizes, paths, model/backend flags, image globs."""
from __future__ import annotations

import argparse
import glob
import os
import re

__all__ = ["positive_int", "nonneg_int", "probability", "user_path", "device_name", "add_model_args",
           "check_model_args", "expand_images"]

# What `--precision` offers on the commands with `--backend`: every precision some backend runs;
# check_model_args narrows it to the chosen backend's (vqclip.backends.factory.BACKEND_PRECISIONS).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


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


def probability(text: str) -> float:
    """argparse type for a probability threshold: a number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= v <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be from 0 to 1 (a probability), got {text}")
    return v


def user_path(text: str) -> str:
    """argparse type for every path argument: ``~`` and ``~user`` expanded, as an unquoted shell
    word would have been (a quoted ``'~/x'`` must not become ``./~/x``).

    Example: ``p.add_argument("--out", type=user_path)``; ``user_path("~/x")`` -> "/home/me/x".
    """
    return os.path.expanduser(text)


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def device_name(text: str) -> str:
    """argparse type for ``--device``: cpu, cuda or cuda:N (lower case)."""
    name = text.strip().lower()
    if not _DEVICE.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return name


def add_model_args(p: argparse.ArgumentParser, model: bool = True) -> None:
    """``--model``/``--arch`` (with ``model``), ``--backend``, ``--precision`` and ``--device``.
    Backend, precision and device default to None: the library chooses."""
    if model:
        p.add_argument("--model", default=None, metavar="NAME|PATH", type=user_path,
                       help="zoo name (see `vqclip models`), checkpoint file or model folder; default: shapes-clip")
        p.add_argument("--arch", default=None, metavar="NAME",
                       help="architecture of a --model file that does not state it (a zoo name, e.g. ViT-B-32 "
                            "for OpenAI's weights, ViT-B-32-gelu for OpenCLIP's LAION ones)")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="torch, onnxruntime or tensorrt (the exported ones export the model to ONNX once, cached); "
                        "default: onnxruntime int8 where a cached export of the model agrees with torch, else "
                        "torch fp32 (-v says which ran)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="torch: fp32, bf16, fp16; onnxruntime: fp32, fp16, int8; tensorrt: fp32, fp16 "
                        "(default: chosen with the backend)")
    p.add_argument("--device", default=None, type=device_name, metavar="cpu|cuda",
                   help="cpu, cuda or cuda:N (default: the backend's own: cpu, or cuda for tensorrt)")


def check_model_args(args: argparse.Namespace) -> None:
    """Refuse a ``--backend`` that is unknown, a ``--precision`` it does not run, or a
    ``--device`` it cannot use, in one line naming what it accepts, before any model loads.
    Without ``--backend`` the library chooses (``--precision``'s choices are what some
    backend runs); commands without ``--backend`` pass untouched."""
    if getattr(args, "backend", None) is None:
        return
    from vqclip.backends.factory import BACKEND_PRECISIONS, check_device, resolve_backend_name
    from vqclip.errors import InvalidInputError

    name = resolve_backend_name(args.backend)  # an unknown name: one line listing the known ones
    check_device(name, getattr(args, "device", None))
    accepted = BACKEND_PRECISIONS[name]
    if args.precision is not None and args.precision not in accepted:
        others = [b for b, ps in BACKEND_PRECISIONS.items() if args.precision in ps]
        raise InvalidInputError(
            f"--backend {name} runs --precision {', '.join(accepted)}, not {args.precision}; "
            f"for {args.precision} use --backend {' or '.join(others)}")


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
