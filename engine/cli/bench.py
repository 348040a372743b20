"""``vqclip bench``: measure vqclip against its peers on this machine, in one run
(``vqclip.bench``); print the tables, write a report folder, compare with an earlier report."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vqclip.cli._common import PRECISIONS, device_name, user_path

__all__ = ["add_parser"]

JOB_NAMES = ("encode-image", "encode-text", "topk", "search", "index-build", "generate", "serve", "index-build-ray",
             "milvus")
DEFAULT_JOBS = JOB_NAMES[:-2]  # the cluster jobs need the [ray] / [milvus] extras: run when named
FULL_MODELS, QUICK_MODELS = ("shapes-clip", "vit-b-32"), ("shapes-clip",)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas (1,16), got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be at least 1, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected one or more names separated by commas, got {text!r}")
    return names


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3600, got {text}")
    return v


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure vqclip against its peers on this machine",
        description="Run benchmark jobs, each timing vqclip and its peers in the same rounds (transformers for the "
                    "encoders; FAISS, torch and numpy for top-k and search; VQGAN-CLIP's step for generation; "
                    "batching off for the server), and print a table per job with p50/p90/p99, throughput, "
                    f"ratios and peak memory. Jobs: {', '.join(JOB_NAMES)} (default: all but index-build-ray and "
                    "milvus, which need the [ray] and [milvus] extras).")
    p.add_argument("jobs", nargs="*", metavar="JOB", help="jobs to run (default: all but the cluster ones)")
    p.add_argument("--model", dest="models", type=_names, default=None, metavar="M[,M]",
                   help="CLIP models: zoo names (an architecture without bundled weights runs on random weights, "
                        "e.g. vit-b-32) or checkpoint paths (default: shapes-clip, plus vit-b-32 without --quick)")
    p.add_argument("--backend", dest="backends", type=_names, default=None, metavar="B[,B]",
                   help="vqclip backends (default torch,onnxruntime)")
    p.add_argument("--precision", dest="precisions", type=_names, default=None, metavar="P[,P]",
                   help=f"precisions, of {', '.join(PRECISIONS)} (default fp32,int8; each backend runs those it has; "
                        "for topk the storage types, default fp32,fp16,int8)")
    p.add_argument("--batch", dest="batches", type=_int_list, default=None, metavar="N[,N]",
                   help="batch sizes of the encoders and query batches of topk (default 1,16)")
    p.add_argument("--rows", type=_int_list, default=None, metavar="N[,N]",
                   help="gallery rows of topk, index rows of search, images of index-build "
                        "(default: per job, smaller with --quick)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seconds", type=_seconds, default=None,
                   help="timing budget of one case, all runners together (default 3, 1.5 with --quick)")
    p.add_argument("--quick", action="store_true", help="small sizes and budgets: minutes, not the full run")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="time vqclip alone")
    p.add_argument("--out", type=user_path, default=None, metavar="DIR",
                   help="write report.json, report.md and PNG plots into DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout (tables go to stderr)")
    p.add_argument("--compare", type=user_path, default=None, metavar="OLD_JSON",
                   help="warn about each figure more than 20%% worse than in an earlier report.json")
    p.set_defaults(func=_cmd_bench)


def _check(args: argparse.Namespace):
    """Every mistake refused in one line before anything is measured; returns the Options."""
    from vqclip.backends.factory import BACKEND_PRECISIONS, backend_status, check_device, resolve_backend_name
    from vqclip.bench import Options
    from vqclip.errors import BackendUnavailableError, InvalidInputError

    jobs = tuple(dict.fromkeys(args.jobs)) or DEFAULT_JOBS
    unknown = [j for j in jobs if j not in JOB_NAMES]
    if unknown:
        raise InvalidInputError(f"unknown bench job {unknown[0]!r}; jobs: {', '.join(JOB_NAMES)}")
    default = Options(jobs=jobs, quick=args.quick)
    backends = tuple(dict.fromkeys(resolve_backend_name(b) for b in (args.backends or default.backends)))
    status = backend_status()
    for b in backends:
        if status.get(b):
            raise BackendUnavailableError(f"--backend {b}: {status[b]}")
    precisions = tuple(dict.fromkeys(p.lower() for p in (args.precisions or default.precisions)))
    encoders = set(jobs) - {"topk"}  # topk's precisions are storage types: no backend runs them
    for p in precisions:
        if p not in PRECISIONS:
            raise InvalidInputError(f"unknown precision {p!r}; precisions: {', '.join(PRECISIONS)}")
        if encoders and not any(p in BACKEND_PRECISIONS[b] for b in backends):
            raise InvalidInputError(f"--precision {p} is run by none of --backend {','.join(backends)}; "
                                    f"see `vqclip bench --help`")
        if encoders and p == "bf16" and not args.device.startswith("cuda"):
            raise InvalidInputError("--precision bf16 runs on CUDA only (the torch backend); on the CPU use "
                                    "fp32, fp16 or int8")
    check_device("torch", args.device)  # every job runs torch on --device: a CUDA device must exist
    models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    for m in models:
        _check_model(m)
    explicit = {k: getattr(args, a) for k, a in (("model", "models"), ("backend", "backends"),
                                                  ("precision", "precisions"), ("batch", "batches"),
                                                  ("rows", "rows"), ("seconds", "seconds")) if getattr(args, a)}
    if args.device != "cpu":
        explicit["device"] = args.device
    return Options(jobs=jobs, models=tuple(models), backends=backends, precisions=precisions,
                   batches=args.batches or default.batches, device=args.device, quick=args.quick,
                   seconds=args.seconds or (default.seconds / 2 if args.quick else default.seconds),
                   rows=args.rows or (), peers=args.peers, explicit=explicit)


def _check_model(name: str) -> None:
    from vqclip.zoo import get

    if not Path(name).expanduser().exists():
        get(name, family="clip")  # UnknownModelError listing the zoo's CLIP names


def _check_out(out: str) -> Path:
    """An --out folder that can be written, proven before the run, and the plotting library
    its PNGs need."""
    from vqclip._files import prepare_folder
    from vqclip.errors import BackendUnavailableError, OutputPathError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("--out writes plots with matplotlib, which is not installed: pip install "
                                      "matplotlib (or 'vqclip[bench]')") from None
    try:
        return prepare_folder(out)
    except OutputPathError as e:
        raise OutputPathError(f"--out: {e}") from None


def _read_old(path: str) -> dict:
    from vqclip.bench import FORMAT
    from vqclip.errors import InvalidInputError

    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise ValueError(f"no 'format': {FORMAT}")
        machine, jobs = old["machine"], old["jobs"]
        if not isinstance(machine, dict) or not {"cpu", "cpu_class"} <= machine.keys() or not all(
                isinstance(j, dict) and isinstance(j.get("rows", []), list) and "job" in j for j in jobs):
            raise ValueError("its 'machine' or 'jobs' are not a report's")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidInputError(f"--compare {path}: not a vqclip bench report.json ({e})") from None
    return old


def _cmd_bench(args: argparse.Namespace) -> int:
    opts = _check(args)
    old = _read_old(args.compare) if args.compare else None
    out = _check_out(args.out) if args.out else None  # last: a refusal above leaves no folder behind
    from vqclip.bench import run
    from vqclip.bench.report import compare, format_job, write_report

    show = sys.stderr if args.json else sys.stdout
    print(f"vqclip bench: {', '.join(opts.jobs)}{' (quick)' if opts.quick else ''} on {opts.device}; models "
          f"{', '.join(opts.models)}", file=show, flush=True)
    report = run(opts, on_job=lambda entry: print(format_job(entry), file=show, flush=True))
    if out:
        for path in write_report(report, out):
            print(f"wrote {path}", file=show)
    if old is not None:
        for line in compare(report, old):
            print(f"vqclip: warning: {line}", file=sys.stderr)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    if report["failed"]:
        print(f"vqclip: error: bench jobs failed: {', '.join(report['failed'])} (their errors are in the tables "
              "above; -v logs the traces, and report.json keeps them)", file=sys.stderr)
        return 1
    return 0
