"""Generation benchmark: speed beside VQGAN-CLIP's step, batched throughput, memory, and
quality judged by checkers that did not guide the generation.

``speed``: steps/s of vqclip's ``Generator`` beside the VQGAN-CLIP ``generate.py`` step
(``_vqgan_clip_baseline.py``: eager fp32, pooled cutouts recomputed cutn times, kornia's
augmentation chain, a second decode on save steps; same size, cutn and optimiser),
rounds interleaved so load hits both alike; configurations: the bundled models at their
native 64x64, and ViT-B/32 + VQGAN f16-16384 with random weights (speed does not depend
on the weights) at 128x128 cutn 8 and 256x256 cutn 32. Then throughput (images per hour)
of J jobs stepped as one batch against the same J jobs run one after another, and the
peak memory (RSS, in a fresh process) per configuration.

``quality``: a fixed list of colour+shape prompts (``--list test``, 40 prompts; ``val`` is
the tuning list) with fixed seeds on the bundled models; each result is judged by the
bundled shape judge (a CNN trained on labels, never used to guide) and by a colour
measured from its pixels; prints the rates, the guiding CLIP's own rate beside them, and
writes a grid PNG of every result with its verdicts.

Usage:
    python benchmarks/bench_generate.py speed [--steps 8] [--configs bundled,vit128,vit256] [--memory] [--json PATH]
    python benchmarks/bench_generate.py speed --device cuda --configs vit256,vit512 --batched vit256 --memory
    python benchmarks/bench_generate.py quality [--list test] [--grid PATH] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: see benchmarks/RESULTS.md; before torch loads
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the baseline module beside this script

CONFIGS = {  # name -> (models, size, cutn)
    "bundled": ("bundled", 64, 32),
    "vit128": ("vit-b-32+f16-16384", 128, 8),
    "vit256": ("vit-b-32+f16-16384", 256, 32),
    "vit512": ("vit-b-32+f16-16384", 512, 32),  # the peers' 10 GB GPU figure; for --device cuda
}


def _models(kind: str, device: str = "cpu"):
    from vqclip.checkpoints import load_clip, load_vqgan
    from vqclip.models.clip import CLIP
    from vqclip.models.vqgan import VQGAN
    from vqclip.zoo import get

    if kind == "bundled":
        return load_clip("shapes-clip", device=device), load_vqgan("shapes-vqgan").to(device)
    torch.manual_seed(0)
    clip = CLIP(get("ViT-B/32").config).eval()
    vqgan = VQGAN(get("vqgan-f16-16384").config, with_encoder=False).eval()
    return clip.to(device), vqgan.to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _machine() -> dict:
    from vqclip._cpus import simd_class

    out = {"cpu_class": simd_class(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.machine(), "load_before": os.getloadavg()[0]}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _text_embedding(clip, text: str) -> torch.Tensor:
    from vqclip.tokenizer import tokenize

    with torch.no_grad():
        ids = torch.from_numpy(tokenize([text], context_length=clip.config.context_length))
        return clip.encode_text(ids.to(next(clip.parameters()).device))[0]


def _ours(gen, size: int, cutn: int, precision: str, seed: int = 0, jobs: int = 1):
    from vqclip.jobs.generate import CutoutSpec, GenerateSettings

    s = GenerateSettings(size=(size, size), steps=10**6, cutouts=CutoutSpec(cutn=cutn), save_every=50,
                         precision=precision)
    return [gen.add_job("a red star", s.with_(seed=seed + j)) for j in range(jobs)]


def speed(args) -> dict:
    from _vqgan_clip_baseline import BaselineStep

    from vqclip.jobs.generate import Generator

    out = {"machine": _machine() | {"device": args.device}, "speed": [], "batched": []}
    for name in args.configs.split(","):
        kind, size, cutn = CONFIGS[name]
        clip, vqgan = _models(kind, args.device)
        base = BaselineStep(clip, vqgan, _text_embedding(clip, "a red star"), (size, size), cutn)
        gen = Generator(clip, vqgan, device=args.device)
        variants = {p: _ours(gen, size, cutn, p, seed=i) for i, p in enumerate(args.precisions.split(","))}
        times: dict[str, list[float]] = {"VQGAN-CLIP generate.py step": []} | {f"vqclip {p}": [] for p in variants}
        for job in (j for js in variants.values() for j in js):
            gen.jobs.remove(job)  # each variant steps alone below
        for rnd in range(args.steps + 1):  # round 0 warms up
            _sync(args.device)
            t = time.perf_counter()
            base.step()
            _sync(args.device)
            if rnd:
                times["VQGAN-CLIP generate.py step"].append(time.perf_counter() - t)
            for p, (job,) in variants.items():
                gen.jobs = [job]
                _sync(args.device)
                t = time.perf_counter()
                gen.step()
                _sync(args.device)
                if rnd:
                    times[f"vqclip {p}"].append(time.perf_counter() - t)
        gen.jobs = []
        row = {"config": name, "models": kind, "size": size, "cutn": cutn,
               "steps_per_s": {k: 1 / statistics.median(v) for k, v in times.items()}}
        ref = row["steps_per_s"]["VQGAN-CLIP generate.py step"]
        row["ratio"] = {k: v / ref for k, v in row["steps_per_s"].items()}
        out["speed"].append(row)
        print(f"\n{name}: {kind} {size}x{size} cutn {cutn}, median of {args.steps} steps")
        for k, v in row["steps_per_s"].items():
            print(f"  {k:<32} {v:8.3f} steps/s   {row['ratio'][k]:5.2f}x")
        if name in args.batched.split(","):
            out["batched"].append(_batched(gen, name, size, cutn, args))
    out["machine"]["load_after"] = os.getloadavg()[0]
    if args.memory:
        out["memory"] = [_memory(name, args.device) for name in args.configs.split(",")]
    return out


def _batched(gen, name: str, size: int, cutn: int, args) -> dict:
    """J jobs as one batch vs the same J jobs one after another: images per hour."""
    j, steps, precision = args.jobs, args.batched_steps, args.precisions.split(",")[-1]
    seq = 0.0
    for i in range(j):
        (job,) = _ours(gen, size, cutn, precision, seed=100 + i)
        gen.step()  # warm-up step, not timed
        _sync(args.device)
        t = time.perf_counter()
        for _ in range(steps):
            gen.step()
        _sync(args.device)
        seq += time.perf_counter() - t
        gen.jobs = []
    _ours(gen, size, cutn, precision, seed=100, jobs=j)
    gen.step()
    _sync(args.device)
    t = time.perf_counter()
    for _ in range(steps):
        gen.step()
    _sync(args.device)
    batched = time.perf_counter() - t
    gen.jobs = []
    row = {"config": name, "jobs": j, "steps": steps, "precision": precision,
           "sequential_images_per_hour": 3600 * j / (seq / steps * 500) if seq else 0,
           "batched_images_per_hour": 3600 * j / (batched / steps * 500), "speedup": seq / batched}
    print(f"  {j} jobs, {precision}: batched {row['batched_images_per_hour']:.0f} vs sequential "
          f"{row['sequential_images_per_hour']:.0f} images/hour (500-step images): {row['speedup']:.2f}x")
    return row


def _memory(name: str, device: str = "cpu") -> dict:
    """Peak memory of one fp32 job of this configuration over a few steps, in a fresh process:
    RSS (VmHWM) on the CPU, torch's peak allocation on CUDA."""
    peak = ("torch.cuda.max_memory_allocated() // 1024" if device.startswith("cuda") else
            "open('/proc/self/status').read().split('VmHWM:')[1].split()[0]")
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(Path(__file__).parent)!r});"
            "import bench_generate as b, torch;"
            "from vqclip.jobs.generate import Generator;"
            f"kind, size, cutn = b.CONFIGS[{name!r}]; g = Generator(*b._models(kind, {device!r}), device={device!r});"
            f"b._ours(g, size, cutn, 'fp32'); [g.step() for _ in range(3)]; print({peak})")
    # VmHWM, not ru_maxrss: Linux carries the parent's maxrss across fork+exec.
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kib = int(run.stdout.split()[-1])
    what = "peak GPU memory (torch)" if device.startswith("cuda") else "peak RSS"
    print(f"  {what} {name}, fp32: {kib / 1024:.0f} MiB")
    key = "peak_cuda_mib" if device.startswith("cuda") else "peak_rss_mib"
    return {"config": name, key: kib / 1024, "precision": "fp32"}


def quality(args) -> dict:
    from vqclip.jobs.generate.evaluate import judge_run, prompt_list

    prompts = prompt_list(args.list)
    report = judge_run(prompts, grid=args.grid)
    report["machine"] = _machine()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--configs", default="bundled,vit128,vit256")
    s.add_argument("--precisions", default="fp32,auto", help="vqclip variants timed beside the baseline")
    s.add_argument("--steps", type=int, default=8, help="timed steps per variant (interleaved)")
    s.add_argument("--batched", default="bundled,vit128", help="configs whose batched throughput is measured")
    s.add_argument("--jobs", type=int, default=8)
    s.add_argument("--batched-steps", type=int, default=5)
    s.add_argument("--memory", action="store_true", help="also measure peak RSS per config (fresh processes)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (then add vit512 to --configs for the 10 GB figure)")
    s.add_argument("--json", type=Path)
    q = sub.add_parser("quality")
    q.add_argument("--list", default="test", choices=["val", "test"])
    q.add_argument("--grid", type=Path, default=Path("generate-grid.png"))
    q.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = speed(args) if args.what == "speed" else quality(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
