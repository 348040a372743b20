"""The threading contract: one backend instance answers several threads at once, and each
caller gets exactly the rows of its own input, as a serial call would."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vqclip.backends import open_backend


def _inputs(tiny, n: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    s, cfg = tiny.CLIP.image_size, tiny.CLIP
    out = []
    for i in range(n):
        b = 1 + i % 3  # different batch sizes interleave
        if i % 2:
            out.append(("image", rng.standard_normal((b, 3, s, s), dtype=np.float32)))
        else:
            ids = rng.integers(1, cfg.vocab_size - 2, (b, cfg.context_length), dtype=np.int64)
            ids[:, 0], ids[:, 5 + i % 20] = cfg.vocab_size - 2, cfg.vocab_size - 1
            out.append(("text", ids))
    return out


@pytest.fixture(params=["torch", "onnxruntime-fp32", "onnxruntime-int8"])
def backend(request, tiny_clip, tiny_clip_export):
    name, _, precision = request.param.partition("-")
    if name == "torch":
        return open_backend("torch", clip=tiny_clip)
    return open_backend(name, tiny_clip_export, precision=precision)


def test_concurrent_calls_equal_serial_calls(tiny, backend):
    work = _inputs(tiny, 48)

    def call(item):
        kind, x = item
        return backend.encode_image(x) if kind == "image" else backend.encode_text(x)

    serial = [call(w) for w in work]
    for _ in range(2):  # fresh threads race for lazily created sessions too
        with ThreadPoolExecutor(max_workers=6) as pool:
            concurrent = list(pool.map(call, work))
        for got, want in zip(concurrent, serial):
            np.testing.assert_array_equal(got, want)


def test_one_encoder_serves_threads_without_a_lock(tiny):
    enc = tiny.encoder()
    texts = [f"a picture of thing number {i}" for i in range(24)]
    serial = [enc.encode_texts([t]) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda t: enc.encode_texts([t]), texts))
    for got, want in zip(concurrent, serial):
        np.testing.assert_array_equal(got, want)
    assert not hasattr(enc, "_lock")
