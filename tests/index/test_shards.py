"""Parquet shards: written atomically, read back as any Parquet reader sees them, imported into
an index that searches like one built directly, and every bad input refused in one line."""
from __future__ import annotations

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'vqclip[ray]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install 'vqclip[ray]')")

from vqclip.errors import IndexMismatchError, SearchIndexError  # noqa: E402
from vqclip.index import Index, IndexStore  # noqa: E402
from vqclip.index.shards import (  # noqa: E402
    import_shards,
    listing_digest,
    read_shard_meta,
    shard_is_current,
    shard_name,
    write_shard,
)


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _meta(i, E=16, digest="a" * 64, root="/data/pics", failed=()):
    return {"model": {"name": "m", "digest": digest, "config": None}, "embed_dim": E, "root": root, "shard": i,
            "listing": f"L{i}", "listed": 4 + len(failed), "failed": list(failed)}


def _shard(folder, i, E=16, seed=0, **meta):
    emb = _unit(4, E, seed)
    rel = [f"s{i}/{j}.png" for j in range(4)]
    write_shard(folder / shard_name(i), _meta(i, E, **meta), rel, [10 + j for j in range(4)], [7] * 4,
                [f"{j:064x}" for j in range(4)], emb)
    return rel, emb


def test_shard_round_trip_readable_by_any_parquet_reader(tmp_path):
    rel, emb = _shard(tmp_path, 0, failed=[("bad.png", 5, 6, "truncated")])
    t = pq.read_table(tmp_path / shard_name(0))  # a plain Parquet read, as Spark or DuckDB would
    assert t.column_names == ["path", "size", "mtime_ns", "sha256", "embedding"]
    assert t.column("path").to_pylist() == rel
    got = np.asarray(t.column("embedding").combine_chunks().flatten()).reshape(4, 16)
    np.testing.assert_array_equal(got, emb)
    m = read_shard_meta(tmp_path / shard_name(0))
    assert (m.model_digest, m.embed_dim, m.shard, m.failed) == ("a" * 64, 16, 0, [("bad.png", 5, 6, "truncated")])
    assert shard_is_current(tmp_path / shard_name(0), "a" * 64, "L0")
    assert not shard_is_current(tmp_path / shard_name(0), "b" * 64, "L0")  # another model: redo
    assert not shard_is_current(tmp_path / shard_name(0), "a" * 64, "L1")  # other files: redo
    assert [p.name for p in tmp_path.iterdir()] == [shard_name(0)]  # no temporary file left


def test_listing_digest_changes_with_the_folder_or_any_file_field():
    base = [("a.png", 1, 2), ("b.png", 3, 4)]
    assert listing_digest("/r", base) == listing_digest("/r", list(base))
    assert listing_digest("/other", base) != listing_digest("/r", base)
    for changed in ([("a.png", 1, 2), ("b.png", 3, 5)], [("a.png", 1, 2), ("c.png", 3, 4)], base[:1]):
        assert listing_digest("/r", changed) != listing_digest("/r", base)


