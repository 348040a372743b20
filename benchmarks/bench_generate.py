"""Generation quality, judged by checkers that did not guide the generation (speed is
``vqclip bench generate``).

A fixed list of colour+shape prompts (``--list test``, 40 prompts; ``val`` is the tuning
list) with fixed seeds on the bundled models; each result is judged by the bundled shape
judge (a CNN trained on labels, never used to guide) and by a colour measured from its
pixels; prints the rates, the guiding CLIP's own rate beside them, and writes a grid PNG
of every result with its verdicts.

Usage:
    python benchmarks/bench_generate.py quality [--list test] [--grid PATH] [--json PATH] [--backend onnxruntime]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: see benchmarks/RESULTS.md; before torch loads
import torch  # noqa: E402


def _machine() -> dict:
    from vqclip._cpus import simd_class

    return {"cpu_class": simd_class(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "load_before": os.getloadavg()[0]}


def quality(args) -> dict:
    from vqclip.jobs.generate.evaluate import judge_run, prompt_list
    from vqclip.jobs.generate.generator import Generator

    prompts = prompt_list(args.list)
    report = judge_run(prompts, generator=Generator(backend=args.backend), grid=args.grid)
    report["backend"] = args.backend
    report["machine"] = _machine()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--list", default="test", choices=["val", "test"])
    q.add_argument("--grid", type=Path, default=Path("generate-grid.png"))
    q.add_argument("--json", type=Path)
    q.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="generation backend (onnxruntime: the exported step graph)")
    args = ap.parse_args()
    result = quality(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
