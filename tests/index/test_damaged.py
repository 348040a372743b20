"""Damaged or hostile index folders: each is refused with one SearchIndexError naming the
index, at open or at the first search, never a traceback or a silently wrong answer."""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

from vqclip.errors import SearchIndexError
from vqclip.index import build_index
from vqclip.index.reader import Index

N = 6


@pytest.fixture(scope="module")
def pristine(tiny, images, tmp_path_factory):
    base = tmp_path_factory.mktemp("damaged")
    src = base / "src"
    src.mkdir()
    for i in range(N):
        images.png(src / f"img{i}.png", i)
    build_index(src, base / "idx", tiny.encoder(), storage="fp32", progress=False)
    return base / "idx"


def _sql(idx, statement, *args):
    db = sqlite3.connect(idx / "entries.sqlite")
    db.execute(statement, args)
    db.commit()
    db.close()


def _header(idx, change):
    d = json.loads((idx / "header.json").read_text())
    (idx / "header.json").write_text(json.dumps(change(d)))


def _nan_rows(idx):
    v = np.memmap(idx / "vectors.bin", dtype=np.float32, mode="r+")
    v[:] = np.nan
    v.flush()


CORRUPTIONS = {
    "header-is-a-list": lambda idx: (idx / "header.json").write_text("[1, 2]"),
    "header-negative-dim": lambda idx: _header(idx, lambda d: {**d, "embed_dim": -4}),
    "header-root-not-a-string": lambda idx: _header(idx, lambda d: {**d, "root": 7}),
    "sqlite-garbage": lambda idx: (idx / "entries.sqlite").write_bytes(b"not a database at all" * 50),
    "sqlite-empty": lambda idx: (idx / "entries.sqlite").write_bytes(b""),
    "sqlite-without-table": lambda idx: _sql(idx, "DROP TABLE entries"),
    "negative-committed-rows": lambda idx: _sql(idx, "UPDATE meta SET value = -3 WHERE key = 'committed_rows'"),
    "row-past-the-end": lambda idx: _sql(idx, "UPDATE entries SET row = 999 WHERE path = 'img0.png'"),
    "row-minus-one": lambda idx: _sql(idx, "UPDATE entries SET row = -1 WHERE path = 'img1.png'"),
    "all-rows-nan": _nan_rows,
    "vectors-truncated": lambda idx: (idx / "vectors.bin").write_bytes(b"\0" * 10),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_a_damaged_index_is_refused_never_answered(tiny, pristine, tmp_path, corrupt):
    idx = tmp_path / "idx"
    shutil.copytree(pristine, idx)
    corrupt(idx)
    with pytest.raises(SearchIndexError, match=str(idx)):
        with Index.open(idx, encoder=tiny.encoder()) as ix:
            ix.search(text="a red circle", k=3)


def test_the_cli_says_damaged_in_one_line(pristine, tmp_path, capsys):
    from vqclip.cli import main

    idx = tmp_path / "idx"
    shutil.copytree(pristine, idx)
    (idx / "entries.sqlite").write_bytes(b"garbage" * 100)
    assert main(["index", "info", str(idx)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqclip: error: ") and "damaged" in err and err.count("\n") == 1, err


def test_a_missing_image_folder_is_said(tiny, pristine, tmp_path, caplog):
    idx = tmp_path / "idx"
    shutil.copytree(pristine, idx)
    _header(idx, lambda d: {**d, "root": str(tmp_path / "gone")})
    with caplog.at_level("WARNING", logger="vqclip.index.reader"):
        with Index.open(idx, encoder=tiny.encoder()) as ix:
            assert len(ix.search(text="a red circle", k=3)) == 3
    assert "is missing" in caplog.text


def test_build_force_replaces_a_damaged_index_and_nothing_else(tiny, pristine, tmp_path):
    from vqclip.index.reader import Index as Ix

    with Ix.open(pristine, encoder=tiny.encoder()) as ix:
        src = ix.store.header.root
    idx = tmp_path / "idx"
    shutil.copytree(pristine, idx)
    (idx / "entries.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(SearchIndexError, match="--force"):
        build_index(src, idx, tiny.encoder(), storage="fp32", progress=False)
    report = build_index(src, idx, tiny.encoder(), storage="fp32", progress=False, force=True)
    assert report.added == N and sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no .new/.old left
    with Ix.open(idx, encoder=tiny.encoder()) as ix:
        assert len(ix.search(text="a red circle", k=3)) == 3
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(SearchIndexError, match="not empty and holds no index"):
        build_index(src, mine, tiny.encoder(), progress=False, force=True)
    assert (mine / "notes.txt").read_text() == "keep"
