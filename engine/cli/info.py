"""``vqclip models`` and ``vqclip backends``: what this install knows and what runs here."""
from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def _cmd_models(args: argparse.Namespace) -> int:
    from vqclip.zoo import get, list_models

    for name in list_models(args.family):
        rec = get(name)
        print(f"{rec.name:<20} {rec.family:<6} {rec.description}")
    return 0


def _cmd_backends(args: argparse.Namespace) -> int:
    from vqclip.backends import BACKENDS, backend_status
    from vqclip.errors import BackendUnavailableError

    status = backend_status()
    for name in BACKENDS:
        print(f"{name:<12} {'available' if status[name] is None else 'unavailable: ' + status[name]}")
    try:
        from vqclip.kernels import info

        k = info()
        threads = f"{k['max_threads']} threads" + (" (OpenMP)" if k["openmp"] else " (no OpenMP)")
        print(f"{'kernels':<12} SIMD path {k['simd']} (best here: {k['best']}), {threads}; CPU class {k['cpu_class']}")
        print(f"{'int8 GEMM':<12} {k['int8_gemm']} (ONNX Runtime's int8 graphs; each is self-tested when opened)")
    except BackendUnavailableError as e:
        print(f"{'kernels':<12} unavailable: {e}")
    return 0


def _add_backends_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("backends", help="list the inference backends and whether each runs here")
    b.set_defaults(func=_cmd_backends)


def add_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list the named models")
    m.add_argument("--family", choices=["clip", "vqgan"], help="only this family")
    m.set_defaults(func=_cmd_models)
    _add_backends_parser(sub)
