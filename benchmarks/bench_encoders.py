#!/usr/bin/env python
"""Throughput and latency of the CLIP encoders per backend and precision, peers alongside.

For each model (the bundled ``shapes-clip`` when the zoo has it; ViT-B/32 shapes with
random weights) and each encoder (image, text), every runner below is timed on the same
inputs, in the same process, interleaved round by round so a load spike on a shared
machine hits them all alike:

- ``transformers`` : ``transformers.CLIPModel`` eager fp32 (its default SDPA attention),
  ``get_image_features`` / ``get_text_features``, on ``--device``; the peer the targets
  are set against;
- ``vqclip-torch`` : vqclip's own module through the torch backend (fp32; on CUDA also
  fp16/bf16, with CUDA graphs, and torch.compile with ``--compile``);
- ``onnxruntime``  : the exported graphs (fp32, fp16, int8) with the backend's defaults;
- ``tensorrt``     : the exported plans, where the package, a GPU and plans exist.

Prints, per encoder and batch: items/s (batch / mean latency), p50 and p99 latency, the
number of timed calls, and the minimum cosine to vqclip-torch fp32 on the same input.
Then the issue-5 targets (ViT-B/32 image encoder, CPU): ORT fp32 >= 1.6x and int8 >= 4x
``transformers`` at batch 16; int8 batch-1 p50 <= 25 ms. ``--sweep`` times ONNX Runtime
session settings (threads, spinning, optimisation level) on the ViT-B/32 image encoder.

Export happens first (``export.export_model``), into ``--export-root`` (kept and reused
across runs) or a temporary folder. On a shared machine, quote medians and ratios.

Examples::

    python benchmarks/bench_encoders.py                                 # full run (minutes)
    python benchmarks/bench_encoders.py --models vit-b-32 --batches 1,16 --components image
    python benchmarks/bench_encoders.py --device cuda --precisions fp32,fp16 --json out.json
    python benchmarks/bench_encoders.py --models vit-b-32 --components image --export-root new \
        --baseline-export old      # graphs of two exports, interleaved in the same rounds
    python benchmarks/bench_encoders.py --models vit-b-32 --components text --backends torch,onnxruntime \
        --precisions fp32,int8 --text-tokens 5 --export-root new --baseline-export old   # a 5-token query
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vqclip.backends import backend_status, open_backend  # noqa: E402
from vqclip.errors import BackendUnavailableError, UnknownModelError, VqclipError  # noqa: E402
from vqclip.models.clip import CLIP  # noqa: E402
from vqclip.zoo import get  # noqa: E402

EOT = 49407


@dataclass
class Row:
    model: str
    component: str  # "image" or "text"
    runner: str  # "transformers fp32", "onnxruntime int8", ...
    batch: int
    latencies_ms: list[float] = field(default_factory=list)
    min_cos: float | None = None  # vs vqclip-torch fp32 on the same input

    @property
    def items_per_s(self) -> float:
        return self.batch / (statistics.fmean(self.latencies_ms) / 1e3)

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.latencies_ms, 99))


# ---------------------------------------------------------------------------------------------
# models and runners


def build_model(name: str) -> tuple[CLIP, str] | None:
    """(module, label) for ``name``; None (with a note) when the zoo lacks it."""
    if name == "vit-b-32":
        torch.manual_seed(0)  # same random weights every run, so a kept export stays valid
        return CLIP(get("ViT-B/32").config).eval(), "vit-b-32-random"
    try:
        get(name, family="clip")
        from vqclip.export import load_source  # zoo names with bundled weights load there

        model, label, _ = load_source(name)
        return model.eval(), label
    except (UnknownModelError, VqclipError) as e:
        print(f"note: {name} skipped: {e}")
        return None


def export_dir(model: CLIP, label: str, root: Path, precisions: list[str]) -> Path:
    """An export folder with ``precisions`` for ``model``: reused when complete, else written."""
    from vqclip.export import export_model, read_manifest

    out = root / label
    if (out / "manifest.json").is_file():
        m = read_manifest(out, verify=False)
        if {p for p in precisions} <= {g.precision for g in m.graphs}:
            print(f"reusing {out}")
            return out
    t0 = time.perf_counter()
    export_model(model, out, precisions, force=True, name=label)
    print(f"exported {label} ({', '.join(precisions)}) to {out} in {time.perf_counter() - t0:.0f} s")
    return out


def hf_peer(model: CLIP, device: str = "cpu") -> tuple[Callable, Callable]:
    """transformers.CLIPModel of the same shape (own random weights), eager fp32 on ``device``."""
    from transformers import CLIPConfig as HFConfig
    from transformers import CLIPModel

    c = model.config
    hf = CLIPModel(HFConfig(
        text_config=dict(vocab_size=c.vocab_size, hidden_size=c.text_width, intermediate_size=4 * c.text_width,
                         num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads,
                         max_position_embeddings=c.context_length, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=c.vision_width, intermediate_size=4 * c.vision_width,
                           num_hidden_layers=c.vision_layers, num_attention_heads=c.vision_heads,
                           image_size=c.image_size, patch_size=c.vision_patch_size, hidden_act="quick_gelu"),
        projection_dim=c.embed_dim)).eval().to(device)

    def feats(out: object) -> np.ndarray:  # transformers 5 returns a ModelOutput, 4.x a tensor
        t = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(t, dim=-1).cpu().numpy()  # .cpu() waits for the GPU

    def image(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return feats(hf.get_image_features(pixel_values=torch.from_numpy(x).to(device)))

    def text(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return feats(hf.get_text_features(input_ids=torch.from_numpy(ids).to(device)))

    return image, text


def runners(model: CLIP, folder: Path | None, args: argparse.Namespace) -> dict[str, object]:
    """label -> backend (or ``(image_fn, text_fn)`` for the peer), for what runs here."""
    out: dict[str, object] = {}
    status = backend_status()
    if not args.no_peers:
        try:
            out["transformers fp32"] = hf_peer(model, args.device)
        except ImportError as e:
            print(f"note: transformers peer skipped: {e}")
    if "torch" in args.backends:
        out["vqclip-torch fp32"] = open_backend("torch", clip=model, device=args.device)
        if args.device.startswith("cuda"):
            for p in ("fp16", "bf16"):
                out[f"vqclip-torch {p}"] = open_backend("torch", clip=model, device=args.device, precision=p)
            out["vqclip-torch fp16+graphs"] = open_backend(
                "torch", clip=model, device=args.device, precision="fp16", cuda_graphs=True)
            if args.compile:
                out["vqclip-torch fp16+compile"] = open_backend(
                    "torch", clip=model, device=args.device, precision="fp16", compile=True)
    if "onnxruntime" in args.backends and folder is not None:
        ort_devices = ["cpu"] + (["cuda"] if args.device.startswith("cuda") else [])
        for dev in ort_devices:
            for p in args.precisions:
                if dev == "cuda" and p == "int8":
                    continue  # dynamic int8 is a CPU precision (its kernels are CPU-only)
                try:
                    out[f"onnxruntime {p}" + ("" if dev == "cpu" else f" {dev}")] = open_backend(
                        "onnxruntime", folder, precision=p, device=dev)
                except BackendUnavailableError as e:
                    print(f"note: onnxruntime {p} on {dev} skipped: {e}")
    if args.baseline_export is not None and folder is not None:
        # Another export of the same weights (e.g. written by an older vqclip), timed in the
        # same rounds: a before/after of the graphs that one load spike cannot bias.
        base = args.baseline_export / folder.name
        for p in args.precisions:
            try:
                out[f"onnxruntime {p} (baseline graphs)"] = open_backend("onnxruntime", base, precision=p)
            except (BackendUnavailableError, VqclipError) as e:
                print(f"note: baseline onnxruntime {p} skipped: {e}")
    if "tensorrt" in args.backends and folder is not None:
        if status["tensorrt"]:
            print(f"note: tensorrt skipped: {status['tensorrt']}")
        else:
            for p in ("fp32", "fp16"):
                try:
                    out[f"tensorrt {p}"] = open_backend("tensorrt", folder, precision=p)
                except BackendUnavailableError as e:
                    print(f"note: tensorrt {p} skipped: {e}")
    return out


def call(r: object, component: str) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(r, tuple):
        return r[0] if component == "image" else r[1]
    return r.encode_image if component == "image" else r.encode_text


def inputs(model: CLIP, component: str, batch: int, tokens: int = 14) -> np.ndarray:
    """Random pixels, or ids of ``tokens`` tokens (start, words, end of text) padded to the context."""
    rng = np.random.default_rng(batch)
    c = model.config
    if component == "image":
        return rng.standard_normal((batch, 3, c.image_size, c.image_size), dtype=np.float32)
    ids = np.zeros((batch, c.context_length), np.int64)  # (B, 77): start, words, EOT, padding
    ids[:, 0] = EOT - 1
    ids[:, 1:tokens - 1] = rng.integers(1, EOT - 1, (batch, tokens - 2))
    ids[:, tokens - 1] = EOT
    return ids


def measure(fns: dict[str, Callable[[np.ndarray], np.ndarray]], x: np.ndarray, args: argparse.Namespace,
            ) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Interleaved timing: each round gives every runner its share of ``--seconds``."""
    lat: dict[str, list[float]] = {k: [] for k in fns}
    outs = {k: fn(x) for k, fn in fns.items()}  # warm-up call, and the output to compare
    for k, fn in fns.items():
        fn(x)  # second warm-up: CUDA graph replay, ORT memory pattern in place
    for _ in range(args.rounds):
        for k, fn in fns.items():
            t_end = time.perf_counter() + args.seconds / args.rounds
            n = 0
            while n < args.min_iters or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                fn(x)  # returns numpy: the device work is finished when it does
                lat[k].append((time.perf_counter() - t0) * 1e3)
                n += 1
                if n >= args.max_iters:
                    break
    return lat, outs


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def bench_model(model: CLIP, label: str, folder: Path | None, args: argparse.Namespace) -> list[Row]:
    rs = runners(model, folder, args)
    for name, r in rs.items():
        if not isinstance(r, tuple):
            print(f"  {name:<28} {r.describe()}")
    rows: list[Row] = []
    for component in args.components:
        for batch in args.batches:
            x = inputs(model, component, batch, args.text_tokens)
            fns = {name: call(r, component) for name, r in rs.items()}
            lat, outs = measure(fns, x, args)
            ref = outs.get("vqclip-torch fp32")
            for name in fns:
                cos = None if ref is None or name.startswith("transformers") else min_cos(outs[name], ref)
                rows.append(Row(label, component, name, batch, lat[name], cos))
            print_rows([r for r in rows if r.component == component and r.batch == batch])
    return rows