def test_import_gives_an_index_with_every_row_and_the_failures_as_skipped(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    r0, e0 = _shard(shards, 0, seed=0, failed=[("bad.png", 5, 6, "bad.png: truncated")])
    r1, e1 = _shard(shards, 1, seed=1)
    report = import_shards([shards], tmp_path / "idx", storage="fp32")
    assert (report.added, report.total, report.failed) == (8, 8, [("bad.png", "bad.png: truncated")])
    with IndexStore.open(tmp_path / "idx") as st:
        assert st.header.model_digest == "a" * 64 and st.header.root == "/data/pics"
        assert set(st.skipped()) == {"bad.png"}
        ents = st.entries()
        for rel, row in zip(r0 + r1, np.concatenate([e0, e1])):
            np.testing.assert_array_equal(st.vectors[ents[rel].row], row)
    # searched through the fused kernels: each row finds itself first
    with Index.open(tmp_path / "idx") as idx:
        hits = idx.search_embeddings(np.concatenate([e0, e1]), 1)
        assert [h[0].path for h in hits] == [f"/data/pics/{r}" for r in r0 + r1]


def test_import_refuses_mixed_or_foreign_shards_naming_both(tmp_path):
    (tmp_path / "a").mkdir()
    _shard(tmp_path / "a", 0)
    _shard(tmp_path / "a", 1, digest="b" * 64)
    with pytest.raises(IndexMismatchError, match="two models.*shard-00000.*aaaaaaaaaaaa.*shard-00001.*bbbbbbbbbbbb"):
        import_shards([tmp_path / "a"], tmp_path / "idx")
    (tmp_path / "b").mkdir()
    _shard(tmp_path / "b", 0)
    _shard(tmp_path / "b", 1, E=24)
    with pytest.raises(IndexMismatchError, match="two sizes.*16.*24"):
        import_shards([tmp_path / "b"], tmp_path / "idx")
    (tmp_path / "c").mkdir()
    _shard(tmp_path / "c", 0)
    _shard(tmp_path / "c", 1, root="/elsewhere")
    with pytest.raises(SearchIndexError, match="two image folders"):
        import_shards([tmp_path / "c"], tmp_path / "idx")
    assert not (tmp_path / "idx").exists()  # checked before anything is written


def test_import_refuses_files_that_are_not_shards(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SearchIndexError, match="x.parquet is not a readable Parquet file"):
        import_shards([tmp_path / "x.parquet"], tmp_path / "idx")
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "plain.parquet")
    with pytest.raises(SearchIndexError, match="plain.parquet is a Parquet file but not a vqclip shard"):
        import_shards([tmp_path / "plain.parquet"], tmp_path / "idx")
    _shard(tmp_path, 3)
    t = pq.read_table(tmp_path / shard_name(3))
    pq.write_table(t.drop_columns(["sha256"]), tmp_path / "nosha.parquet")  # metadata kept, a column lost
    with pytest.raises(SearchIndexError, match="column 'sha256' is missing"):
        import_shards([tmp_path / "nosha.parquet"], tmp_path / "idx")
    md = dict(t.schema.metadata)
    md[b"vqclip"] = b"{not json"
    pq.write_table(t.replace_schema_metadata(md), tmp_path / "damaged.parquet")
    with pytest.raises(SearchIndexError, match="damaged vqclip metadata"):
        import_shards([tmp_path / "damaged.parquet"], tmp_path / "idx")
    with pytest.raises(SearchIndexError, match="does not exist"):
        import_shards([tmp_path / "missing"], tmp_path / "idx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SearchIndexError, match="holds no .parquet shards"):
        import_shards([tmp_path / "empty"], tmp_path / "idx")


def test_import_refuses_rows_an_index_would_not_hold(tmp_path):
    emb = _unit(2, 16)
    emb[1, 3] = np.nan
    write_shard(tmp_path / "nan.parquet", _meta(0), ["a.png", "b.png"], [1, 1], [1, 1], ["0" * 64] * 2, emb)
    with pytest.raises(SearchIndexError, match="not numbers"):
        import_shards([tmp_path / "nan.parquet"], tmp_path / "idx")
    write_shard(tmp_path / "up.parquet", _meta(0), ["../../etc/x.png"], [1], [1], ["0" * 64], _unit(1, 16))
    with pytest.raises(SearchIndexError, match="outside the image root"):
        import_shards([tmp_path / "up.parquet"], tmp_path / "idx")
    write_shard(tmp_path / "two.parquet", _meta(0), ["a.png", "a.png"], [1, 1], [1, 1], ["0" * 64] * 2, _unit(2, 16))
    with pytest.raises(SearchIndexError, match="'a.png' has two rows"):
        import_shards([tmp_path / "two.parquet"], tmp_path / "idx")
    assert not (tmp_path / "idx").exists()  # a failed import leaves nothing behind


def test_import_refuses_a_job_folder_until_the_job_is_complete(tmp_path):
    from vqclip.index.shards import write_job

    out = tmp_path / "job"
    out.mkdir()
    _shard(out, 0)
    _shard(out, 1, seed=1)
    job = {"model": {"name": "m", "digest": "a" * 64, "config": None}, "embed_dim": 16, "root": "/data/pics",
           "shard_size": 4, "shards": 3, "files": 12}
    write_job(out, {**job, "complete": False})  # killed mid-job: shard 2 never written
    with pytest.raises(SearchIndexError, match=r"has not finished \(2 of 3 shards written\); rerun"):
        import_shards([out], tmp_path / "idx")
    write_job(out, {**job, "complete": True})  # says complete, yet a shard is gone
    with pytest.raises(SearchIndexError, match="has not finished"):
        import_shards([out], tmp_path / "idx")
    _shard(out, 2, seed=2)
    _shard(out, 7, seed=7)  # not one of the job's shards (the job covers 0..2): never imported
    assert import_shards([out], tmp_path / "idx").total == 12


def test_a_failed_forced_import_keeps_the_old_index(tmp_path):
    (tmp_path / "s").mkdir()
    _shard(tmp_path / "s", 0)
    import_shards([tmp_path / "s"], tmp_path / "idx")
    emb = _unit(2, 16)
    emb[0, 0] = np.inf
    write_shard(tmp_path / "s" / shard_name(1), _meta(1), ["x.png", "y.png"], [1, 1], [1, 1], ["0" * 64] * 2, emb)
    with pytest.raises(SearchIndexError, match="not numbers"):
        import_shards([tmp_path / "s"], tmp_path / "idx", force=True)
    with IndexStore.open(tmp_path / "idx") as st:
        assert st.n_entries == 4  # the index from before, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "s"]  # nothing left beside it


def test_import_over_an_index_needs_force_and_keeps_the_old_one_until_done(tmp_path):
    (tmp_path / "s").mkdir()
    _shard(tmp_path / "s", 0)
    import_shards([tmp_path / "s"], tmp_path / "idx")
    with pytest.raises(SearchIndexError, match="already holds an index; import with --force"):
        import_shards([tmp_path / "s"], tmp_path / "idx")
    _shard(tmp_path / "s", 1, seed=1)
    report = import_shards([tmp_path / "s"], tmp_path / "idx", force=True)
    assert report.total == 8
    with IndexStore.open(tmp_path / "idx") as st:
        assert st.n_entries == 8
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SearchIndexError, match="exists and is not an index"):
        import_shards([tmp_path / "s"], tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
