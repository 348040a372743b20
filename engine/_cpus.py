"""How many CPUs this process may use, and which instruction sets they have: the answers
the kernels, the backends and the export manifest share."""
from __future__ import annotations

import functools
import os
import platform

__all__ = ["available_cpus", "cpu_features", "cpu_model", "simd_class", "has_vnni", "int8_gemm_path"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, so containers and taskset count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=None)
def _cpuinfo_first(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``keys`` (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (Linux ``/proc/cpuinfo``); empty
    where they cannot be read. Example: ``"avx512_vnni" in cpu_features()``."""
    return frozenset((_cpuinfo_first("flags", "Features") or "").split())


def cpu_model() -> str:
    """The CPU's name as the kernel reports it ("Intel(R) Xeon(R) Processor"), else the
    platform's word for it: what a figure names beside its CPU class."""
    return _cpuinfo_first("model name") or platform.processor() or platform.machine()


def simd_class() -> str:
    """This CPU's class for the figures vqclip records: "avx512-vnni", "avx512", "avx2",
    "x86-64", or the machine name elsewhere ("aarch64")."""
    f = cpu_features()
    if "avx512f" in f:
        return "avx512-vnni" if "avx512_vnni" in f else "avx512"
    if "avx2" in f:
        return "avx2"
    machine = platform.machine().lower()
    return "x86-64" if machine in ("x86_64", "amd64") else machine


def has_vnni() -> bool:
    """Whether ONNX Runtime's int8 GEMM accumulates in int32 here (AVX512-VNNI or AVX-VNNI)."""
    f = cpu_features()
    return "avx512_vnni" in f or "avx_vnni" in f


def int8_gemm_path() -> str:
    """How ONNX Runtime's x86 int8 GEMM (uint8 activations x int8 weights) runs here.

    With VNNI (AVX512-VNNI or AVX-VNNI) its dot products accumulate in int32 and cannot
    saturate; without it, VPMADDUBSW sums pairs of products in int16, which saturates for
    full-range int8 weights (what ``vqclip.export`` avoids with 7-bit int8 weights, ``reduce_range``).
    """
    f = cpu_features()
    if has_vnni():
        return f"vnni ({'avx512_vnni' if 'avx512_vnni' in f else 'avx_vnni'})"
    if "avx2" in f:
        return "avx2 vpmaddubsw (int16 pair sums)"
    return "generic" if f else "unknown"
