"""The on-disk index: storage round trips, build/update over a real folder (bad files,
symlink loops), the single-writer lock, model refusal, and SIGKILL crash safety with real
child processes (from a fork server, so they start without re-importing torch)."""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from vqclip.decode import read_and_decode
from vqclip.errors import IndexMismatchError, InvalidInputError, SearchIndexError
from vqclip.index import IndexStore, build_index, update_index
from vqclip.index.store import decode_rows, encode_rows


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("storage,tol", [("fp32", 1e-7), ("fp16", 1e-3), ("int8", 2e-2)])
def test_storage_round_trip(storage, tol):
    # Bounds: fp16 keeps 11 significant bits (relative error 2^-11 per element); int8 keeps
    # 1/127 of the row's largest element; both well inside what ranking tolerates.
    x = _unit(64, 512)
    x[3] = 0  # a zero row must stay zero, not become NaN
    rows, norms, scales = encode_rows(x, storage)
    assert rows.dtype == {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}[storage]
    y = decode_rows(rows, scales)
    assert np.isfinite(y).all() and not y[3].any()
    np.testing.assert_allclose(norms, np.linalg.norm(y, axis=1), rtol=1e-5, atol=1e-6)
    keep = np.arange(64) != 3
    cos = (x[keep] * y[keep]).sum(1) / np.linalg.norm(y[keep], axis=1)
    assert np.all(1 - cos < tol)


def _folder(images, tmp_path: Path, n: int = 6) -> Path:
    src = tmp_path / "images"
    for i in range(n):
        images.png(src / ("sub" if i % 2 else "") / f"img{i}.png", i)
    return src


def test_build_skips_and_counts_bad_files(tiny, images, tmp_path):
    src = _folder(images, tmp_path)
    (src / "notes.txt").write_text("not an image")
    (src / "empty.jpg").write_bytes(b"")
    images.truncated(src / "sub" / "truncated.png")
    images.huge(src / "huge.png")
    os.symlink(src, src / "sub" / "loop")  # a symlink back to the root: must not be walked forever
    enc = tiny.encoder()
    rep = build_index(src, tmp_path / "idx", enc, storage="fp32", batch_size=4, progress=False)
    assert (rep.added, rep.not_images, rep.total) == (6, 1, 6)
    assert sorted(p for p, _ in rep.failed) == ["empty.jpg", "huge.png", "sub/truncated.png"]
    assert enc.session.images == 6
    with IndexStore.open(tmp_path / "idx") as st:
        assert st.header.storage == "fp32" and st.header.embed_dim == 32
        assert st.header.model_digest == enc.identity.digest and st.count == 6
        ents = st.entries()
        assert sorted(ents) == sorted(f"{'sub/' if i % 2 else ''}img{i}.png" for i in range(6))
        # Each stored row is the encoder's embedding of that very file.
        for rel, e in ents.items():
            img = read_and_decode(str(src / rel))
            assert e.sha256 == img.sha256
            ref = enc.encode_image(enc.preprocess([img.image]))[0]
            np.testing.assert_allclose(st.vectors[e.row], ref, atol=1e-6)


def test_update_adds_changes_removes_and_skips_unchanged(tiny, images, tmp_path):
    src = _folder(images, tmp_path)
    build_index(src, tmp_path / "idx", tiny.encoder(), progress=False)
    images.png(src / "new.png", 100)
    images.png(src / "img0.png", 101)  # same name, new content
    (src / "sub" / "img1.png").unlink()
    t = src / "img2.png"
    os.utime(t, ns=(t.stat().st_atime_ns, t.stat().st_mtime_ns + 10**9))  # touched, bytes unchanged
    enc = tiny.encoder()
    rep = update_index(tmp_path / "idx", enc, progress=False)
    assert (rep.added, rep.updated, rep.removed, rep.touched, rep.total) == (1, 1, 1, 1, 6)
    assert enc.session.images == 2  # only the new and the changed file were encoded
    with IndexStore.open(tmp_path / "idx") as st:
        ents = st.entries()
        assert "sub/img1.png" not in ents and "new.png" in ents
        assert sorted(e.row for e in ents.values()) == list(range(6))  # dense after compaction
        assert st.count == 6 and st.holes == 0
    enc = tiny.encoder()
    rep = update_index(tmp_path / "idx", enc, progress=False)
    assert enc.session.images == 0 and rep.unchanged == 6


