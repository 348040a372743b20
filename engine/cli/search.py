"""``vqclip search``: text or image queries against an index (``vqclip.index.Index``).

One query from the command line, or many (``--queries FILE``, ``-`` for stdin) answered as
JSON lines, so that a script that cannot run a server pays the start-up once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

from vqclip._validate import check_k
from vqclip.cli._common import add_model_args, user_path
from vqclip.errors import InvalidInputError, VqclipError

__all__ = ["add_parser"]

_FILE_BATCH = 64  # text queries of a --queries FILE encoded and searched together


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="find the images in an index closest to a text or an image",
                       description="Search an index made by `vqclip index build` with a text or an image, or "
                                   "with many queries (--queries), answered as JSON lines.")
    p.add_argument("index", type=user_path, metavar="INDEX",
                   help="an index folder, or a milvus:// target made by `vqclip index export-milvus`")
    p.add_argument("text", nargs="?", default=None, metavar="TEXT", help="what to look for, e.g. 'a red circle'")
    p.add_argument("--image", type=user_path, metavar="PATH", help="search with an image instead of a text")
    p.add_argument("--queries", type=user_path, metavar="FILE",
                   help="many queries, one per line, '-' for stdin: a text, or a JSON object {\"text\": ...} / "
                        "{\"image\": PATH} with an optional \"k\" and \"id\"; each answered as one JSON line")
    p.add_argument("--top-k", "--k", "-k", dest="k", type=int, default=10, metavar="K",
                   help="results per query (default 10)")
    p.add_argument("--truncate", action="store_true",
                   help="cut a text longer than the model's context instead of refusing it")
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, score}")
    add_model_args(p, model=False)
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    from vqclip.index.reader import open_index

    check_k(args.k, "--top-k")
    given = [x is not None for x in (args.text, args.image, args.queries)]
    if sum(given) != 1:
        raise InvalidInputError("give one of: a TEXT query, --image PATH, or --queries FILE ('-' for stdin)")
    if args.text is not None and not args.text.strip():
        raise InvalidInputError("the text query is empty or only whitespace; give some words to search for")
    with open_index(args.index, backend=args.backend, precision=args.precision, device=args.device) as idx:
        if args.queries is not None:
            return _answer_many(idx, args.queries, args.k, args.truncate)
        hits = idx.search(text=args.text, image=args.image, k=args.k, truncate=args.truncate)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
    else:
        for h in hits:
            print(f"{h.score:7.4f}  {h.path}")
    return 0


def _parse(line: str, number: int, default_k: int) -> dict:
    """One query line -> {"id", "text" | "image", "k"}; ``InvalidInputError`` for a bad one."""
    line = line.strip()
    q = {"id": number, "k": default_k}
    if not line.startswith("{"):
        return {**q, "text": line}
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"not JSON ({e.msg} at column {e.colno}); give a text or a JSON object") from e
    if not isinstance(obj, dict) or (("text" in obj) == ("image" in obj)):
        raise InvalidInputError('a JSON query needs exactly one of "text" or "image"')
    value = obj.get("text", obj.get("image"))
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError('"text" / "image" must be a non-empty string')
    q["id"] = obj.get("id", number)
    q["k"] = check_k(obj.get("k", default_k), '"k"')
    q["text" if "text" in obj else "image"] = value.strip() if "text" in obj else os.path.expanduser(value.strip())
    return q


def _lines(source: str) -> tuple[Iterable[str], bool]:
    """The query lines of ``source`` and whether they come from stdin (answered as they come)."""
    if source == "-":
        return sys.stdin, True
    from vqclip._files import read_regular

    try:
        raw = read_regular(Path(source), 64 << 20)  # a FIFO or a device would never end
        return raw.decode("utf-8-sig").splitlines(), False
    except OSError as e:
        raise InvalidInputError(f"cannot read queries file {source!r} ({e.strerror}); give a readable text "
                                "file, or '-' for stdin") from e
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"queries file {source!r} is not UTF-8 text (bad byte at offset {e.start}); "
                                "save it as UTF-8") from e


def _chunks(lines: Iterable[str], size: int, default_k: int) -> Iterator[list]:
    """Queries in groups of up to ``size`` (1 on stdin: each line is answered before the next
    is read); blank lines are skipped, and a query's default id is its line number."""
    group: list = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            group.append(_parse(line, number, default_k))
        except InvalidInputError as e:
            group.append({"id": number, "error": e.cli_message()})
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


def _answer_many(idx, source: str, default_k: int, truncate: bool) -> int:
    """Every query of ``source`` answered as one JSON line, in order; a bad query gets an
    ``error`` line and the rest go on. Exit status 1 if any query failed."""
    lines, interactive = _lines(source)
    failed = False
    for group in _chunks(lines, 1 if interactive else _FILE_BATCH, default_k):
        for q, answer in zip(group, _answer_group(idx, group, truncate)):
            failed |= "error" in answer
            print(json.dumps({"id": q["id"], **answer}, ensure_ascii=False), flush=interactive)
    return 1 if failed else 0


def _answer_group(idx, group: list, truncate: bool) -> list[dict]:
    """Answers for one group: its texts encoded and searched as one batch where they all
    encode, else one by one so that one bad text does not fail the others."""
    answers: list[dict | None] = [{"error": q["error"]} if "error" in q else None for q in group]
    texts = [i for i, q in enumerate(group) if "text" in q and answers[i] is None]
    if texts:
        try:
            emb = idx.encoder.encode_texts([group[i]["text"] for i in texts], truncate=truncate)
            k = max(group[i]["k"] for i in texts)
            for i, hits in zip(texts, idx.search_embeddings(emb, k)):
                answers[i] = {"hits": [h.to_dict() for h in hits[:group[i]["k"]]]}
        except VqclipError:
            pass  # answered one by one below, each with its own error
    for i, q in enumerate(group):
        if answers[i] is None:
            try:
                hits = idx.search(text=q.get("text"), image=q.get("image"), k=q["k"], truncate=truncate)
                answers[i] = {"hits": [h.to_dict() for h in hits]}
            except VqclipError as e:
                answers[i] = {"error": e.cli_message()}
    return answers
