"""``vqclip demo``: the main job on the bundled models, offline (``vqclip.jobs.demo``)."""
from __future__ import annotations

import argparse

from vqclip.cli._common import positive_int, user_path

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: classify, index and search the bundled shapes world offline",
                       description="Render sample images, export the bundled CLIP to ONNX, classify the samples, "
                                   "build an index, answer text queries, and write an HTML report.")
    p.add_argument("--out", default="vqclip-demo", type=user_path, metavar="DIR",
                   help="output folder (default ./vqclip-demo)")
    p.add_argument("--samples", type=positive_int, default=48, help="images to render (default 48)")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="force a backend (default: the fastest that loads here)")
    p.add_argument("--seed", type=int, default=0, help="sample seed")
    p.add_argument("--generate-steps", type=int, default=None, metavar="N",
                   help="steps of the generation part (default: the bundled models' preset; 0 skips it)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from vqclip.jobs.demo import run_demo

    return run_demo(args.out, samples=args.samples, backend=args.backend, seed=args.seed, echo=print,
                    generate_steps=args.generate_steps)
