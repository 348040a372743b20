"""The runtime subcommands of ``vqclip`` (classify, index, search, demo): argument
parsers and the thin handlers over ``engine.classify``, ``engine.index``, ``engine.search``
and ``engine.demo``. ``engine.cli`` calls ``add_runtime_parsers``; heavy imports wait
until a handler runs so ``vqclip --help`` stays fast.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from engine.errors import InvalidInputError

__all__ = ["add_classify_parser", "add_index_parser", "add_search_parser", "add_demo_parser"]


def _positive_int(text: str) -> int:
    """argparse type for sizes (batch, workers): an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _check_k(name: str, k: int) -> None:
    # Checked here, before any model loads, so the mistake costs nothing.
    if k < 1:
        raise InvalidInputError(f"{name} must be at least 1, got {k}")


def _add_model_args(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument("--model", default=None, metavar="NAME|PATH",
                       help="zoo name (see `vqclip models`) or checkpoint file; default: shapes-clip")
    p.add_argument("--backend", default="torch", metavar="NAME",
                   help="torch (default), onnxruntime or tensorrt (exports the model to ONNX once, cached)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"],
                   help="backend precision (default fp32; int8 on onnxruntime, bf16 on torch)")


def _expand_images(args: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Paths and globs -> (files, [(arg, reason)] for args that name nothing)."""
    files, missing = [], []
    for a in args:
        if os.path.exists(a) or not glob.has_magic(a):
            if os.path.isdir(a):
                missing.append((a, "is a folder; give image files or a glob like 'dir/*.png'"))
            else:
                files.append(a)  # a missing file is reported by the decoder, with the others
            continue
        hits = sorted(h for h in glob.glob(a, recursive=True) if os.path.isfile(h))
        if not hits:
            missing.append((a, "the glob matches no files"))
        files.extend(hits)
    return files, missing


# ----- classify -----
def add_classify_parser(sub) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images into the given labels",
                       description="Zero-shot classification: rank LABELS for each image with CLIP.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or globs ('photos/*.jpg')")
    p.add_argument("--labels", nargs="+", default=[], metavar="LABEL", help="the labels to choose from")
    p.add_argument("--labels-file", metavar="FILE", help="UTF-8 file, one label per line (with or without --labels)")
    p.add_argument("--templates", default="default", metavar="single|ensemble|short|FILE",
                   help="prompt templates: the model's default (default), 'single' ('a photo of a {}.'), "
                        "'ensemble' (OpenAI's 80), 'short' (OpenAI's 7) or a UTF-8 file, one per line with {}")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="labels shown per image (default 5)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per encoder call")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the label-embedding cache")
    _add_model_args(p)
    p.set_defaults(func=_cmd_classify)


def _cmd_classify(args: argparse.Namespace) -> int:
    from engine.classify import ZeroShotClassifier
    from engine.encoder import open_encoder
    from engine.templates import read_lines

    _check_k("--top-k", args.top_k)
    labels = list(args.labels)
    if args.labels_file:
        labels += read_lines(args.labels_file, "label file")
    if not labels:
        raise InvalidInputError("no labels were given; pass --labels LABEL... or --labels-file FILE")
    files, missing = _expand_images(args.images)
    enc = open_encoder(args.model, backend=args.backend, precision=args.precision)
    clf = ZeroShotClassifier(enc, labels, args.templates, use_cache=not args.no_cache)
    results = clf.classify_paths(files, top_k=args.top_k, batch_size=args.batch_size) if files else []
    bad = [f"{a}: {r}" for a, r in missing] + [r.error for r in results if r.error]  # decode errors name the file
    for reason in bad:
        print(f"vqclip: skipped {reason}", file=sys.stderr)
    good = [r for r in results if not r.error]
    if args.json:
        print(json.dumps([r.to_dict() for r in good], indent=2, ensure_ascii=False))
    else:
        for r in good:
            print(r.image)
            for pred in r.labels:
                print(f"  {pred.prob:7.2%}  {pred.label}")
    return 1 if bad else 0


# ----- index -----
def add_index_parser(sub) -> None:
    p = sub.add_parser("index", help="build or update an image search index",
                       description="Build an on-disk search index of a folder of images, or update one.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="index every image under DIR into a new index folder")
    b.add_argument("dir", metavar="DIR", help="folder of images (walked recursively)")
    b.add_argument("--out", required=True, metavar="INDEX", help="new folder to write the index to")
    b.add_argument("--storage", choices=["fp32", "fp16", "int8"], default="fp16",
                   help="embedding storage type (default fp16)")
    _add_build_args(b)
    _add_model_args(b)
    b.set_defaults(func=_cmd_index_build)
    u = isub.add_parser("update", help="encode new and changed images, drop deleted ones")
    u.add_argument("index", metavar="INDEX", help="an index folder made by `vqclip index build`")
    _add_build_args(u)
    _add_model_args(u, model=False)
    u.set_defaults(func=_cmd_index_update)
    i = isub.add_parser("info", help="what an index holds: model, size, storage, skipped files")
    i.add_argument("index", metavar="INDEX", help="an index folder")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=_cmd_index_info)


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per encoder call")
    p.add_argument("--workers", type=_positive_int, default=None, help="decode threads (default: cores - 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _print_report(report, out) -> int:
    for _, reason in report.failed[:20]:  # each reason names its file
        print(f"vqclip: skipped {reason}", file=sys.stderr)
    if len(report.failed) > 20:
        print(f"vqclip: ... and {len(report.failed) - 20} more unreadable images", file=sys.stderr)
    print(f"{out}: {report.summary()}")
    return 0  # skipped images never fail a build; they are counted and listed


def _cmd_index_build(args: argparse.Namespace) -> int:
    from engine.encoder import open_encoder
    from engine.index import build_index

    enc = open_encoder(args.model, backend=args.backend, precision=args.precision)
    report = build_index(args.dir, args.out, enc, storage=args.storage, batch_size=args.batch_size,
                         workers=args.workers, progress=False if args.no_progress else None)
    return _print_report(report, args.out)


def _cmd_index_update(args: argparse.Namespace) -> int:
    from engine.index import update_index

    report = update_index(args.index, batch_size=args.batch_size, workers=args.workers,
                          progress=False if args.no_progress else None, backend=args.backend,
                          precision=args.precision)
    return _print_report(report, args.index)


def _cmd_index_info(args: argparse.Namespace) -> int:
    from engine.index import IndexStore

    with IndexStore.open(args.index) as st:
        h = st.header
        disk = sum(p.stat().st_size for p in st.path.iterdir() if p.is_file())
        info = {"index": str(st.path), "model": h.model_name, "weights_sha256": h.model_digest,
                "entries": st.n_entries, "embed_dim": h.embed_dim, "storage": h.storage, "root": h.root,
                "skipped": len(st.skipped()), "bytes_on_disk": disk, "created": h.created}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:<15} {v}")
    return 0


# ----- search -----
def add_search_parser(sub) -> None:
    p = sub.add_parser("search", help="find the images in an index closest to a text or an image",
                       description="Search an index made by `vqclip index build` with a text or an image.")
    p.add_argument("index", metavar="INDEX", help="an index folder")
    p.add_argument("text", nargs="?", default=None, metavar="TEXT", help="what to look for, e.g. 'a red circle'")
    p.add_argument("--image", metavar="PATH", help="search with an image instead of a text")
    p.add_argument("--k", "-k", type=int, default=10, metavar="K", help="results to show (default 10)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, score}")
    _add_model_args(p, model=False)
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    from engine.search import Index

    _check_k("--k", args.k)
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


# ----- demo -----
def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: classify, index and search the bundled shapes world offline",
                       description="Render sample images, export the bundled CLIP to ONNX, classify the samples, "
                                   "build an index, answer text queries, and write an HTML report.")
    p.add_argument("--out", default="vqclip-demo", metavar="DIR", help="output folder (default ./vqclip-demo)")
    p.add_argument("--samples", type=_positive_int, default=48, help="images to render (default 48)")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="force a backend (default: the fastest that loads here)")
    p.add_argument("--seed", type=int, default=0, help="sample seed")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    return run_demo(args.out, samples=args.samples, backend=args.backend, seed=args.seed, echo=print)
