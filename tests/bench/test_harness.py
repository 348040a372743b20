"""The harness's own mechanisms: interleaved timing and the peak-memory blocks."""
from __future__ import annotations

import numpy as np
import pytest

from vqclip.bench.harness import Options, Peak, measure


def test_measure_calls_every_runner_once_per_round_after_a_warm_up():
    calls = {"a": 0, "b": 0}

    def count(name):
        calls[name] += 1

    lat = measure({"a": lambda: count("a"), "b": lambda: count("b")}, seconds=0.0, min_rounds=4)
    assert len(lat["a"]) == len(lat["b"]) == 4 and calls == {"a": 5, "b": 5}


def _peak_resets() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _peak_resets(), reason="this kernel refuses /proc/self/clear_refs (no per-block peak)")
def test_a_nested_peak_does_not_erase_the_outer_one():
    with Peak() as outer:
        big = np.ones(200 * 2**20 // 8)
        big += 1  # touched: 200 MiB resident
        del big
        with Peak() as inner:
            small = np.ones(4 * 2**20 // 8)
            small += 1
    assert outer.result["peak_rss_mib"] >= outer.result["rss_start_mib"] + 190
    assert inner.result["peak_rss_mib"] < outer.result["peak_rss_mib"] - 150


def test_encoder_pairs_follow_the_device():
    cpu = Options(jobs=(), backends=("torch", "onnxruntime"), precisions=("fp32", "fp16", "int8"))
    assert cpu.encoder_pairs() == [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                                   ("onnxruntime", "int8")]
    assert cpu.preferred_pair() == ("onnxruntime", "int8")
    cuda = Options(jobs=(), backends=("torch", "onnxruntime"), precisions=("fp16", "int8"), device="cuda")
    assert cuda.encoder_pairs() == [("torch", "fp16"), ("onnxruntime", "fp16")]