# ---------------------------------------------------------------------------------------------
# reports


def print_rows(rows: list[Row]) -> None:
    if not rows:
        return
    r0 = rows[0]
    peer = next((r for r in rows if r.runner.startswith("transformers")), None)
    print(f"\n{r0.model} {r0.component} encoder, batch {r0.batch}")
    print(f"  {'runner':<30}{'items/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'n':>5}{'x peer':>8}{'min cos':>10}")
    for r in rows:
        ratio = f"{r.items_per_s / peer.items_per_s:.2f}" if peer else "-"
        cos = f"{r.min_cos:.6f}" if r.min_cos is not None else "-"
        print(f"  {r.runner:<30}{r.items_per_s:>10.1f}{r.p50:>10.1f}{r.p99:>10.1f}{len(r.latencies_ms):>5}"
              f"{ratio:>8}{cos:>10}")


def targets(model: CLIP, folder: Path, args: argparse.Namespace) -> list[dict]:
    """The issue-5 targets on the ViT-B/32 image encoder (CPU), measured interleaved."""
    peer_img, _ = hf_peer(model)
    fp32 = open_backend("onnxruntime", folder, precision="fp32")
    int8 = open_backend("onnxruntime", folder, precision="int8")
    fns = {"transformers fp32": peer_img, "onnxruntime fp32": fp32.encode_image,
           "onnxruntime int8": int8.encode_image}
    lat16, _ = measure(fns, inputs(model, "image", 16), args)
    lat1, _ = measure({"onnxruntime int8": int8.encode_image}, inputs(model, "image", 1), args)
    thr = {k: 16 / (statistics.fmean(v) / 1e3) for k, v in lat16.items()}
    p50 = float(np.percentile(lat1["onnxruntime int8"], 50))
    peer = thr["transformers fp32"]
    res = [
        {"target": "ORT fp32 >= 1.6x transformers, batch 16", "reached": thr["onnxruntime fp32"] / peer, "bound": 1.6},
        {"target": "ORT int8 >= 4x transformers, batch 16", "reached": thr["onnxruntime int8"] / peer, "bound": 4.0},
        {"target": "ORT int8 batch-1 p50 <= 25 ms", "reached": p50, "bound": 25.0},
    ]
    print(f"\ntargets (ViT-B/32 image encoder, CPU; transformers {thr['transformers fp32']:.1f} img/s, "
          f"ORT fp32 {thr['onnxruntime fp32']:.1f}, int8 {thr['onnxruntime int8']:.1f} at batch 16)")
    for t in res:
        ok = t["reached"] <= t["bound"] if "ms" in t["target"] else t["reached"] >= t["bound"]
        unit = " ms" if "ms" in t["target"] else "x"
        print(f"  {t['target']:<44} reached {t['reached']:.2f}{unit}  {'MET' if ok else 'NOT MET'}")
        t["met"] = ok
    return res


