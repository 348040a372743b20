"""``vqclip export``: a model to validated ONNX graphs (+ TensorRT, Triton) (``vqclip.export``)."""
from __future__ import annotations

import argparse

from vqclip.cli._common import positive_int, user_path

__all__ = ["add_parser"]


_GENERATION_ONLY = ("vqgan", "size", "cutn", "padding", "prompts", "palette", "jobs")


def _cmd_export(args: argparse.Namespace) -> int:
    if args.generation:
        return _export_generation(args)
    given = [f"--{k}" for k in _GENERATION_ONLY if getattr(args, k) is not None]
    if given:
        from vqclip.errors import InvalidInputError

        raise InvalidInputError(f"{', '.join(given)} shape(s) the generation step: add --generation, or drop them")
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


def _export_generation(args: argparse.Namespace) -> int:
    """``--generation``: the VQGAN+CLIP step (forward and backward) of MODEL (the CLIP) and --vqgan."""
    from vqclip.errors import InvalidInputError
    from vqclip.export.generation import TOLERANCES, StepShape, export_generation
    from vqclip.jobs.generate import Generator

    if args.triton or args.precision != ["fp32"] or args.weights:
        raise InvalidInputError("--generation exports one fp32 ONNX graph: drop --precision, --weights and --triton "
                                "(give a checkpoint path as MODEL)")
    if args.tensorrt:
        from vqclip.export.tensorrt import require_tensorrt

        require_tensorrt()  # before the models load
    gen = Generator(args.model, args.vqgan)  # the models, their normalisation and defaults, as generation uses them
    preset = gen.default_settings()
    base = preset.cutouts
    side = args.size or [gen.native]
    size = (side[0], side[-1])
    if len(side) > 2 or any(v < gen.factor or v % gen.factor for v in size):
        raise InvalidInputError(f"--size takes a side or width height, multiples of {gen.factor}; got {side}")
    shape = StepShape(size=size, cutn=args.cutn or base.cutn, prompts=args.prompts or 8,
                      palette=args.palette or max(1, len(preset.palette)), padding=args.padding or base.padding,
                      jobs=args.jobs or 1)
    record = export_generation(gen.clip, gen.vqgan, args.out, shape, mean=tuple(gen.mean.flatten().tolist()),
                               std=tuple(gen.std.flatten().tolist()), force=args.force,
                               tensorrt=args.tensorrt, identity=dict(gen.identity))
    p = record["parity"]
    print(f"exported the generation step of {gen.names['clip']} + {gen.names['vqgan']} to {args.out} "
          f"({size[0]}x{size[1]}, cutn {shape.cutn}, {shape.prompts} prompts, {shape.palette} colours, padding "
          f"{shape.padding}, {shape.jobs} job(s) per call) in {record['seconds']} s")
    print(f"parity vs the float64 torch step: dL/dz cosine {p['grad_cosine']:.7f} (>= {TOLERANCES['grad_cosine']}), "
          f"relative error {p['grad_rel_err']:.2e} (PyTorch fp32: {p['torch_fp32_grad_rel_err']:.2e}), "
          f"losses {p['loss_rel_err']:.2e}, image {p['image_max_abs']:.1e}")
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
    g = e.add_argument_group("generation step (--generation: MODEL is the guiding CLIP)")
    g.add_argument("--generation", action="store_true",
                   help="export the VQGAN+CLIP step, forward and backward, as generation_step.onnx")
    g.add_argument("--vqgan", type=user_path, metavar="NAME|PATH", help="the VQGAN (default: the bundled shapes-vqgan)")
    g.add_argument("--size", nargs="+", type=positive_int, metavar="PX", help="side, or width height (default: native)")
    g.add_argument("--cutn", type=positive_int, metavar="N", help="cutouts per job (default: the pair's preset)")
    g.add_argument("--padding", choices=("zeros", "border", "reflection"),  # cutouts.PADDINGS, without torch
                   help="the warp's padding (default: preset)")
    g.add_argument("--prompts", type=positive_int, metavar="N", help="prompt slots per job (default 8)")
    g.add_argument("--palette", type=positive_int, metavar="N",
                   help="palette colour slots (default: the preset's palette, at least 1)")
    g.add_argument("--jobs", type=positive_int, metavar="N", help="jobs stepped per call (default 1)")
    e.set_defaults(func=_cmd_export)
