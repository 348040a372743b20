"""The ``vqclip`` command line: the parser and ``main``. Each subcommand is a thin layer
over the library, in its own module of this package.

Errors a user can cause (``VqclipError``) print one line on stderr, in their CLI
wording where they have one (``VqclipError.cli``), and exit 2; an interrupt exits 130.
Heavy imports happen inside the subcommands, so ``vqclip --help`` starts fast.
"""
from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys

from vqclip import __version__
from vqclip.cli import bench, classify, demo, export, generate, index, info, search, serve
from vqclip.cli._common import check_model_args
from vqclip.errors import VqclipError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, like every other error of the CLI."""

    def error(self, message: str):
        self.exit(2, f"vqclip: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vqclip", description="CLIP and VQGAN inference engine")
    p.add_argument("--version", action="version", version=f"vqclip {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (info, export, classify, index, search, generate, demo, serve, bench):
        group.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: a spinning team starves another busy
    # process on a small machine (measured in benchmarks/RESULTS.md, "OpenMP waiting").
    # Read when OpenMP loads, i.e. before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        check_model_args(args)
        return int(args.func(args) or 0)
    except VqclipError as e:
        print(f"vqclip: error: {e.cli_message()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqclip: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`vqclip models | head`): not an error of ours
        # Python flushes stdout at exit and would fail again; point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, sqlite3.Error) as e:  # a file's fault, not ours: one line, the trace in the log
        logging.getLogger("vqclip.cli").info("the trace of that error", exc_info=True)
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"vqclip: error: {type(e).__name__}{where}: {getattr(e, 'strerror', None) or e}; "
              "check the path, its permissions and free space (-v shows the trace)", file=sys.stderr)
        return 2

