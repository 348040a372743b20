"""Generation step variants on this CPU: fp32 as shipped, channels_last models, a
torch.compile-d decoder, bf16 autocast, or fp64 (--fp64); one config and variant per run (a
fresh process each), so run the variants one after another, twice, to see the machine's noise.

Usage: python benchmarks/gen_step_variants.py bundled|vit128|vit256 fp32|channels_last|compile|bf16|fp64 [STEPS]
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

from vqclip._cpus import simd_class
from vqclip.bench.job_generate import CONFIGS, _models
from vqclip.jobs.generate import CutoutSpec, GenerateSettings, Generator


def main() -> None:
    name, mode = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    kind, size, cutn = CONFIGS[name]
    gen = Generator(*_models(kind, "cpu"), dtype="fp64" if mode == "fp64" else "fp32")
    if mode == "channels_last":
        gen.vqgan.to(memory_format=torch.channels_last)
        gen.clip.to(memory_format=torch.channels_last)
    elif mode == "compile":
        gen.vqgan.decoder = torch.compile(gen.vqgan.decoder)
    elif mode not in ("fp32", "bf16", "fp64"):
        raise SystemExit(f"unknown variant {mode!r}")
    gen.add_job("a red star", GenerateSettings(size=(size, size), steps=10**6, cutouts=CutoutSpec(cutn=cutn),
                                               precision="bf16" if mode == "bf16" else "fp32"))
    t0 = time.perf_counter()
    gen.step()  # warm-up (and compilation)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        gen.step()
        times.append(time.perf_counter() - t)
    print(f"{name} {mode}: first step {first:.2f} s, median {1 / statistics.median(times):.3f} steps/s "
          f"({simd_class()}, {torch.get_num_threads()} threads)")  # bf16 speed depends on the CPU class


if __name__ == "__main__":
    main()
