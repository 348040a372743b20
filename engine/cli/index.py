"""``vqclip index``: build, update and inspect an image search index (``vqclip.index``)."""
from __future__ import annotations

import argparse
import json
import sys

from vqclip.cli._common import add_model_args, positive_int, user_path

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="build or update an image search index",
                       description="Build an on-disk search index of a folder of images, or update one.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="index every image under DIR into a new index folder")
    b.add_argument("dir", type=user_path, metavar="DIR", help="folder of images (walked recursively)")
    b.add_argument("--out", required=True, type=user_path, metavar="INDEX", help="new folder to write the index to")
    b.add_argument("--storage", choices=["fp32", "fp16", "int8"], default="fp16",
                   help="embedding storage type (default fp16)")
    b.add_argument("--force", action="store_true",
                   help="replace an existing vqclip index at INDEX (a damaged one included) once the new one "
                        "is complete; never any other folder")
    _add_build_args(b)
    add_model_args(b)
    b.set_defaults(func=_cmd_index_build)
    u = isub.add_parser("update", help="encode new and changed images, drop deleted ones")
    u.add_argument("index", type=user_path, metavar="INDEX", help="an index folder made by `vqclip index build`")
    _add_build_args(u)
    add_model_args(u, model=False)
    u.set_defaults(func=_cmd_index_update)
    i = isub.add_parser("info", help="what an index holds: model, size, storage, skipped files")
    i.add_argument("index", type=user_path, metavar="INDEX", help="an index folder")
    i.add_argument("--skipped", action="store_true",
                   help="also list the files skipped as unreadable, each with its reason (JSON: under 'skipped_files')")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=_cmd_index_info)


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per encoder call")
    p.add_argument("--workers", type=positive_int, default=None, help="decode threads (default: cores - 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _print_report(report, out) -> int:
    for _, reason in report.failed[:20]:  # each reason names its file
        print(f"vqclip: skipped {reason}", file=sys.stderr)
    if len(report.failed) > 20:
        print(f"vqclip: ... and {len(report.failed) - 20} more unreadable images", file=sys.stderr)
    print(f"{out}: {report.summary()}")
    return 0  # skipped images never fail a build; they are counted and listed


def _cmd_index_build(args: argparse.Namespace) -> int:
    from vqclip.encoder import open_encoder
    from vqclip.index.build import build_index

    enc = open_encoder(args.model, backend=args.backend, precision=args.precision, device=args.device,
                       config=args.arch)
    report = build_index(args.dir, args.out, enc, storage=args.storage, batch_size=args.batch_size,
                         workers=args.workers, progress=False if args.no_progress else None, force=args.force)
    return _print_report(report, args.out)


def _cmd_index_update(args: argparse.Namespace) -> int:
    from vqclip.index.build import update_index

    report = update_index(args.index, batch_size=args.batch_size, workers=args.workers,
                          progress=False if args.no_progress else None, backend=args.backend,
                          precision=args.precision, device=args.device)
    return _print_report(report, args.index)


def _cmd_index_info(args: argparse.Namespace) -> int:
    from vqclip.index.store import IndexStore

    with IndexStore.open(args.index) as st:
        h = st.header
        disk = sum(p.stat().st_size for p in st.path.iterdir() if p.is_file())
        skipped = st.skipped()  # relative path -> (size, mtime_ns, reason)
        info = {"index": str(st.path), "model": h.model_name, "weights_sha256": h.model_digest,
                "entries": st.n_entries, "embed_dim": h.embed_dim, "storage": h.storage, "root": h.root,
                "skipped": len(skipped), "bytes_on_disk": disk, "created": h.created}
    files = [{"path": rel, "reason": reason} for rel, (_, _, reason) in sorted(skipped.items())]
    if args.json:
        print(json.dumps({**info, "skipped_files": files} if args.skipped else info, indent=2, ensure_ascii=False))
        return 0
    for k, v in info.items():
        print(f"{k:<15} {v}")
    if args.skipped:
        for f in files:  # each reason names its file
            print(f"{'skipped file':<15} {f['reason']}")
    return 0
