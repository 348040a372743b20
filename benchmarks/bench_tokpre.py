"""Tokenizer and image preprocessing throughput, vqclip vs the peers, in one run.

Tokenizer: ``vqclip.tokenizer.Tokenizer`` vs OpenAI's ``SimpleTokenizer`` + ``clip.tokenize``
logic (clip-anytorch), on caption-like texts; "cold" is a fresh instance (empty word
caches), "warm" the same instance a second time.
Preprocessing: JPEG bytes -> float32 (B, 3, 224, 224); vqclip serial, vqclip with
``decode_batches`` threads, and transformers' ``CLIPImageProcessorPil`` (decode by Pillow).

Prints a table of medians over ``--repeats`` runs. Run it with ``nice`` on a shared
machine and read ratios rather than absolute times.

    python benchmarks/bench_tokpre.py --texts 2000 --images 64 --repeats 5
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import random
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vqclip.decode import decode_batches
from vqclip.preprocess import Preprocessor, load_image
from vqclip.tokenizer import Tokenizer

WORDS = (
    "a photo of the cat dog red blue green circle square triangle on in with small large "
    "bright dark diagram painting city street night beach mountain person's they're café "
    "naïve 2024 3d 🎉 日本 über"
).split()


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(n)]


def openai_reference():
    spec = importlib.util.find_spec("clip")
    path = Path(spec.origin).parent / "simple_tokenizer.py"
    mspec = importlib.util.spec_from_file_location("_openai_simple_tokenizer", path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module.SimpleTokenizer


def openai_tokenize(tok, texts, context_length=77):
    """clip.tokenize's arithmetic with numpy instead of torch (the BPE dominates)."""
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    out = np.zeros((len(texts), context_length), dtype=np.int64)
    for i, t in enumerate(texts):
        ids = [sot] + tok.encode(t) + [eot]
        out[i, : len(ids)] = ids
    return out


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_tokenizer(n: int, repeats: int) -> list[tuple[str, float, str]]:
    texts = captions(n)
    simple = openai_reference()
    rows = []
    cold_ours = median_time(lambda: Tokenizer()(texts), repeats)
    cold_ref = median_time(lambda: openai_tokenize(simple(), texts), repeats)
    ours, ref = Tokenizer(), simple()
    assert (ours(texts) == openai_tokenize(ref, texts)).all()  # also warms both caches
    warm_ours = median_time(lambda: ours(texts), repeats)
    warm_ref = median_time(lambda: openai_tokenize(ref, texts), repeats)
    rows.append((f"tokenize {n} texts, cold: vqclip", cold_ours, f"{n / cold_ours:,.0f} texts/s"))
    rows.append((f"tokenize {n} texts, cold: OpenAI SimpleTokenizer", cold_ref, f"{n / cold_ref:,.0f} texts/s"))
    rows.append((f"tokenize {n} texts, warm: vqclip", warm_ours, f"{n / warm_ours:,.0f} texts/s"))
    rows.append((f"tokenize {n} texts, warm: OpenAI SimpleTokenizer", warm_ref, f"{n / warm_ref:,.0f} texts/s"))
    return rows


class _Decoded:
    """What decode_batches' loader returns, for in-memory blobs (no file, no hashing)."""

    def __init__(self, image):
        self.image = image


def bench_preprocess(n: int, repeats: int, workers: int) -> list[tuple[str, float, str]]:
    rng = np.random.default_rng(0)
    blobs = []
    for i in range(n):
        w, h = (640, 480) if i % 2 else (500, 375)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        blobs.append(buf.getvalue())
    pre = Preprocessor()
    from transformers import CLIPImageProcessorPil

    hf = CLIPImageProcessorPil()

    def threaded():
        batches = decode_batches(blobs, lambda b: _Decoded(load_image(b)), pre, batch_size=len(blobs), workers=workers)
        return np.concatenate([px for _, _, px, _ in batches])

    def hf_run():
        return hf(images=[Image.open(io.BytesIO(b)) for b in blobs], return_tensors="np")["pixel_values"]

    rows = []
    for name, fn in [
        ("vqclip Preprocessor, serial", lambda: pre(blobs)),
        (f"vqclip decode_batches(workers={workers})", threaded),
        ("transformers CLIPImageProcessorPil", hf_run),
    ]:
        t = median_time(fn, repeats)
        rows.append((f"preprocess {n} JPEGs: {name}", t, f"{n / t:,.0f} images/s"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rows = bench_tokenizer(args.texts, args.repeats) + bench_preprocess(args.images, args.repeats, args.workers)
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'median s':>9}  throughput")
    for name, t, rate in rows:
        print(f"{name:<{width}}  {t:>9.4f}  {rate}")


if __name__ == "__main__":
    main()
