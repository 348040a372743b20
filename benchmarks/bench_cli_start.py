"""Wall time of one-shot ``vqclip`` commands, start-up included, the way a shell user meets them.

Each command runs as a fresh process (``python -m vqclip.cli``), ``--repeats`` times after one
warm-up run, on a warm file cache; medians are printed with the torch path measured in the
same run as the reference (the exported path is the default once the model's export is
cached; ``--backend torch`` is the old default). Workload: ``--images`` scenes of the
bundled shapes world indexed by the bundled ``shapes-clip`` (what the demo indexes), one
text search, one image classified against 5 labels, and ``--queries`` texts answered by
one ``vqclip search --queries`` process. ``--vit`` does the same with a ViT-B/32 of random
weights saved as vqclip saves models (safetensors with its config), exported once.

    python benchmarks/bench_cli_start.py --repeats 7 --json benchmarks/results/cli_start.$(CPU_CLASS).json
    python benchmarks/bench_cli_start.py --vit --images 32 --queries 200 --repeats 5 --json ...vit-b-32...json

Targets (issue 15, this 2-core machine, quiet): search < 1.5 s, classify < 2 s, --help and
models < 0.5 s. Run it with nothing else busy: figures are wall times.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vqclip._cpus import cpu_model, simd_class
from vqclip.bench.models import resolve_model

LABELS = ["a red star", "a blue circle", "a green square", "a yellow triangle", "a purple heart"]


def _run(env: dict, *args: str) -> tuple[float, str]:
    """Wall seconds of ``vqclip ARGS`` in a new process, and its stderr."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vqclip.cli", *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"`vqclip {' '.join(args)}` failed ({done.returncode}): {done.stderr.decode()[-400:]}")
    return wall, done.stderr.decode()


def _median(env: dict, repeats: int, *args: str) -> float:
    _run(env, *args)  # warm-up: file cache, export cache, Python bytecode
    return statistics.median(_run(env, *args)[0] for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--images", type=int, default=200, help="scenes in the index")
    ap.add_argument("--queries", type=int, default=1000, help="texts for the --queries run")
    ap.add_argument("--vit", action="store_true", help="a random-weight ViT-B/32 instead of the bundled model")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from PIL import Image

    from vqclip.zoo import shapes

    work = Path(tempfile.mkdtemp(prefix="vqclip-cli-bench-"))
    env = {**os.environ, "VQCLIP_CACHE": str(work / "cache")}
    photos = work / "photos"
    photos.mkdir()
    scenes = shapes.sample_scenes("test", 0, args.images)
    for i, px in enumerate(shapes.render_batch(scenes, size=96)):
        Image.fromarray(px).save(photos / f"{i}.png")
    idx, img = str(work / "pics.vqindex"), str(photos / "0.png")
    model = ["--model", resolve_model("vit-b-32").source] if args.vit else []  # seed-0 weights, config stated
    _run(env, "index", "build", str(photos), "--out", idx, "--no-progress", "--backend", "onnxruntime",
         "--precision", "int8", *model)  # exports the model once, into the benchmark's cache
    _run(env, "search", idx, "a red star", "--backend", "onnxruntime", "--precision", "int8")
    queries = work / "queries.txt"
    captions = [shapes.label(c, s) for c, s in shapes.all_labels()]
    queries.write_text("\n".join(captions[i % len(captions)] for i in range(args.queries)) + "\n")

    load_before = os.getloadavg()
    rows = [
        ("vqclip --help", _median(env, args.repeats, "--help"), None),
        ("vqclip models", _median(env, args.repeats, "models"), None),
        ("vqclip search IDX TEXT", _median(env, args.repeats, "search", idx, "a red star"),
         _median(env, args.repeats, "search", idx, "a red star", "--backend", "torch")),
        ("vqclip classify IMG (5 labels)", _median(env, args.repeats, "classify", img, "--labels", *LABELS, *model),
         _median(env, args.repeats, "classify", img, "--labels", *LABELS, "--backend", "torch", *model)),
        (f"vqclip search IDX --queries ({args.queries})",
         _median(env, max(1, args.repeats // 2), "search", idx, "--queries", str(queries)),
         _median(env, max(1, args.repeats // 2), "search", idx, "--queries", str(queries), "--backend", "torch")),
    ]
    ran = [ln for ln in _run(env, "-v", "search", idx, "a red star")[1].splitlines() if "running" in ln]
    load_after = os.getloadavg()

    machine = f"{cpu_model()}, CPU class {simd_class()}, {os.cpu_count()} CPUs"
    model_name = "ViT-B/32 (random weights)" if args.vit else "shapes-clip"
    print(f"# {model_name}; {machine}; load average {load_before[0]:.2f} -> {load_after[0]:.2f}; "
          f"medians of {args.repeats}")
    print(f"# the default path: {ran[0] if ran else '(not logged)'}")
    print(f"{'command':<40} {'default (s)':>12} {'--backend torch (s)':>20} {'ratio':>7}")
    for name, fast, torch_s in rows:
        torch_txt = f"{torch_s:.2f}" if torch_s is not None else "-"
        ratio = f"{torch_s / fast:.1f}x" if torch_s is not None else "-"
        print(f"{name:<40} {fast:>12.2f} {torch_txt:>20} {ratio:>7}")
    if args.json:
        report = {"model": "ViT-B/32, random weights" if args.vit else "shapes-clip",
                  "command": "python benchmarks/bench_cli_start.py " + " ".join(sys.argv[1:]), "machine": machine,
                  "cpu_class": simd_class(), "load_average": [load_before[0], load_after[0]], "repeats": args.repeats,
                  "images": args.images, "queries": args.queries, "default_path": ran[0] if ran else None,
                  "rows": [{"command": n, "default_s": f, "torch_s": t} for n, f, t in rows]}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
