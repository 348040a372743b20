"""The ``vqclip`` command line. Each subcommand is a thin layer over the library.

Errors a user can cause (``VqclipError``) print one line on stderr and exit 2; an
interrupt exits 130. Heavy imports happen inside the subcommands, so ``vqclip --help``
starts fast.
"""
from __future__ import annotations

import argparse
import logging
import sys

from engine import __version__
from engine.errors import VqclipError

__all__ = ["main", "build_parser"]


def _cmd_models(args: argparse.Namespace) -> int:
    from engine.zoo import get, list_models

    for name in list_models(args.family):
        rec = get(name)
        print(f"{rec.name:<20} {rec.family:<6} {rec.description}")
    return 0


def _cmd_backends(args: argparse.Namespace) -> int:
    from engine.backends import BACKENDS, backend_status

    status = backend_status()
    for name in BACKENDS:
        print(f"{name:<12} {'available' if status[name] is None else 'unavailable: ' + status[name]}")
    return 0


def _add_backends_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("backends", help="list the inference backends and whether each runs here")
    b.set_defaults(func=_cmd_backends)
def _add_runtime_parsers(sub) -> None:
    """classify, index, search and demo (engine/_cli_runtime.py)."""
    from engine import _cli_runtime as rt

    rt.add_classify_parser(sub)
    rt.add_index_parser(sub)
    rt.add_search_parser(sub)
    rt.add_demo_parser(sub)


def _cmd_export(args: argparse.Namespace) -> int:
    from export import export_model  # lazy: the engine never imports export at import time

    m = export_model(args.model, args.out, args.precision, tensorrt=args.tensorrt, triton_repo=args.triton,
                     force=args.force, weights=args.weights)
    print(f"exported {m.model} ({m.family}) to {args.out}, opset {m.opset}")
    print(f"{'file':<32} {'max abs diff':>12} {'min cosine':>11} {'zero-shot':>9}")
    for g in m.graphs:
        p = g.parity
        if not p:  # TensorRT plans: built, not run here
            print(f"{g.file:<32} {'(not run)':>12}")
            continue
        zs = "-" if p.get("zero_shot_agreement") is None else f"{p['zero_shot_agreement']:.1%}"
        print(f"{g.file:<32} {p['max_abs_diff']:>12.2e} {p['min_cosine']:>11.6f} {zs:>9}")
    if args.triton:
        print(f"Triton model repository: {args.triton}")
    return 0


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export a model to validated ONNX graphs (+ TensorRT, Triton)",
                       description="Export a CLIP (image + text encoders) or VQGAN (decoder + encoder) to "
                                   "ONNX, check each graph against the PyTorch model, write manifest.json.")
    e.add_argument("model", metavar="MODEL", help="zoo name (see `vqclip models`) or a checkpoint path "
                                                  "(a Lightning .ckpt is read as a VQGAN, others as CLIP)")
    e.add_argument("--out", required=True, metavar="DIR", help="export folder to create")
    e.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"],
                   help="graphs to write besides fp32 (default: fp32 only)")
    e.add_argument("--weights", metavar="PATH", help="checkpoint for a zoo MODEL without bundled weights")
    e.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (NVIDIA GPU + tensorrt)")
    e.add_argument("--triton", metavar="REPO", help="also add the graphs to this Triton model repository")
    e.add_argument("--force", action="store_true", help="replace an existing --out folder / Triton models")
    e.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqclip", description="CLIP and VQGAN inference engine")
    p.add_argument("--version", action="version", version=f"vqclip {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    m = sub.add_parser("models", help="list the named models")
    m.add_argument("--family", choices=["clip", "vqgan"], help="only this family")
    m.set_defaults(func=_cmd_models)
    _add_backends_parser(sub)
    _add_export_parser(sub)
    _add_runtime_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except VqclipError as e:
        print(f"vqclip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
