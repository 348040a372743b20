"""Export of ViT-B/32 (random weights, OpenAI's shapes): time, parity per precision, and
whether ONNX Runtime's transformer fusions pay off on this CPU.

Prints two tables:
1. export wall time per precision set (all graphs, validation included) and the parity
   figures written into the manifest;
2. image encoder throughput at batch 16 on ONNX Runtime CPU (images/s, median of
   repeats) and session start time for: the fp32 graph as exported, the same after
   ``onnxruntime.transformers.optimizer`` fusions (fp32), the int8 graph as saved, and
   the int8 graph before ONNX Runtime's offline optimisation.

Usage: nice -n 10 python benchmarks/bench_export.py [--repeats 5] [--batch 16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _start_seconds(path: Path, threads: int, repeats: int = 3) -> float:
    """Median time to create a session with all optimisations on (what the backend does)."""
    import onnxruntime as ort

    times = []
    for _ in range(repeats):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        t = time.perf_counter()
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _throughput(path: Path, batch: int, repeats: int, threads: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    sess.run(None, {"pixels": x})  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"pixels": x})
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("torch.onnx", "onnxscript", "onnx_ir", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from vqclip.export import export_model
    from vqclip.export.graphs import components_for
    from vqclip.models.clip import CLIP
    from vqclip.zoo import get

    torch.manual_seed(0)
    model = CLIP(get("ViT-B/32").config).eval()
    results: dict = {"export": [], "throughput": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"{'precisions':<18} {'export s':>9}   graph: max abs diff / min cosine")
        for precisions in (["fp32"], ["fp16", "int8"]):
            t = time.perf_counter()
            m = export_model(model, tmp / "-".join(precisions), precisions, name="vit-b-32-random")
            secs = time.perf_counter() - t
            figures = {g.file: (g.parity["max_abs_diff"], g.parity["min_cosine"]) for g in m.graphs}
            results["export"].append({"precisions": precisions, "seconds": secs, "parity": figures})
            detail = "; ".join(f"{f} {d:.1e}/{c:.6f}" for f, (d, c) in figures.items())
            print(f"{'+'.join(['fp32'] + [p for p in precisions if p != 'fp32']):<18} {secs:>9.1f}   {detail}")

        from onnxruntime.transformers import optimizer

        d = tmp / "fp16-int8"
        image = components_for(model)[0]
        fused = tmp / "image_encoder.fused.onnx"
        opt = optimizer.optimize_model(str(d / "image_encoder.onnx"), opt_level=0, **image.transformer)
        opt.save_model_to_file(str(fused))
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8_raw = tmp / "image_encoder.int8-unoptimised.onnx"
        quantize_dynamic(d / "image_encoder.onnx", int8_raw, op_types_to_quantize=["MatMul", "Gemm"],
                         weight_type=QuantType.QInt8)
        rows = [("fp32 as exported", d / "image_encoder.onnx"), (f"fp32 + fusions {stats}", fused),
                ("int8 as saved (ORT-optimised)", d / "image_encoder.int8.onnx"),
                ("int8 before ORT optimisation", int8_raw)]
        print(f"\nimage encoder, ONNX Runtime CPU, batch {args.batch}, {args.threads} threads, "
              f"median of {args.repeats}")
        print(f"  {'graph':<50} {'img/s':>8} {'session start s':>16}")
        for label, path in rows:
            ips = _throughput(path, args.batch, args.repeats, args.threads)
            start = _start_seconds(path, args.threads)
            results["throughput"][label] = {"images_per_s": ips, "session_start_s": start}
            print(f"  {label:<50} {ips:8.1f} {start:16.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
