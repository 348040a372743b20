"""The ``vqclip`` command line. Each subcommand is a thin layer over the library.

Errors a user can cause (``VqclipError``) print one line on stderr and exit 2; an
interrupt exits 130. Heavy imports happen inside the subcommands, so ``vqclip --help``
starts fast.
"""
from __future__ import annotations

import argparse
import logging
import sys

from engine import __version__
from engine.errors import VqclipError

__all__ = ["main", "build_parser"]


def _cmd_models(args: argparse.Namespace) -> int:
    from engine.zoo import get, list_models

    for name in list_models(args.family):
        rec = get(name)
        print(f"{rec.name:<20} {rec.family:<6} {rec.description}")
    return 0


def _add_runtime_parsers(sub) -> None:
    """classify, index, search and demo (engine/_cli_runtime.py)."""
    from engine import _cli_runtime as rt

    rt.add_classify_parser(sub)
    rt.add_index_parser(sub)
    rt.add_search_parser(sub)
    rt.add_demo_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqclip", description="CLIP and VQGAN inference engine")
    p.add_argument("--version", action="version", version=f"vqclip {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    m = sub.add_parser("models", help="list the named models")
    m.add_argument("--family", choices=["clip", "vqgan"], help="only this family")
    m.set_defaults(func=_cmd_models)
    _add_runtime_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except VqclipError as e:
        print(f"vqclip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