def sweep(model: CLIP, folder: Path, args: argparse.Namespace) -> list[dict]:
    """ONNX Runtime session settings on the ViT-B/32 image encoder, interleaved."""
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = {
        f"threads={n_cpu} spin": dict(intra_op_threads=n_cpu, allow_spinning=True),
        f"threads={n_cpu} nospin": dict(intra_op_threads=n_cpu, allow_spinning=False),
        f"threads={n_cpu} dynamic_block_base=4": dict(intra_op_threads=n_cpu, dynamic_block_base=4),
        "threads=1": dict(intra_op_threads=1),
        f"threads={n_cpu} opt=basic": dict(intra_op_threads=n_cpu, graph_optimization_level="basic"),
        f"threads={n_cpu} no arena/pattern": dict(intra_op_threads=n_cpu, enable_cpu_mem_arena=False,
                                                  enable_mem_pattern=False),
    }
    out = []
    for p in ("fp32", "int8"):
        for batch in (1, 16):
            fns = {k: open_backend("onnxruntime", folder, precision=p, **o).encode_image for k, o in settings.items()}
            lat, _ = measure(fns, inputs(model, "image", batch), args)
            print(f"\nsweep: ORT {p} image encoder, batch {batch}")
            for k, v in lat.items():
                thr = batch / (statistics.fmean(v) / 1e3)
                print(f"  {k:<32}{thr:>8.1f} img/s  p50 {np.percentile(v, 50):8.1f} ms  n {len(v)}")
                out.append({"precision": p, "batch": batch, "setting": k, "items_per_s": thr,
                            "p50_ms": float(np.percentile(v, 50))})
    return out


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")  # temp + rename: never a half-written report
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--models", type=csv, default=["shapes-clip", "vit-b-32"])
    p.add_argument("--components", type=csv, default=["image", "text"])
    p.add_argument("--batches", type=lambda s: [int(x) for x in csv(s)], default=[1, 8, 32])
    p.add_argument("--backends", type=csv, default=["torch", "onnxruntime", "tensorrt"])
    p.add_argument("--precisions", type=csv, default=["fp32", "fp16", "int8"], help="ONNX precisions")
    p.add_argument("--device", default="cpu", help="cpu or cuda (adds torch fp16/bf16/CUDA graphs, ORT CUDA)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile on CUDA (slow to start)")
    p.add_argument("--no-peers", action="store_true", help="skip transformers.CLIPModel")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per (encoder, batch)")
    p.add_argument("--seconds", type=float, default=3.0, help="time budget per runner per (encoder, batch)")
    p.add_argument("--min-iters", type=int, default=1, help="timed calls per runner per round, at least")
    p.add_argument("--max-iters", type=int, default=50, help="timed calls per runner per round, at most")
    p.add_argument("--no-targets", action="store_true", help="skip the issue-5 target block")
    p.add_argument("--sweep", action="store_true", help="time ORT session settings on ViT-B/32")
    p.add_argument("--export-root", type=Path, help="keep exports here and reuse them (default: temp)")
    p.add_argument("--baseline-export", type=Path, help="a root holding another export of the same models "
                   "(same folder names); its ONNX Runtime graphs are timed alongside as a before/after")
    p.add_argument("--text-tokens", type=int, default=14,
                   help="tokens per text query, start and end of text included (2..context length)")
    p.add_argument("--json", type=Path, help="write all measurements here")
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads for the torch runners "
                   "(default: torch's choice; 1 can win on an oversubscribed CPU)")
    args = p.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    tmp = None if args.export_root else tempfile.TemporaryDirectory(prefix="vqclip-bench-")
    root = args.export_root or Path(tmp.name)
    report: dict = {"rows": [], "targets": [], "sweep": [], "argv": sys.argv[1:],
                    "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if k in os.environ},
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        for name in args.models:
            built = build_model(name)
            if built is None:
                continue
            model, label = built
            folder = None
            if {"onnxruntime", "tensorrt"} & set(args.backends):
                wanted = ["fp32", *args.precisions] + ([] if args.no_targets or name != "vit-b-32" else ["int8"])
                try:
                    folder = export_dir(model, label, root, list(dict.fromkeys(wanted)))
                except (ImportError, VqclipError) as e:  # e.g. onnxscript missing on a bare GPU box
                    print(f"note: export of {label} failed, ONNX Runtime/TensorRT rows skipped: {e}")
            rows = bench_model(model, label, folder, args)
            report["rows"] += [asdict(r) | {"items_per_s": r.items_per_s, "p50_ms": r.p50, "p99_ms": r.p99}
                               for r in rows]
            if name == "vit-b-32" and folder is not None and not args.no_targets:
                report["targets"] = targets(model, folder, args)
            if name == "vit-b-32" and folder is not None and args.sweep:
                report["sweep"] = sweep(model, folder, args)
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.json:
        write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
