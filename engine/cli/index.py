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
    b = isub.add_parser("build", help="index every image under DIR into a new index folder (or, with --ray, "
                                      "embed it on a Ray cluster into Parquet shards)")
    b.add_argument("dir", type=user_path, metavar="DIR", help="folder of images (walked recursively)")
    b.add_argument("--out", required=True, type=user_path, metavar="INDEX",
                   help="new folder to write the index to (with --ray: the shards)")
    b.add_argument("--storage", choices=["fp32", "fp16", "int8"], default=None,
                   help="embedding storage type (default fp16)")
    b.add_argument("--force", action="store_true",
                   help="replace an existing vqclip index at INDEX (a damaged one included) once the new one "
                        "is complete; never any other folder")
    _add_build_args(b)
    r = b.add_argument_group("on a Ray cluster (pip install 'vqclip[ray]')")
    r.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="embed with Ray Data into Parquet shards in --out (then `vqclip index import`): no ADDRESS "
                        "starts Ray on this machine; 'auto', HOST:PORT or ray://HOST:PORT joins a cluster; a rerun "
                        "skips the shards already written")
    r.add_argument("--actors", type=positive_int, default=1, help="encoder actors, each holding one model (default 1)")
    r.add_argument("--gpus-per-actor", type=float, default=0, metavar="G", help="GPUs each actor takes (default 0)")
    r.add_argument("--shard-size", type=positive_int, default=1024, metavar="N", help="images per shard (default 1024)")
    add_model_args(b)
    b.set_defaults(func=_cmd_index_build)
    m = isub.add_parser("import", help="make an index from Parquet shards written by `index build --ray`")
    m.add_argument("shards", nargs="+", type=user_path, metavar="SHARDS", help="shard files, or folders of them")
    m.add_argument("--out", required=True, type=user_path, metavar="INDEX", help="new folder to write the index to")
    m.add_argument("--storage", choices=["fp32", "fp16", "int8"], default="fp16",
                   help="embedding storage type (default fp16)")
    m.add_argument("--force", action="store_true", help="replace an existing vqclip index at INDEX once the new one "
                                                        "is complete")
    m.set_defaults(func=_cmd_index_import)
    e = isub.add_parser("export-milvus", help="copy an index into a Milvus collection, to search it through Milvus")
    e.add_argument("index", type=user_path, metavar="INDEX", help="an index folder")
    e.add_argument("--uri", required=True, metavar="URI",
                   help="a Milvus Lite file (*.db, made if missing) or a server, http(s)://HOST:PORT")
    e.add_argument("--collection", required=True, metavar="NAME", help="collection name (letters, digits, '_')")
    e.add_argument("--index-type", default="FLAT", type=str.upper, choices=["FLAT", "HNSW", "IVF_FLAT"],
                   help="FLAT: exact, as the fused kernels; HNSW / IVF_FLAT: approximate (default FLAT)")
    e.add_argument("--param", action="append", default=[], type=_param, metavar="KEY=VALUE",
                   help="index build parameter, e.g. M=32, efConstruction=200, nlist=4096 (repeat for several)")
    e.add_argument("--force", action="store_true",
                   help="replace a collection of that name (it serves until the new one is loaded)")
    e.set_defaults(func=_cmd_index_export_milvus)
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
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per encoder call (default 32; with --ray 128, also per decode task)")
    p.add_argument("--workers", type=positive_int, default=None, help="decode threads (default: cores - 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _param(text: str) -> tuple[str, int | float | str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _print_report(report, out, then: str | None = None) -> int:
    for _, reason in report.failed[:20]:  # each reason names its file
        print(f"vqclip: skipped {reason}", file=sys.stderr)
    if len(report.failed) > 20:
        print(f"vqclip: ... and {len(report.failed) - 20} more unreadable images", file=sys.stderr)
    print(f"{out}: {report.summary()}")
    if then:
        print(f"next: {then}")
    return 0  # skipped images never fail a build; they are counted and listed


def _cmd_index_build(args: argparse.Namespace) -> int:
    from vqclip.encoder import open_encoder
    from vqclip.index.build import build_index

    if args.ray is not None:
        return _build_with_ray(args)
    enc = open_encoder(args.model, backend=args.backend, precision=args.precision, device=args.device,
                       config=args.arch)
    report = build_index(args.dir, args.out, enc, storage=args.storage or "fp16", batch_size=args.batch_size or 32,
                         workers=args.workers, progress=False if args.no_progress else None, force=args.force)
    return _print_report(report, args.out)


def _build_with_ray(args: argparse.Namespace) -> int:
    from vqclip.errors import InvalidInputError
    from vqclip.index.ray_embed import embed_with_ray

    for flag, given in (("--force", args.force), ("--storage", args.storage), ("--workers", args.workers)):
        if given:
            raise InvalidInputError(f"{flag} does not apply to --ray: shards hold float32 rows and a rerun resumes; "
                                    f"give {flag} to `vqclip index import` or build without --ray")
    if args.gpus_per_actor < 0:
        raise InvalidInputError(f"--gpus-per-actor {args.gpus_per_actor}: give 0 or more")
    report = embed_with_ray(args.dir, args.out, args.model, backend=args.backend, precision=args.precision,
                            device=args.device, config=args.arch, address=args.ray, actors=args.actors,
                            gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size or 128,
                            shard_size=args.shard_size, progress=False if args.no_progress else None)
    return _print_report(report, args.out, then=f"vqclip index import {args.out} --out INDEX")


def _cmd_index_import(args: argparse.Namespace) -> int:
    from vqclip.index.shards import import_shards

    report = import_shards(args.shards, args.out, storage=args.storage, force=args.force)
    return _print_report(report, args.out)


def _cmd_index_export_milvus(args: argparse.Namespace) -> int:
    from vqclip.index.milvus import export_milvus

    report = export_milvus(args.index, args.uri, args.collection, index_type=args.index_type,
                           params=dict(args.param), force=args.force)
    print(report.summary())
    print(f"search it: vqclip search {report.target} 'a query'")
    return 0


def _cmd_index_update(args: argparse.Namespace) -> int:
    from vqclip.index.build import update_index

    report = update_index(args.index, batch_size=args.batch_size or 32, workers=args.workers,
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