def test_failed_files_are_not_retried_until_they_change(tiny, images, tmp_path):
    src = _folder(images, tmp_path, 2)
    bad = images.truncated(src / "bad.png")
    rep = build_index(src, tmp_path / "idx", tiny.encoder(), progress=False)
    assert [p for p, _ in rep.failed] == ["bad.png"]
    rep = update_index(tmp_path / "idx", tiny.encoder(), progress=False)
    assert rep.failed == [] and rep.still_failing == 1
    images.png(bad, 7)  # repaired
    rep = update_index(tmp_path / "idx", tiny.encoder(), progress=False)
    assert rep.added == 1 and rep.still_failing == 0 and rep.total == 3


def test_other_model_is_refused_naming_both(tiny, images, tmp_path):
    build_index(_folder(images, tmp_path, 2), tmp_path / "idx", tiny.encoder(), progress=False)
    with pytest.raises(IndexMismatchError, match=r"built with tiny-0 .* not tiny-1"):
        update_index(tmp_path / "idx", tiny.encoder(seed=1), progress=False)


def test_bad_index_paths(tiny, images, tmp_path):
    with pytest.raises(SearchIndexError, match="does not exist"):
        IndexStore.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SearchIndexError, match="not a vqclip index"):
        IndexStore.open(tmp_path / "plain")
    src = _folder(images, tmp_path, 1)
    build_index(src, tmp_path / "idx", tiny.encoder(), progress=False)
    with pytest.raises(SearchIndexError, match="already holds an index"):
        build_index(src, tmp_path / "idx", tiny.encoder(), progress=False)
    with pytest.raises(InvalidInputError, match="not a folder"):
        build_index(tmp_path / "missing", tmp_path / "idx2", tiny.encoder(), progress=False)
    (tmp_path / "idx" / "header.json").write_text("{not json")
    with pytest.raises(SearchIndexError, match="unreadable header"):
        IndexStore.open(tmp_path / "idx")


def test_interrupt_keeps_what_was_encoded(tiny, images, tmp_path):
    # Commits are grouped (commit_every=100 here: none before the end); Ctrl-C in the third
    # batch must still commit the two batches already encoded.
    src = _folder(images, tmp_path, 6)
    enc = tiny.encoder()
    inner, calls = enc.session.encode_image, [0]

    def interrupted(px):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return inner(px)

    enc.session.encode_image = interrupted
    with pytest.raises(KeyboardInterrupt):
        build_index(src, tmp_path / "idx", enc, batch_size=2, workers=1, progress=False, commit_every=100)
    with IndexStore.open(tmp_path / "idx") as st:
        assert len(st.entries()) == 4
    enc = tiny.encoder()
    assert update_index(tmp_path / "idx", enc, progress=False).added == 2 and enc.session.images == 2


def test_one_writer_at_a_time(tiny, images, tmp_path):
    build_index(_folder(images, tmp_path, 1), tmp_path / "idx", tiny.encoder(), progress=False)
    with IndexStore.open(tmp_path / "idx", writable=True):
        with pytest.raises(SearchIndexError, match="being written by another process"):
            IndexStore.open(tmp_path / "idx", writable=True)
        IndexStore.open(tmp_path / "idx").close()  # readers are never blocked


def _child_main(config: dict, mode: str, src: Path, idx: Path, delay: float, kill_at_tx: int) -> None:
    """Body of the child process: build or update with the tiny CLIP of ``config`` (seed 0,
    the weights of the parent's ``tiny.encoder()``). ``delay`` slows each encoder batch so a
    SIGKILL from the parent lands mid-run; ``kill_at_tx`` makes the child SIGKILL itself at
    the start of its N-th write transaction, after that batch's rows were written and
    fsynced and before SQLite commits them."""
    import torch

    from vqclip.encoder import open_encoder
    from vqclip.models.clip import CLIP, CLIPConfig

    torch.manual_seed(0)
    enc = open_encoder(CLIP(CLIPConfig(**config)).eval())
    inner = enc.session.encode_image

    def slow(px):
        time.sleep(delay)
        return inner(px)

    enc.session.encode_image = slow
    if kill_at_tx:
        real_tx, calls = IndexStore._tx, [0]

        def dying_tx(self):
            calls[0] += 1
            if calls[0] == kill_at_tx:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_tx(self)

        IndexStore._tx = dying_tx
    if mode == "build":
        build_index(src, idx, enc, storage="fp16", batch_size=2, workers=1, progress=False, commit_every=2)
    else:
        update_index(idx, enc, batch_size=2, workers=1, progress=False, commit_every=2)


