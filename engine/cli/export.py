"""``vqclip export``: a model to validated ONNX graphs (+ TensorRT, Triton) (``vqclip.export``)."""
from __future__ import annotations

import argparse

from vqclip.cli._common import user_path

__all__ = ["add_parser"]


def _cmd_export(args: argparse.Namespace) -> int:
    from vqclip.export import export_model  # lazy: the engine never imports export at import time

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export a model to validated ONNX graphs (+ TensorRT, Triton)",
                       description="Export a CLIP (image + text encoders) or VQGAN (decoder + encoder) to "
                                   "ONNX, check each graph against the PyTorch model, write manifest.json.")
    e.add_argument("model", type=user_path, metavar="MODEL", help="zoo name (see `vqclip models`) or a checkpoint path "
                                                  "(a Lightning .ckpt is read as a VQGAN, others as CLIP)")
    e.add_argument("--out", required=True, type=user_path, metavar="DIR", help="export folder to create")
    e.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"],
                   help="graphs to write besides fp32 (default: fp32 only)")
    e.add_argument("--weights", type=user_path, metavar="PATH",
                   help="checkpoint for a zoo MODEL without bundled weights")
    e.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (NVIDIA GPU + tensorrt)")
    e.add_argument("--triton", type=user_path, metavar="REPO",
                   help="also add the graphs to this Triton model repository")
    e.add_argument("--force", action="store_true", help="replace an existing --out folder / Triton models")
    e.set_defaults(func=_cmd_export)
