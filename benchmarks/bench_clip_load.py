"""Time loading a ViT-B/32 CLIP checkpoint: vqclip's load_clip vs the peers' loaders, same files.

Random weights in each format are written to a temporary folder first (no downloads):
OpenAI's TorchScript archive (fp16), OpenAI's plain state dict (fp16) and a Hugging Face
``save_pretrained`` folder (fp32). Prints a table of median wall-clock seconds.

    PYTHONPATH=. python benchmarks/bench_clip_load.py --repeats 3   # from the repo root
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from vqclip.checkpoints import load_clip
from vqclip.checkpoints._io import read_tensors
from vqclip.models.clip import CLIP
from vqclip.zoo import get


def _openai_model_module():
    # clip-anytorch's model.py alone: its package __init__ imports torchvision.
    origin = Path(importlib.util.find_spec("clip").origin).parent / "model.py"
    spec = importlib.util.spec_from_file_location("_openai_clip_model", origin)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import transformers

    m = _openai_model_module()
    cfg = get("ViT-B/32").config
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        ref = m.build_model(CLIP(cfg).state_dict()).eval()  # fp16 weights, as OpenAI ships them
        ref_f32 = copy.deepcopy(ref).float()  # traced in fp32 (CPU), then saved as fp16
        pixels, ids = torch.randn(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(ref_f32, (pixels, ids), check_trace=False).half()
        traced.save(str(tmp / "ViT-B-32.pt"))
        torch.save(ref.state_dict(), tmp / "state_dict.pt")
        hf = transformers.CLIPModel(transformers.CLIPConfig())
        hf.save_pretrained(tmp / "hf")

        rows = [
            ("OpenAI TorchScript .pt", "vqclip load_clip", lambda: load_clip(tmp / "ViT-B-32.pt")),
            ("OpenAI TorchScript .pt", "vqclip read_tensors only", lambda: read_tensors(tmp / "ViT-B-32.pt")),
            ("OpenAI TorchScript .pt", "torch.jit.load (runs code)", lambda: torch.jit.load(str(tmp / "ViT-B-32.pt"))),
            ("OpenAI state dict .pt", "vqclip load_clip", lambda: load_clip(tmp / "state_dict.pt")),
            ("OpenAI state dict .pt", "clip build_model",
             lambda: m.build_model(torch.load(tmp / "state_dict.pt", weights_only=True))),
            ("HF safetensors folder", "vqclip load_clip", lambda: load_clip(tmp / "hf")),
            ("HF safetensors folder", "CLIPModel.from_pretrained",
             lambda: transformers.CLIPModel.from_pretrained(tmp / "hf")),
        ]
        print(f"ViT-B/32, median of {args.repeats} runs, wall-clock seconds")
        print(f"{'file':<24} {'loader':<28} {'seconds':>8}")
        for fmt, name, fn in rows:
            print(f"{fmt:<24} {name:<28} {_median_time(fn, args.repeats):8.2f}")


if __name__ == "__main__":
    main()
