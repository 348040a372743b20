"""``vqclip generate``: CLIP-guided VQGAN image generation (``vqclip.jobs.generate``).

Several prompts and seeds run as one batch. Ctrl-C or SIGTERM stops cleanly: the latest
image of every job is written (atomically) before the command exits.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from vqclip.cli._common import device_name, nonneg_int, positive_int, user_path
from vqclip.errors import InvalidInputError

__all__ = ["add_parser"]

AUGMENTS = ("affine", "perspective", "jitter", "erasing", "noise")


def _size(values: list[int]) -> tuple[int, int] | None:
    if not values:
        return None
    if len(values) > 2:
        raise InvalidInputError(f"--size takes one side (square) or width and height, got {len(values)} numbers")
    return (values[0], values[-1])


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate images from text prompts (VQGAN+CLIP), batched",
                       description="CLIP-guided VQGAN generation. Each PROMPT is one job ('text:weight:stop|...', "
                                   "'^' separates the sets of a story); all jobs and seeds step as one batch.")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="e.g. 'a red star' or 'a red star:1|blurry:-0.5'")
    p.add_argument("--image-prompts", nargs="+", default=[], type=user_path, metavar="IMG[:W]",
                   help="images whose embedding to aim at")
    p.add_argument("--noise-prompts", nargs="+", default=[], metavar="SEED:W", help="seeded random embeddings")
    p.add_argument("--clip", type=user_path, metavar="NAME|PATH", help="CLIP model (default: the bundled shapes-clip)")
    p.add_argument("--vqgan", type=user_path, metavar="NAME|PATH",
                   help="VQGAN model (default: the bundled shapes-vqgan)")
    p.add_argument("--size", nargs="+", type=int, default=[], metavar="PX", help="side, or width height (default: "
                   "the VQGAN's native size); multiples of the VQGAN's factor")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="optimisation steps (default: the models' preset, 200)")
    p.add_argument("--seeds", nargs="+", type=nonneg_int, default=None, metavar="SEED",
                   help="one job per prompt and seed (default: one random seed, recorded)")
    p.add_argument("--out", type=user_path, metavar="DIR",
                   help="output folder (default ./vqclip-generate; with --resume, the checkpoint's folder)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--optimiser", default=None, help="adam (default), adamw, adamax, adagrad, rmsprop, radam")
    o.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the models' preset; bundled 0.2, others 0.1)")
    o.add_argument("--lr-drops", nargs="+", type=float, default=None, metavar="FRACTION",
                   help="fractions of the run where the learning rate drops 10x, e.g. 0.75")
    o.add_argument("--auto-stop", type=positive_int, default=None, metavar="N",
                   help="stop a job when its loss has not improved for N steps")
    o.add_argument("--init", default=None,
                   help="random (codes), plain, noise, gradient or image "
                        "(default: the preset; bundled plain, others random)")
    o.add_argument("--init-image", type=user_path, metavar="PATH", help="start from this image (sets --init image)")
    o.add_argument("--init-colour", default=None, metavar="COLOUR", help="colour for --init plain (default grey)")
    o.add_argument("--init-weight", type=float, default=None,
                   help="z regulariser weight (default: the preset; bundled 0.06, others 0: off)")
    o.add_argument("--init-mode", default=None, help="decay (VQGAN-CLIP's) or init (stay near the init image)")
    c = p.add_argument_group("cutouts")
    c.add_argument("--cutn", type=int, default=None,
                   help="cutouts per image per step (default: the preset; bundled 16, others 32)")
    c.add_argument("--cut-method", default=None, help="pooled (VQGAN-CLIP's default) or crops (random squares)")
    c.add_argument("--cut-pow", type=float, default=None, help="crop size exponent for --cut-method crops")
    c.add_argument("--augments", nargs="*", default=None, metavar="AUG",
                   help=f"augmentations to use, from {', '.join(AUGMENTS)} (none: --augments with no names)")
    c.add_argument("--cut-batches", type=positive_int, default=None, metavar="K",
                   help="run the cutouts in K micro-batches, accumulating gradients (less memory)")
    r = p.add_argument_group("extra losses (pixray)")
    r.add_argument("--smoothness", type=float, default=None, help="total-variation weight")
    r.add_argument("--symmetry", type=float, default=None, help="left-right symmetry weight")
    r.add_argument("--saturation", type=float, default=None, help="colourfulness weight")
    r.add_argument("--palette", nargs="+", default=None, metavar="COLOUR", help="'#rrggbb', 'r,g,b' or a name")
    r.add_argument("--palette-weight", type=float, default=None, help="weight of the palette term")
    r.add_argument("--background-prompt", default=None, metavar="COLOUR",
                   help="also ask for '... on a COLOUR background' where a prompt names none ('none': off)")
    x = p.add_argument_group("outputs and modes")
    x.add_argument("--save-every", type=nonneg_int, default=None, metavar="N", help="write a PNG every N steps")
    x.add_argument("--video", action="store_true", help="also write the frames as an MP4 (or a GIF)")
    x.add_argument("--story-every", type=nonneg_int, default=None, metavar="N", help="steps per '^' prompt set")
    x.add_argument("--zoom-every", type=nonneg_int, default=None, metavar="N",
                   help="zoom mode: zoom/shift/rotate and re-encode every N steps")
    x.add_argument("--zoom-scale", type=float, default=None)
    x.add_argument("--zoom-shift", nargs=2, type=int, default=None, metavar=("X", "Y"))
    x.add_argument("--zoom-rotate", type=float, default=None, metavar="DEGREES")
    x.add_argument("--checkpoint-every", type=nonneg_int, default=0, metavar="N",
                   help="save z and the optimiser state every N steps (resume with --resume)")
    x.add_argument("--resume", type=user_path, metavar="CKPT", help="continue a run from its .ckpt")
    x.add_argument("--truncate", action="store_true", help="cut prompts longer than CLIP's context instead of refusing")
    d = p.add_argument_group("device")
    d.add_argument("--device", default="cpu", type=device_name, help="cpu (default), cuda or cuda:N")
    d.add_argument("--backend", dest="generation_backend", default="torch", type=str.lower,
                   choices=["torch", "onnxruntime"],
                   help="torch (autograd; default) or onnxruntime: each step's forward and backward as one exported "
                        "ONNX graph (CPU, fp32, pooled cutouts; exported on first use, or --step-graph)")
    d.add_argument("--step-graph", type=user_path, metavar="DIR",
                   help="with --backend onnxruntime: a folder from `vqclip export CLIP --generation`")
    d.add_argument("--precision", default=None,
                   help="fp32 (default), bf16, fp16 or auto (half precision on CUDA and AMX CPUs)")
    d.add_argument("--fp64", action="store_true",
                   help="optimise in float64: slower, but each image is the same whatever jobs it is batched with")
    d.add_argument("--deterministic", action="store_true",
                   help="on CUDA, use deterministic kernels where they exist and name the ones that do not")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON line per finished job")
    p.set_defaults(func=_cmd_generate)


def _settings(args: argparse.Namespace, base):
    from vqclip.jobs.generate import CutoutSpec

    s, cut = base, base.cutouts
    cut_changes = {k: v for k, v in (("cutn", args.cutn), ("method", args.cut_method), ("cut_pow", args.cut_pow))
                   if v is not None}
    if args.augments is not None:
        unknown = sorted(set(args.augments) - set(AUGMENTS))
        if unknown:
            raise InvalidInputError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(AUGMENTS)}")
        on, full = set(args.augments), CutoutSpec()  # named augmentations at their usual strength
        cut_changes |= {"degrees": full.degrees if "affine" in on else 0.0,
                        "translate": full.translate if "affine" in on else 0.0,
                        "shear": full.shear if "affine" in on else 0.0,
                        "scale": full.scale if "affine" in on else (1.0, 1.0),
                        "perspective": full.perspective if "perspective" in on else 0.0,
                        **{k: getattr(full, k) if "jitter" in on else 0.0
                           for k in ("brightness", "contrast", "saturation", "hue")},
                        "erasing": full.erasing if "erasing" in on else (0.0, 0.0),
                        "noise": full.noise if "noise" in on else 0.0}
    if cut_changes:
        from dataclasses import replace

        cut = replace(cut, **cut_changes)
    changes = {"size": _size(args.size), "steps": args.steps, "optimiser": args.optimiser, "lr": args.lr,
               "lr_drops": tuple(args.lr_drops) if args.lr_drops else None, "auto_stop": args.auto_stop,
               "init": "image" if args.init_image else args.init, "init_image": args.init_image,
               "init_colour": args.init_colour, "init_weight": args.init_weight, "init_mode": args.init_mode,
               "smoothness": args.smoothness, "symmetry": args.symmetry, "saturation": args.saturation,
               "palette": tuple(args.palette) if args.palette else None, "palette_weight": args.palette_weight,
               "save_every": args.save_every, "story_every": args.story_every, "zoom_every": args.zoom_every,
               "zoom_scale": args.zoom_scale, "zoom_shift": tuple(args.zoom_shift) if args.zoom_shift else None,
               "zoom_rotate": args.zoom_rotate, "precision": args.precision, "cut_batches": args.cut_batches}
    if args.background_prompt is not None:
        s = s.with_(background_prompt=None if args.background_prompt == "none" else args.background_prompt)
    return s.with_(cutouts=cut, truncate=args.truncate, **{k: v for k, v in changes.items() if v is not None})


def _noise_prompts(specs: list[str]) -> list[tuple[int, float]]:
    out = []
    for spec in specs:
        seed, _, weight = spec.partition(":")
        try:
            out.append((int(seed), float(weight) if weight else 1.0))
        except ValueError:
            raise InvalidInputError(f"noise prompt {spec!r}: write SEED[:WEIGHT], e.g. 42:0.5") from None
    return out


class _Terminated(Exception):
    """SIGTERM, turned into an exception so the run stops through the same path as Ctrl-C."""


def _cmd_generate(args: argparse.Namespace) -> int:
    from vqclip.jobs.generate import Generator
    from vqclip.jobs.generate.prompts import parse_prompts

    if not args.prompts and not args.image_prompts and not args.noise_prompts and not args.resume:
        raise InvalidInputError("no prompts were given; e.g. vqclip generate 'a red star'")
    noise = _noise_prompts(args.noise_prompts)
    jobs_prompts = [parse_prompts(p, args.image_prompts, noise) for p in args.prompts] or \
        ([parse_prompts(None, args.image_prompts, noise)] if not args.resume else [])
    gen = Generator(args.clip, args.vqgan, device=args.device, dtype="fp64" if args.fp64 else "fp32",
                    backend=args.generation_backend, step_graph=args.step_graph)
    settings = _settings(args, gen.default_settings())
    if args.deterministic:
        _deterministic(gen)
    if args.resume:
        gen.resume(args.resume, out_dir=args.out, video=args.video, checkpoint_every=args.checkpoint_every,
                   steps=args.steps)
    for sets in jobs_prompts:
        for seed in args.seeds or [None]:
            gen.add_job(sets, settings.with_(seed=seed), out_dir=args.out or "vqclip-generate", video=args.video,
                        checkpoint_every=args.checkpoint_every)
    jobs = list(gen.jobs)
    total = sum(j.settings.steps - j.step for j in jobs)
    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="step", desc=f"{len(jobs)} job{'s' * (len(jobs) > 1)}", file=sys.stderr)

    def on_term(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    t0, finished = time.perf_counter(), []
    try:
        for event in gen.run():
            if bar is not None:
                bar.update(1)
                shown = {k[:24]: f"{v:.3f}" for k, v in list(event.losses.items())[:3]}
                bar.set_postfix(step=event.step, **shown, rate=f"{event.steps_per_s:.1f}/s")
            if event.status != "running":
                finished.append(event)
                _report(args, event)
    except (KeyboardInterrupt, _Terminated):
        saved = gen.interrupt()
        pngs = ", ".join(s for s in saved if s.endswith(".png"))
        print(f"vqclip: interrupted; the latest images are written: {pngs}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
    if not args.json:
        print(f"{len(finished)} image{'s' * (len(finished) != 1)} in {time.perf_counter() - t0:.1f} s -> "
              f"{', '.join(sorted({str(j.out_dir) for j in jobs}))}")
    return 0


def _report(args: argparse.Namespace, event) -> None:
    png = next((s for s in event.saved if s.endswith(".png")), None)
    if args.json:
        print(json.dumps({"job": event.job_id, "status": event.status, "step": event.step, "loss": event.loss,
                          "files": event.saved}))
    else:
        print(f"{png}  ({event.status} at step {event.step}, loss {event.loss:.4f})")


def _deterministic(gen) -> None:
    import torch

    if gen.device.type != "cuda":
        return  # CPU kernels are deterministic already: the same seed gives the same bits
    torch.use_deterministic_algorithms(True, warn_only=True)
    print("vqclip: --deterministic on CUDA: grid_sampler_2d_backward (the cutout warp) has no deterministic CUDA "
          "kernel, so runs can still differ in the last bits", file=sys.stderr)
