"""What every bench job shares: its options, interleaved timing within a time budget, the
statistics of a row, peak memory, and a description of the machine the figures came from."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import resource
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Options", "measure", "stats", "make_row", "Peak", "machine_info", "load_average"]


@dataclass
class Options:
    """What `vqclip bench` was asked to run; a job reads the fields it needs."""

    jobs: tuple[str, ...]
    models: tuple[str, ...] = ("shapes-clip",)
    backends: tuple[str, ...] = ("torch", "onnxruntime")
    precisions: tuple[str, ...] = ("fp32", "int8")
    batches: tuple[int, ...] = (1, 16)
    device: str = "cpu"
    quick: bool = False
    seconds: float = 3.0  # timing budget of one case (all its runners together)
    rows: tuple[int, ...] = ()  # gallery / index sizes; () = the job's default for quick or full
    peers: bool = True
    explicit: dict[str, Any] = field(default_factory=dict)  # the flags the user gave, for each row's invocation

    def encoder_pairs(self) -> list[tuple[str, str]]:
        """(backend, precision) of each encoder the jobs time: each asked backend at each asked
        precision it runs on this device (torch at fp32 alone on a CPU; no int8 on CUDA)."""
        from vqclip.backends.factory import BACKEND_PRECISIONS

        cuda = self.device.startswith("cuda")
        pairs = [(b, p) for b in self.backends for p in self.precisions if p in BACKEND_PRECISIONS[b]
                 and not (b == "torch" and p != "fp32" and not cuda)
                 and not (b == "onnxruntime" and p == "int8" and cuda)]  # dynamic int8 kernels are CPU-only
        return pairs or [("torch", "fp32")]

    def preferred_pair(self) -> tuple[str, str]:
        """The encoder of jobs that time one: ONNX Runtime int8 when asked for (what the CLI picks
        on a CPU once the export is cached), else the first pair."""
        pairs = self.encoder_pairs()
        return ("onnxruntime", "int8") if ("onnxruntime", "int8") in pairs else pairs[0]

    def command(self, all_jobs: tuple[str, ...] = ()) -> str:
        """The `vqclip bench` command line that asks for this run."""
        return self._line(() if self.jobs == all_jobs else self.jobs, self.explicit)

    def invocation(self, job: str, **narrow: Any) -> str:
        """The `vqclip bench` command that measures one row again: this job, the user's flags,
        narrowed to the row's own model / batch / rows."""
        return self._line((job,), {**self.explicit, **{k: v for k, v in narrow.items() if v is not None}})

    def _line(self, jobs: tuple[str, ...], flags: dict[str, Any]) -> str:
        parts = ["vqclip bench", *jobs] + (["--quick"] if self.quick else []) + ([] if self.peers else ["--no-peers"])
        for key, value in flags.items():
            if isinstance(value, (tuple, list)):
                value = ",".join(str(v) for v in value)
            parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(value))}")
        return " ".join(parts)


def measure(runners: dict[str, Callable[[], Any]], seconds: float, min_rounds: int = 3, max_rounds: int = 2000,
            warmup: int = 1, sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Per runner, the seconds of each timed call. One call of each runner per round, in an
    order shuffled per round, so load on a shared machine and cache state hit them alike;
    rounds go on until ``seconds`` have passed (at least ``min_rounds``)."""
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    if sync:
        sync()
    lat: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    rng = random.Random(0)
    start = time.perf_counter()
    for r in range(max_rounds):
        if r >= min_rounds and time.perf_counter() - start > seconds:
            break
        rng.shuffle(order)
        for name in order:
            t = time.perf_counter()
            runners[name]()
            if sync:
                sync()
            lat[name].append(time.perf_counter() - t)
    return lat


def stats(latencies_s: list[float], items: int = 1) -> dict[str, float]:
    """p50/p90/p99/mean in ms, and items per second over the mean call."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {"n": int(ms.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean,
            "throughput": items * 1e3 / mean if mean > 0 else float("inf")}


def cdf_points(latencies_s: list[float]) -> list[float]:
    """Latency (ms) at each percent 0..100: enough for a CDF plot, small enough for the report."""
    return [float(v) for v in np.percentile(np.asarray(latencies_s) * 1e3, np.arange(101))]