# Children come from a fork server that imported torch once and never ran it (forking a
# process whose OpenMP pool has run can hang); each child then starts in milliseconds.
_MP = mp.get_context("forkserver")
_MP.set_forkserver_preload(["torch", "vqclip.index.build", "vqclip.encoder", "vqclip.backends.torch_backend"])


def _child(tiny, mode: str, src: Path, idx: Path, delay: float = 0.0, kill_at_tx: int = 0):
    config = dataclasses.asdict(tiny.CLIP)
    proc = _MP.Process(target=_child_main, args=(config, mode, src, idx, delay, kill_at_tx), daemon=True)
    proc.start()
    return proc


def _wait(proc) -> int:
    """The child's fate: -signal number if killed, else its exit code."""
    proc.join(120)
    return proc.exitcode


def _committed(idx: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{idx / 'entries.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def _assert_complete(tiny, idx: Path, src: Path, n: int) -> None:
    enc = tiny.encoder()
    with IndexStore.open(idx) as st:
        ents = st.entries()
        assert len(ents) == n and st.count == n  # nothing lost, nothing duplicated
        assert sorted(e.row for e in ents.values()) == list(range(n))
        for rel, e in ents.items():
            ref = enc.encode_image(enc.preprocess([read_and_decode(str(src / rel)).image]))[0]
            # fp16 storage: each element within 2^-11 relative; the row is the right image's.
            np.testing.assert_allclose(st.vectors[e.row].astype(np.float32), ref, atol=2e-3)


@pytest.mark.slow
def test_sigkill_during_build_then_update_loses_and_duplicates_nothing(tiny, images, tmp_path):
    n = 24
    src = _folder(images, tmp_path, n)
    idx = tmp_path / "idx"
    proc = _child(tiny, "build", src, idx, delay=0.15)
    deadline = time.monotonic() + 60
    while _committed(idx) < 4 and time.monotonic() < deadline and proc.is_alive():
        time.sleep(0.005)
    # Just after a commit: the child is inside the next batch's slowed encoding, so the
    # kill lands mid-batch, not on a commit boundary.
    proc.kill()  # SIGKILL
    assert _wait(proc) == -signal.SIGKILL
    before = _committed(idx)
    assert 4 <= before < n, f"the kill should land mid-build, {before} of {n} were committed"
    with IndexStore.open(idx) as st:  # opens, holding exactly the committed entries
        assert len(st.entries()) == before
    enc = tiny.encoder()
    rep = update_index(idx, enc, progress=False)
    assert (rep.added, rep.updated, rep.total) == (n - before, 0, n)
    assert enc.session.images == n - before  # committed work is not re-encoded
    _assert_complete(tiny, idx, src, n)


def test_kill_between_row_write_and_commit(tiny, images, tmp_path):
    # A build of 5 images in batches of 2 commits in transactions 1-3; killing at the start
    # of the 3rd leaves that batch's rows fsynced on disk but referenced by no entry.
    src = _folder(images, tmp_path, 5)
    idx = tmp_path / "idx"
    assert _wait(_child(tiny, "build", src, idx, kill_at_tx=3)) == -signal.SIGKILL
    assert _committed(idx) == 4
    with IndexStore.open(idx) as st:
        assert st.count == 4 and (idx / "vectors.bin").stat().st_size > 4 * 32 * 2  # garbage past the count
    enc = tiny.encoder()
    rep = update_index(idx, enc, progress=False)
    assert rep.added == 1 and enc.session.images == 1
    _assert_complete(tiny, idx, src, 5)


def test_kill_during_compaction(tiny, images, tmp_path):
    # Removing files leaves holes; the update's last transaction re-points moved rows.
    src = _folder(images, tmp_path, 6)
    idx = tmp_path / "idx"
    build_index(src, idx, tiny.encoder(), batch_size=2, progress=False)
    for i in (0, 2):
        (src / f"img{i}.png").unlink()
    # update transactions: 1 = remove the two entries, 2 = compaction: kill there.
    assert _wait(_child(tiny, "update", src, idx, kill_at_tx=2)) == -signal.SIGKILL
    assert _committed(idx) == 4
    with IndexStore.open(idx) as st:
        assert st.holes == 2  # the removal committed, the compaction did not
    enc = tiny.encoder()
    update_index(idx, enc, progress=False)
    assert enc.session.images == 0
    _assert_complete(tiny, idx, src, 4)
