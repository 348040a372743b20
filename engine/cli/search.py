"""``vqclip search``: text or image queries against an index (``vqclip.index.Index``)."""
from __future__ import annotations

import argparse
import json

from vqclip._validate import check_k
from vqclip.cli._common import add_model_args
from vqclip.errors import InvalidInputError

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="find the images in an index closest to a text or an image",
                       description="Search an index made by `vqclip index build` with a text or an image.")
    p.add_argument("index", metavar="INDEX", help="an index folder")
    p.add_argument("text", nargs="?", default=None, metavar="TEXT", help="what to look for, e.g. 'a red circle'")
    p.add_argument("--image", metavar="PATH", help="search with an image instead of a text")
    p.add_argument("--k", "-k", type=int, default=10, metavar="K", help="results to show (default 10)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, score}")
    add_model_args(p, model=False)
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    from vqclip.index.reader import Index

    check_k(args.k, "--k")
    if (args.text is None) == (args.image is None):
        raise InvalidInputError("give either a TEXT query or --image PATH (exactly one)")
    if args.text is not None and not args.text.strip():
        raise InvalidInputError("the text query is empty or only whitespace; give some words to search for")
    with Index.open(args.index, backend=args.backend, precision=args.precision) as idx:
        hits = idx.search(text=args.text, image=args.image, k=args.k)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
    else:
        for h in hits:
            print(f"{h.score:7.4f}  {h.path}")
    return 0
