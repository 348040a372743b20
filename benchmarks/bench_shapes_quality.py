"""Measured quality of the bundled shapes models on held-out scenes (the model card's figures).

    python benchmarks/bench_shapes_quality.py                  # 2,000 held-out images
    python benchmarks/bench_shapes_quality.py --clip-fp32-run /tmp/shapes-clip --vqgan-fp32-run /tmp/shapes-vqgan
    python benchmarks/bench_shapes_quality.py --split val --images 600 --vqgan-fp32-run /tmp/vq3  # pick a run

Prints one table: zero-shot colour / shape / colour+shape top-1 over the 40
"a {colour} {shape}" labels, text-to-image precision@10 on a 2,000-image gallery,
VQGAN PSNR (all, and per background style), codebook usage, and the independent shape
classifier's accuracy on originals and on reconstructions, each next to its target;
two references without targets (the judge on decodings of the unquantised latents, which
tells the codebook's losses from the decoder's, and the PSNR of a noise-free render of
each noisy scene, what drawing the noise's mean scores); under the table, which shapes
the judge misread on reconstructions (size, background, confusion).
With ``--*-fp32-run`` (a training run's folder) the fp32 weights are measured in the
same run as the shipped fp16 file. ``--json`` writes the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vqclip.checkpoints import load_clip, load_vqgan  # noqa: E402
from vqclip.recipe import quality  # noqa: E402
from vqclip.zoo import get, shapes  # noqa: E402
from vqclip.zoo.judge import load_judge, to_signed  # noqa: E402

TARGETS = {"colour": 0.98, "shape": 0.95, "colour+shape": 0.90, "p@10": 0.90, "psnr": 28.0, "usage": 0.50,
           "judge on reconstructions": 0.98}


def clip_rows(model, label: str, scenes, images) -> list[tuple[str, float, float | None]]:
    acc = quality.clip_zero_shot(model, scenes, images)
    p10 = quality.search_precision_at_k(model, scenes, images, k=10)
    return [(f"{label} zero-shot {k}", v, TARGETS[k]) for k, v in acc.items()] + \
        [(f"{label} search precision@10", p10, TARGETS["p@10"])]


def misreads(scenes, predicted: list[str]) -> dict:
    """The judge's errors: how many, how many small, per background style, per confusion."""
    wrong = [(s, p) for s, p in zip(scenes, predicted) if p != s.shape]
    return {"count": len(wrong), "small": sum(s.size_word == "small" for s, _ in wrong),
            "styles": dict(Counter(s.style for s, _ in wrong).most_common()),
            "confusions": dict(Counter(f"{s.shape}->{p}" for s, p in wrong).most_common())}


@torch.no_grad()
def decode_unquantised(model, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Decodings of the encoder's latents before the codebook lookup."""
    dtype = next(model.parameters()).dtype
    return torch.cat([model.decode(model.encode_latent(x[i: i + batch].to(dtype))).float()
                      for i in range(0, len(x), batch)])


def noise_free_psnr(scenes) -> float:
    """Mean PSNR of each noisy-background scene rendered without its noise, against itself."""
    noisy = [s for s in scenes if s.style == "noisy"]
    clean = [replace(s, noise=0.0) for s in noisy]
    return float(quality.psnr(to_signed(shapes.render_batch(noisy)),
                              to_signed(shapes.render_batch(clean))).mean())


def vqgan_rows(model, label: str, scenes, images, judge) -> tuple[list[tuple[str, float, float | None]], dict]:
    x = to_signed(images)
    rec, codes = quality.vqgan_reconstruct(model, x)
    p = quality.psnr(x, rec)
    rows = [(f"{label} PSNR dB (mean of images)", float(p.mean()), TARGETS["psnr"])]
    for style in shapes.BACKGROUND_STYLES:
        mask = torch.tensor([s.style == style for s in scenes])
        rows.append((f"{label} PSNR dB, {style} backgrounds", float(p[mask].mean()), None))
    rows.append((f"{label} codebook usage", torch.unique(codes).numel() / model.config.n_embed, TARGETS["usage"]))
    predicted = judge.predict(rec.clamp(-1, 1))
    on_rec = np.mean([p == s.shape for p, s in zip(predicted, scenes)])
    rows.append((f"{label} judge on reconstructions", float(on_rec), TARGETS["judge on reconstructions"]))
    unquantised = judge.predict(decode_unquantised(model, x).clamp(-1, 1))
    rows.append((f"{label} judge on unquantised latents", float(np.mean([p == s.shape for p, s in
                                                                          zip(unquantised, scenes)])), None))
    return rows, misreads(scenes, predicted)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="held-out images (gallery size)")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="test (the model card's figures) or val (choosing between training runs)")
    ap.add_argument("--clip-fp32-run", type=Path, help="training run folder with fp32 model.safetensors")
    ap.add_argument("--vqgan-fp32-run", type=Path, help="training run folder with fp32 model.safetensors")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.time()
    scenes = shapes.sample_scenes(args.split, 0, args.images)
    images = shapes.render_batch(scenes)
    judge = load_judge()
    rows: list[tuple[str, float, float | None]] = []
    truth = [s.shape for s in scenes]
    rows.append(("judge on originals", float(np.mean([a == b for a, b in zip(judge.predict(images), truth)])), None))
    rows.append(("PSNR dB of noise-free renders of the noisy scenes", noise_free_psnr(scenes), None))

    rows += clip_rows(load_clip("shapes-clip"), "shapes-clip fp16 file", scenes, images)
    if args.clip_fp32_run:
        rows += clip_rows(load_clip(args.clip_fp32_run / "model.safetensors", config=get("shapes-clip").config),
                          "shapes-clip fp32 run", scenes, images)
    errors: dict[str, dict] = {}
    vqgans = {"shapes-vqgan fp16 file": load_vqgan("shapes-vqgan")}
    if args.vqgan_fp32_run:
        vqgans["shapes-vqgan fp32 run"] = load_vqgan(args.vqgan_fp32_run / "model.safetensors",
                                                     config=get("shapes-vqgan").config)
    for label, model in vqgans.items():
        more, errors[label] = vqgan_rows(model, label, scenes, images, judge)
        rows += more

    print(f"shapes world, held-out split '{args.split}', {args.images} images, 64x64 ({time.time() - t0:.0f} s)")
    print(f"{'measure':<52} {'value':>8} {'target':>8}  met")
    for name, value, target in rows:
        met = "" if target is None else ("yes" if value >= target else "NO")
        tgt = "" if target is None else f"{target:8.3f}"
        print(f"{name:<52} {value:8.3f} {tgt:>8}  {met}")
    for label, e in errors.items():
        print(f"{label}, judge misreads on reconstructions: {e['count']} ({e['small']} small); "
              f"backgrounds {e['styles']}; {e['confusions']}")
    if args.json:
        figures = {n: v for n, v, _ in rows} | {f"{label} judge misreads": e for label, e in errors.items()}
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