def make_row(job: str, case: str, runner: str, latencies_s: list[float] | None = None, *, items: int = 1,
             unit: str = "items/s", peer: bool = False, reproduce: str = "", keep_cdf: bool = False,
             **extra: Any) -> dict:
    """One measured figure: what ran (job, case, runner), its statistics, and how to reproduce it."""
    row: dict[str, Any] = {"job": job, "case": case, "runner": runner, "peer": peer, "unit": unit, "items": items}
    if latencies_s:
        row.update(stats(latencies_s, items))
        if keep_cdf:
            row["cdf_ms"] = cdf_points(latencies_s)
    row.update(extra)
    row["reproduce"] = reproduce
    return row


def add_ratios(rows: list[dict], reference: str, key: str = "throughput") -> None:
    """Each row's ``key`` over the ``reference`` runner's in the same case (higher is better),
    as ``ratio`` with ``vs`` naming the reference."""
    ref = {(r["case"], r["unit"]): r[key] for r in rows if r["runner"] == reference and r.get(key)}
    for r in rows:
        if (r["case"], r["unit"]) in ref and r.get(key) and not r.get("reference"):
            r["ratio"] = r[key] / ref[r["case"], r["unit"]]
            r["vs"] = reference


class Peak:
    """Peak resident memory of this process over a block (and the resident memory when it
    began: memory an earlier job still holds counts in both), and peak CUDA memory on a GPU.

    Linux resets the high-water mark (VmHWM) on writing 5 to /proc/self/clear_refs; where
    that is refused the figure is the process's peak since it started, and says so. Blocks
    nest: an inner block's reset first hands the peak so far to the blocks around it."""

    _open: list["Peak"] = []  # the blocks entered and not yet left, outermost first

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.result: dict[str, Any] = {}

    def _peaks(self) -> tuple[float, float]:
        cuda = 0.0
        if self.device.startswith("cuda"):
            import torch

            cuda = torch.cuda.max_memory_allocated() / 2**20
        return _status_mib("VmHWM:"), cuda

    def __enter__(self) -> "Peak":
        rss, cuda = self._peaks()
        for outer in Peak._open:  # the reset below would erase what they have seen so far
            outer.seen = (max(outer.seen[0], rss), max(outer.seen[1], cuda))
        self.start, self.seen = _status_mib("VmRSS:"), (0.0, 0.0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.scope = "job"
        except OSError:
            self.scope = "process"
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        Peak._open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        Peak._open.remove(self)
        rss, cuda = self._peaks()
        self.result = {"peak_rss_mib": max(rss, self.seen[0]), "rss_start_mib": self.start,
                       "peak_rss_scope": self.scope}
        if self.device.startswith("cuda"):
            self.result["peak_cuda_mib"] = max(cuda, self.seen[1])


def _status_mib(field: str) -> float:
    """A memory line of /proc/self/status in MiB; elsewhere the process's peak (ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
          "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "asimd", "sve")
_PACKAGES = ("vqclip", "torch", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "faiss-cpu", "transformers",
             "tensorrt", "kornia", "fastapi", "uvicorn", "httpx", "matplotlib")


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model and the ISA flags the figures depend on, threads, GPU, package versions."""
    from vqclip._cpus import available_cpus, cpu_features, cpu_model, simd_class

    feats = cpu_features()
    out: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_class": simd_class(), "isa": [f for f in _FLAGS if f in feats],
        "cpus": os.cpu_count(), "cpus_available": available_cpus(), "platform": platform.platform(),
        "python": platform.python_version(), "device": device,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "VQCLIP_SIMD") if k in os.environ},
    }
    try:
        from vqclip import kernels

        k = kernels.info()
        out["kernels"] = {"simd": k["simd"], "threads": k["max_threads"], "int8_gemm": k["int8_gemm"]}
    except Exception as e:  # noqa: BLE001 - an unbuilt extension is reported, not fatal here
        out["kernels"] = {"error": str(e)}
    import torch

    out["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "sm": f"{p.major}{p.minor}",
                      "cuda": torch.version.cuda}
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["versions"] = versions
    return out


