"""Check int8 exports on the other x86 CPU class, by emulating it: AVX2 + FMA, no AVX-512,
no VNNI (QEMU's Haswell model under ``qemu-x86_64``, Debian package ``qemu-user``).

ONNX Runtime picks its int8 GEMM from CPUID, which QEMU emulates, so the AVX2 kernel
(VPMADDUBSW, int16 pair sums) runs even on an AVX-512 VNNI host. For the bundled
shapes-clip and the test suite's tiny CLIP this prints, natively and emulated, each
graph's min cosine against the PyTorch module for: vqclip's int8 export (7-bit weights),
full-range QInt8 weights (what vqclip wrote before), and uint8 weights; then opens
vqclip's export and a full-range one through ``OnnxRuntimeBackend`` under emulation, so
the int8 self-test either passes or refuses the graph in one line.

Usage: python benchmarks/check_int8_avx2_emulated.py   (a few minutes; needs qemu-x86_64)
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

QEMU = ["qemu-x86_64", "-cpu", "Haswell-v4"]

_COSINES = r"""
import json, sys, numpy as np, onnxruntime as ort
out = {}
for graph, io in json.loads(sys.argv[1]):
    d = np.load(io)
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
    s = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    got = s.run(None, {str(d["name"]): d["x"]})[0].astype(np.float64)
    ref = d["ref"].astype(np.float64)
    out[graph] = float(((got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))).min())
print(json.dumps(out))
"""

_BACKEND = r"""
import sys, numpy as np
from vqclip.backends import open_backend
from vqclip.errors import BackendUnavailableError
be = open_backend("onnxruntime", sys.argv[1], precision="int8", intra_op_threads=1)
ids = np.zeros((2, be.spec("text_encoder").inputs[0].shape[1]), np.int64); ids[:, :3] = [49406, 320, 49407]
size = be.spec("image_encoder").inputs[0].shape[-1]
for what, call in (("text", lambda: be.encode_text(ids)),
                   ("image", lambda: be.encode_image(np.zeros((1, 3, size, size), np.float32)))):
    try:
        call()
        print(f"  {what}: self-test passed, encoded")
    except BackendUnavailableError as e:
        print(f"  {what}: refused: {e}")
"""


def _run(cmd: list[str], *args: str) -> str:
    res = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=3600)
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])
    return res.stdout


def main() -> None:
    if shutil.which(QEMU[0]) is None:
        raise SystemExit("qemu-x86_64 is not installed (Debian: apt-get install qemu-user)")
    logging.disable(logging.WARNING)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vqclip._hashing import sha256_file
    from vqclip.checkpoints import load_clip
    from vqclip.export import export_model
    from vqclip.export.graphs import components_for
    from vqclip.export.precision import ort_optimize
    from vqclip.models.clip import CLIP, CLIPConfig

    torch.manual_seed(0)
    tiny = CLIP(CLIPConfig(embed_dim=32, image_size=32, vision_patch_size=8, vision_width=64, vision_layers=2,
                           vision_heads=2, context_length=77, text_width=64, text_layers=2, text_heads=2)).eval()
    models = {"shapes-clip": load_clip("shapes-clip"), "tiny test CLIP": tiny}
    variants = {"full-range QInt8": {"weight_type": QuantType.QInt8},
                "uint8 weights": {"weight_type": QuantType.QUInt8}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs, rows = [], []
        for name, model in models.items():
            folder = tmp / name.replace(" ", "-")
            export_model(model, folder, ["int8"], name=name)
            legacy = tmp / (folder.name + "-full-range")
            shutil.copytree(folder, legacy)
            manifest = json.loads((legacy / "manifest.json").read_text())
            for c in components_for(model):
                (x,) = c.parity_inputs()
                with torch.no_grad():
                    ref = c.module(x).numpy()
                io = tmp / f"{folder.name}.{c.name}.npz"
                np.savez(io, x=x.numpy(), ref=ref, name=c.inputs[0].name)
                graphs = {"vqclip int8 (7-bit weights)": folder / f"{c.name}.int8.onnx"}
                for label, opts in variants.items():
                    raw = tmp / f"{folder.name}.{c.name}.{label.split()[0]}.raw.onnx"
                    dst = raw.with_name(raw.name.replace(".raw", ""))
                    quantize_dynamic(folder / f"{c.name}.onnx", raw, op_types_to_quantize=["MatMul", "Gemm"], **opts)
                    ort_optimize(raw, dst)
                    graphs[label] = dst
                # The legacy copy: full-range QInt8 graphs with their own (honest) self-tests.
                shutil.copy(graphs["full-range QInt8"], legacy / f"{c.name}.int8.onnx")
                for g in manifest["graphs"]:
                    if g["file"] == f"{c.name}.int8.onnx":
                        g["sha256"] = sha256_file(legacy / g["file"])
                        st = legacy / g["selftest"]["file"]
                        with np.load(st) as d:
                            inputs = d["inputs"]
                        with torch.no_grad():
                            x_st = torch.from_numpy(inputs).float() if inputs.dtype != np.int64 else torch.from_numpy(inputs)
                            np.savez(st, inputs=inputs, outputs=c.module(x_st).float().numpy())
                        g["selftest"]["sha256"] = sha256_file(st)
                for label, path in graphs.items():
                    rows.append((name, c.name, label, str(path)))
                    jobs.append((str(path), str(io)))
            (legacy / "manifest.json").write_text(json.dumps(manifest))
        native = json.loads(_run([sys.executable, "-c", _COSINES], json.dumps(jobs)))
        emulated = json.loads(_run(QEMU + [sys.executable, "-c", _COSINES], json.dumps(jobs)))
        print("min cosine vs the PyTorch module on the export's parity inputs")
        print(f"{'model':<15} {'graph':<14} {'int8 weights':<28} {'native (this CPU)':>18} {'emulated AVX2':>14}")
        for name, comp, label, path in rows:
            print(f"{name:<15} {comp:<14} {label:<28} {native[path]:>18.5f} {emulated[path]:>14.5f}")
        for name in models:
            for suffix, what in (("", "vqclip's export"), ("-full-range", "a full-range QInt8 export")):
                folder = tmp / (name.replace(" ", "-") + suffix)
                print(f"\nOnnxRuntimeBackend under emulated AVX2, {name}, {what}:")
                print(_run(QEMU + [sys.executable, "-c", _BACKEND], str(folder)).rstrip())


if __name__ == "__main__":
    main()
