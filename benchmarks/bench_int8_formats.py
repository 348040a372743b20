"""Dynamic int8 quantisation formats for the CLIP encoders: accuracy and speed on this CPU.

ONNX Runtime's dynamic quantisation quantises activations to uint8 at run time and the
weights to int8 (QInt8, "u8s8") or uint8 (QUInt8, "u8u8"), optionally with 7-bit weights
(``reduce_range``) and per-channel scales. On x86 without VNNI, ORT's u8s8 GEMM uses
VPMADDUBSW, whose int16 pair sums saturate when full-range int8 weights meet large
activations: an export validated on a VNNI machine can give wrong embeddings on an AVX2
one. This benchmark measures each candidate on whichever CPU runs it:

- accuracy: min cosine of each int8 graph against the PyTorch module over the export's
  parity inputs plus 32 more random inputs;
- speed: median latency of the image encoder (batch 1 and 16) and the text encoder
  (batch 1), rounds interleaved so load on a shared machine hits every candidate alike.

Models: ViT-B/32 (random weights, OpenAI's shapes), the bundled shapes-clip, and the test
suite's tiny CLIP.

Usage: python benchmarks/bench_int8_formats.py [--repeats 15] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CANDIDATES = {  # name -> quantize_dynamic options
    "QInt8": {"weight_type": "QInt8"},
    "QInt8 reduce_range": {"weight_type": "QInt8", "reduce_range": True},
    "QInt8 reduce_range per-channel": {"weight_type": "QInt8", "reduce_range": True, "per_channel": True},
    "QUInt8": {"weight_type": "QUInt8"},
    "QUInt8 per-channel": {"weight_type": "QUInt8", "per_channel": True},
}


def _cpu_line() -> str:
    from vqclip._cpus import cpu_features, int8_gemm_path

    f = cpu_features()
    isa = "AVX-512" if "avx512f" in f else "AVX2" if "avx2" in f else "baseline x86-64"
    return f"{isa}, int8 GEMM path: {int8_gemm_path()}"


def _models():
    from vqclip.checkpoints import load_clip
    from vqclip.models.clip import CLIP, CLIPConfig
    from vqclip.zoo import get

    torch.manual_seed(0)
    yield "ViT-B/32 (random)", CLIP(get("ViT-B/32").config).eval()
    yield "shapes-clip", load_clip("shapes-clip")
    torch.manual_seed(0)
    yield "tiny test CLIP", CLIP(CLIPConfig(embed_dim=32, image_size=32, vision_patch_size=8, vision_width=64,
                                            vision_layers=2, vision_heads=2, context_length=77, text_width=64,
                                            text_layers=2, text_heads=2)).eval()


def _quantise(src: Path, dst: Path, options: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vqclip.export.precision import ort_optimize

    raw = dst.with_name(dst.name + ".raw")
    opts = dict(options, weight_type=getattr(QuantType, options["weight_type"]))
    quantize_dynamic(src, raw, op_types_to_quantize=["MatMul", "Gemm"], **opts)
    ort_optimize(raw, dst)
    raw.unlink()


def _inputs(component, n_extra: int = 32) -> tuple[torch.Tensor, ...]:
    base = component.parity_inputs()[0]
    if component.name == "image_encoder":
        extra = torch.randn((n_extra, *base.shape[1:]), generator=torch.Generator().manual_seed(11))
    else:
        rng = np.random.default_rng(11)
        extra = base[rng.integers(0, len(base), n_extra)].clone()
        extra[:, 1:6] = torch.from_numpy(rng.integers(1, 49000, (n_extra, 5)))
    return (torch.cat([base, extra]),)


def _min_cosine(component, path: Path) -> float:
    import onnxruntime as ort

    (x,) = _inputs(component)
    with torch.no_grad():
        ref = component.module(x).double().numpy()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {component.inputs[0].name: x.numpy()})[0].astype(np.float64)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return float(cos.min())


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds per case (interleaved)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for name in ("torch.onnx", "onnxscript", "onnx_ir", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from vqclip.export.graphs import components_for
    from vqclip.export.onnx_export import OPSET, export_onnx

    print(f"CPU: {_cpu_line()}; {args.threads} threads; load avg {os.getloadavg()[0]:.2f}")
    report: dict = {"cpu": _cpu_line(), "threads": args.threads, "load_before": os.getloadavg()[0], "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, model in _models():
            comps = {c.name: c for c in components_for(model)}
            d = Path(tmp) / model_name.split()[0].replace("/", "-")
            d.mkdir()
            for c in comps.values():
                export_onnx(c, d / f"{c.name}.onnx", OPSET)
            rows: dict = {}
            sessions: dict = {}
            for cand, options in CANDIDATES.items():
                tag = cand.replace(" ", "_")
                cos = {}
                for c in comps.values():
                    path = d / f"{c.name}.{tag}.onnx"
                    _quantise(d / f"{c.name}.onnx", path, options)
                    cos[c.name] = _min_cosine(c, path)
                    sessions[(cand, c.name)] = _session(path, args.threads)
                rows[cand] = {"min_cosine": cos, "latency_ms": {}}
            img = comps["image_encoder"]
            size = img.inputs[0].shape[-1]
            feeds = {"image b1": ("image_encoder", np.random.default_rng(0).standard_normal((1, 3, size, size),
                                                                                             dtype=np.float32)),
                     "image b16": ("image_encoder", np.random.default_rng(0).standard_normal((16, 3, size, size),
                                                                                              dtype=np.float32)),
                     "text b1": ("text_encoder", comps["text_encoder"].parity_inputs()[0][:1].numpy())}
            times: dict = {(cand, case): [] for cand in CANDIDATES for case in feeds}
            for rnd in range(args.repeats + 1):  # round 0 warms up
                for case, (comp, x) in feeds.items():
                    for cand in CANDIDATES:
                        sess = sessions[(cand, comp)]
                        t = time.perf_counter()
                        sess.run(None, {sess.get_inputs()[0].name: x})
                        if rnd:
                            times[(cand, case)].append(time.perf_counter() - t)
            for (cand, case), ts in times.items():
                rows[cand]["latency_ms"][case] = 1e3 * statistics.median(ts)
            report["models"][model_name] = rows
            print(f"\n{model_name}: min cosine vs torch ({len(_inputs(img)[0])} inputs per encoder), median latency ms")
            print(f"  {'format':<32} {'image cos':>10} {'text cos':>10} {'img b1':>8} {'img b16':>8} {'txt b1':>8}")
            for cand, r in rows.items():
                c, lat = r["min_cosine"], r["latency_ms"]
                print(f"  {cand:<32} {c['image_encoder']:>10.5f} {c['text_encoder']:>10.5f} "
                      f"{lat['image b1']:>8.2f} {lat['image b16']:>8.2f} {lat['text b1']:>8.2f}")
    report["load_after"] = os.getloadavg()[0]
    print(f"\nload avg after: {report['load_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
