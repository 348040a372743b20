"""``vqclip classify``: zero-shot classification of image files against labels (``vqclip.jobs.classify``)."""
from __future__ import annotations

import argparse
import json
import sys

from vqclip._validate import check_k
from vqclip.cli._common import add_model_args, expand_images, positive_int, probability, user_path
from vqclip.errors import InvalidInputError

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images into the given labels",
                       description="Zero-shot classification: rank LABELS for each image with CLIP.")
    p.add_argument("images", nargs="+", type=user_path, metavar="IMAGE", help="image files or globs ('photos/*.jpg')")
    p.add_argument("--labels", nargs="+", default=[], metavar="LABEL", help="the labels to choose from")
    p.add_argument("--labels-file", type=user_path, metavar="FILE",
                   help="UTF-8 file, one label per line (with or without --labels)")
    p.add_argument("--templates", default="default", type=user_path, metavar="default|single|ensemble|short|FILE",
                   help="prompt templates: 'default', the model's own (the default), 'single' ('a photo of a {}.'), "
                        "'ensemble' (OpenAI's 80), 'short' (OpenAI's 7) or a UTF-8 file, one per line with {}")
    p.add_argument("--truncate", action="store_true",
                   help="cut label prompts longer than the model's context instead of refusing them")
    p.add_argument("--top-k", "--k", "-k", dest="top_k", type=int, default=5, metavar="K",
                   help="labels shown per image (default 5)")
    p.add_argument("--threshold", type=probability, default=0.0, metavar="P",
                   help="show only labels whose probability is at least P (0 to 1; default 0: the top K)")
    p.add_argument("--logits", action="store_true",
                   help="show the raw logits (logit scale x cosine) instead of the softmax probabilities")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per encoder call")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the label-embedding cache")
    add_model_args(p)
    p.set_defaults(func=_cmd_classify)


def _cmd_classify(args: argparse.Namespace) -> int:
    from vqclip.encoder import open_encoder
    from vqclip.jobs.classify import ZeroShotClassifier
    from vqclip.jobs.templates import read_lines

    check_k(args.top_k, "--top-k")
    labels = list(args.labels)
    if args.labels_file:
        labels += read_lines(args.labels_file, "label file")
    if not labels:
        raise InvalidInputError("no labels were given; pass --labels LABEL... or --labels-file FILE")
    files, missing = expand_images(args.images)
    enc = open_encoder(args.model, backend=args.backend, precision=args.precision, device=args.device,
                       config=args.arch)
    clf = ZeroShotClassifier(enc, labels, args.templates, use_cache=not args.no_cache, truncate=args.truncate)
    results = clf.classify_paths(files, top_k=args.top_k, batch_size=args.batch_size,
                                 threshold=args.threshold) if files else []
    bad = [f"{a}: {r}" for a, r in missing] + [r.error for r in results if r.error]  # decode errors name the file
    for reason in bad:
        print(f"vqclip: skipped {reason}", file=sys.stderr)
    good = [r for r in results if not r.error]
    if args.json:
        print(json.dumps([r.to_dict(logits=args.logits) for r in good], indent=2, ensure_ascii=False))
    else:
        for r in good:
            print(r.image)
            for pred in r.labels:
                print(f"  {pred.logit:7.3f}  {pred.label}" if args.logits else f"  {pred.prob:7.2%}  {pred.label}")
            if not r.labels:
                print(f"  (no label has probability >= {args.threshold:g})")
    return 1 if bad else 0
