"""Search over an index: results vs a float64 brute force, text and image queries, k at
the edges, rows without entries, many threads at once, and refusals."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vqclip.errors import IndexMismatchError, InvalidInputError, SearchIndexError
from vqclip.index import IndexStore, build_index
from vqclip.index.reader import Index
from vqclip.index.store import decode_rows

N = 20


@pytest.fixture(scope="module")
def built(tiny, images, tmp_path_factory):
    """One folder indexed once per storage type, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("search")
    src = root / "images"
    for i in range(N):
        images.png(src / f"img{i:02d}.png", i)
    out = {}
    for storage in ("fp32", "fp16", "int8"):
        build_index(src, root / storage, tiny.encoder(), storage=storage, progress=False)
        out[storage] = root / storage
    return src, out


def _brute_force(store: IndexStore, q: np.ndarray) -> np.ndarray:
    """float64 cosine of each query with every stored row, as stored (the kernel's job)."""
    x = decode_rows(np.asarray(store.vectors), store.scales).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    q = q.astype(np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
    return q @ x.T  # (B, N)


def _check_hits(hits, scores_row, store, k, tol):
    # Tie-aware: each returned score matches the reference score of its row, the scores
    # are the k largest (up to tol), and no path repeats.
    assert len(hits) == min(k, store.n_entries)
    kth = np.sort(scores_row)[::-1][len(hits) - 1]
    paths = store.paths_for_rows([h.row for h in hits])
    for h in hits:
        assert abs(h.score - scores_row[h.row]) <= tol
        assert h.score >= kth - tol
        assert h.path == store.absolute(paths[h.row])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.path for h in hits}) == len(hits)


# Kernel arithmetic vs float64 on the same stored rows: fp32 accumulates 32 products in
# float32 (~1e-6); fp16/int8 rows are dequantised exactly, so the bound is the same.
@pytest.mark.parametrize("storage", ["fp32", "fp16", "int8"])
def test_text_search_matches_brute_force(tiny, built, storage):
    _, idx_paths = built
    with Index.open(idx_paths[storage], encoder=tiny.encoder()) as idx:
        for text, k in [("a red circle", 5), ("something else entirely", 1), ("blue", N + 7)]:
            hits = idx.search(text=text, k=k)
            q = idx.encoder.encode_texts([text])
            _check_hits(hits, _brute_force(idx.store, q)[0], idx.store, k, 1e-5)


@pytest.mark.parametrize("storage,tol", [("fp32", 1e-5), ("fp16", 2e-3), ("int8", 2e-2)])
def test_image_query_finds_itself(tiny, built, storage, tol):
    src, idx_paths = built
    with Index.open(idx_paths[storage], encoder=tiny.encoder()) as idx:
        hits = idx.search(image=src / "img07.png", k=3)
    assert Path(hits[0].path).name == "img07.png"
    assert abs(hits[0].score - 1) < tol  # storage rounding only


def test_many_threads_get_the_same_answers(tiny, built):
    _, idx_paths = built
    queries = [f"a shape number {i}" for i in range(16)]
    with Index.open(idx_paths["fp16"], encoder=tiny.encoder()) as idx:
        want = [idx.search(text=q, k=4) for q in queries]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda q: idx.search(text=q, k=4), queries * 3))
    assert got == want * 3


def test_rows_without_entries_are_never_returned(tiny, built, tmp_path):
    src, _ = built
    idx = tmp_path / "idx"
    build_index(src, idx, tiny.encoder(), storage="fp32", progress=False)
    with IndexStore.open(idx, writable=True) as st:  # the state mid-update: entries gone, rows kept
        st.remove([f"img{i:02d}.png" for i in range(0, N, 2)])
    with Index.open(idx, encoder=tiny.encoder()) as ix:
        assert ix.store.holes == N // 2
        hits = ix.search(text="a red circle", k=N)
        assert len(hits) == N // 2
        assert all(int(Path(h.path).stem[3:]) % 2 for h in hits)
        assert len(ix.search(text="a red circle", k=3)) == 3


def test_bad_queries(tiny, built):
    _, idx_paths = built
    with Index.open(idx_paths["fp32"], encoder=tiny.encoder()) as idx:
        with pytest.raises(InvalidInputError, match="whitespace"):
            idx.search(text=" \t\n", k=3)
        with pytest.raises(InvalidInputError, match="at least 1"):
            idx.search(text="circle", k=0)
        with pytest.raises(InvalidInputError, match="exactly one"):
            idx.search(k=3)
        with pytest.raises(InvalidInputError, match="exactly one"):
            idx.search(text="circle", image="x.png", k=3)


def test_refusals(tiny, built, tmp_path):
    src, idx_paths = built
    with pytest.raises(IndexMismatchError, match="tiny-0.*tiny-3"):
        Index.open(idx_paths["fp32"], encoder=tiny.encoder(seed=3))
    with pytest.raises(SearchIndexError, match="does not exist"):
        Index.open(tmp_path / "missing")
    empty_src = tmp_path / "empty"
    empty_src.mkdir()
    build_index(empty_src, tmp_path / "e", tiny.encoder(), progress=False)
    with Index.open(tmp_path / "e", encoder=tiny.encoder()) as idx:
        with pytest.raises(SearchIndexError, match="holds no images"):
            idx.search(text="circle", k=1)


def test_an_index_built_by_name_opens_with_the_loaded_module(tmp_path, images):
    from vqclip.checkpoints import load_clip
    from vqclip.encoder import open_encoder

    src = tmp_path / "images"
    for i in range(3):
        images.png(src / f"img{i}.png", i)
    build_index(src, tmp_path / "idx", open_encoder("shapes-clip"), progress=False)
    with Index.open(tmp_path / "idx", model=load_clip("shapes-clip")) as idx:
        assert len(idx.search(text="a red circle", k=2)) == 2


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "/etc/passwd", "sub/../../x.png", ""])
def test_an_entry_path_outside_the_root_is_refused_not_returned(tiny, built, tmp_path, hostile):
    import sqlite3

    src, _ = built
    idx = tmp_path / "idx"
    build_index(src, idx, tiny.encoder(), storage="fp32", progress=False)
    db = sqlite3.connect(idx / "entries.sqlite")
    db.execute("UPDATE entries SET path = ? WHERE path = 'img00.png'", (hostile,))
    db.commit()
    db.close()
    with Index.open(idx, encoder=tiny.encoder()) as ix:
        with pytest.raises(SearchIndexError, match="outside its image folder"):
            ix.search(text="a red circle", k=N)
