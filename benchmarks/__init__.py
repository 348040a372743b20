"""``vqclip.bench``: what ``vqclip bench`` runs. Each job measures vqclip and its peers in the
same run, round by round, and returns rows; ``run`` adds the machine and memory of each job
into one report, which ``vqclip.bench.report`` prints, writes (JSON, Markdown, PNG plots)
and compares with an earlier one.

Example::

    from vqclip.bench import Options, run
    report = run(Options(jobs=("topk",), quick=True))
"""
from __future__ import annotations

import datetime
import logging
import time
import traceback
from typing import Callable

from .harness import Options, Peak, load_average, machine_info

__all__ = ["JOBS", "DEFAULT_JOBS", "Options", "run", "FORMAT"]

log = logging.getLogger("vqclip.bench")


def _job(module: str, fn: str = "run") -> Callable[[Options, str], dict]:
    def call(opts: Options, job: str) -> dict:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{module}"), fn)(opts, job)

    return call


# job -> its function; the order is the order of a full run (cheap and independent first)
JOBS: dict[str, Callable[[Options, str], dict]] = {
    "encode-image": _job("job_encode"),
    "encode-text": _job("job_encode"),
    "topk": _job("job_topk"),
    "search": _job("job_search", "run_search"),
    "index-build": _job("job_search", "run_index_build"),
    "generate": _job("job_generate"),
    "serve": _job("job_serve"),
    # The cluster path: only when named (they need the [ray] / [milvus] extras)
    "index-build-ray": _job("job_cluster", "run_index_build_ray"),
    "milvus": _job("job_cluster", "run_milvus"),
}
DEFAULT_JOBS = tuple(j for j in JOBS if j not in ("index-build-ray", "milvus"))
FORMAT = 1


def run(opts: Options, on_job: Callable[[dict], None] | None = None) -> dict:
    """Runs ``opts.jobs`` one after another; returns the report (``report.json``'s content).

    A job that fails is recorded with its error and the others still run (``report["failed"]``)."""
    report = {"format": FORMAT, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": opts.command(DEFAULT_JOBS),
              "options": {"quick": opts.quick, "seconds": opts.seconds, "device": opts.device,
                          "models": list(opts.models), "backends": list(opts.backends),
                          "precisions": list(opts.precisions), "batches": list(opts.batches)},
              "machine": machine_info(opts.device), "jobs": [], "failed": []}
    for job in opts.jobs:
        entry = {"job": job, "load_before": load_average()}
        t0 = time.perf_counter()
        try:
            with Peak(opts.device) as peak:
                result = JOBS[job](opts, job)
        except Exception as e:  # noqa: BLE001 - one broken job must not cost the figures of the others
            log.info("bench job %s failed", job, exc_info=True)
            entry.update(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=6), rows=[], skipped=[])
            report["failed"].append(job)
        else:
            entry.update(result, **peak.result)
        entry.update(wall_s=time.perf_counter() - t0, load_after=load_average())
        report["jobs"].append(entry)
        if on_job:
            on_job(entry)
    return report
