"""Search served by Milvus (Milvus Lite, the embedded engine, from a local file): an exported
index answers exactly (FLAT) as the fused kernels do, HNSW's recall is measured, and another
model, a missing or foreign collection and an unreachable URI are refused in one line."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'vqclip[milvus]')")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'vqclip[milvus]')")

from vqclip.errors import (  # noqa: E402
    IndexMismatchError,
    InvalidInputError,
    OutputExistsError,
    SearchIndexError,
    ServiceUnreachableError,
)
from vqclip.index import Index, IndexStore  # noqa: E402
from vqclip.index.milvus import MilvusIndex, connect, export_milvus, parse_target  # noqa: E402
from vqclip.index.reader import open_index  # noqa: E402

N, E = 2000, 32


@pytest.fixture(scope="module")
def rows_index(tmp_path_factory, tiny):
    """A 2000-row fp16 index of random unit rows under the tiny CLIP of seed 0 (no images needed:
    these tests search by embedding)."""
    path = tmp_path_factory.mktemp("milvus") / "rows.vqindex"
    x = np.random.default_rng(0).standard_normal((N, E)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    enc = tiny.encoder(0)
    st = IndexStore.create(path, model_name="tiny-0", model_digest=enc.identity.digest, embed_dim=E,
                           storage="fp16", root="/data/pics")
    st.add([(f"{i}.png", 100 + i, 7, f"{i:064x}") for i in range(N)], x, [])
    st.close()
    return path


@pytest.fixture(scope="module")
def exported(rows_index, tmp_path_factory):
    db = tmp_path_factory.mktemp("lite") / "v.db"
    flat = export_milvus(rows_index, str(db), "flat")
    hnsw = export_milvus(rows_index, str(db), "hnsw", index_type="HNSW")
    return flat.target, hnsw.target, db


def _queries(n=32, seed=1):
    q = np.random.default_rng(seed).standard_normal((n, E)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_flat_answers_as_the_fused_kernels(rows_index, exported, tiny):
    flat, _, _ = exported
    q = _queries()
    with Index.open(rows_index) as idx, open_index(flat, encoder=tiny.encoder(0)) as m:
        assert isinstance(m, MilvusIndex) and len(m) == N
        want, got = idx.search_embeddings(q, 10), m.search_embeddings(q, 10)
    for w, g in zip(want, got):
        assert [h.row for h in g] == [h.row for h in w]
        assert [h.path for h in g] == [h.path for h in w]
        # The same fp16 rows over their stored norms on both sides: only float32 summation order differs.
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-5)


def test_hnsw_recall_at_10_against_exact(rows_index, exported):
    _, hnsw, _ = exported
    q = _queries(64, seed=2)
    with Index.open(rows_index) as idx, MilvusIndex.open(hnsw) as m:
        assert m.store.client.describe_index(m.store.collection, "embedding")["index_type"] == "HNSW"  # Milvus's own
        exact = idx.search_embeddings(q, 10)
        approx = m.search_embeddings(q, 10)
    recall = np.mean([len({h.row for h in a} & {h.row for h in e}) / 10 for a, e in zip(approx, exact)])
    print(f"HNSW (M=16, efConstruction=200, ef=64) recall@10 on {N} x {E}: {recall:.3f}")
    assert recall >= 0.95, recall


def test_text_query_and_file_lookup_through_milvus(tmp_path, tiny, images):
    from vqclip.index import build_index

    root = tmp_path / "pics"
    for i in range(6):
        images.png(root / f"{i}.png", seed=i)
    build_index(root, tmp_path / "idx", tiny.encoder(0), storage="fp16", progress=False)
    target = export_milvus(tmp_path / "idx", str(tmp_path / "t.db"), "pics").target
    with Index.open(tmp_path / "idx", encoder=tiny.encoder(0)) as idx, \
            MilvusIndex.open(target, encoder=tiny.encoder(0)) as m:
        want = idx.search(text="a red circle", k=4)
        got = m.search(text="a red circle", k=4)
        assert [h.path for h in got] == [h.path for h in want]
        assert m.store.paths_for_rows([h.row for h in want]) == idx.store.paths_for_rows([h.row for h in want])
        assert len(m.search_embeddings(tiny.encoder(0).encode_texts(["x"]), 50)[0]) == 6  # k past the rows: all
        with pytest.raises(InvalidInputError, match="at most 16384"):
            m.search_embeddings(np.ones((1, E), np.float32), 20000)


def test_collection_of_another_model_is_refused_naming_both(exported, tiny):
    flat, _, _ = exported
    with pytest.raises(IndexMismatchError, match=r"milvus://.*flat.*built with tiny-0.*not tiny-1"):
        MilvusIndex.open(flat, encoder=tiny.encoder(1))


def test_export_replaces_only_with_force_and_leaves_one_collection(rows_index, tmp_path):
    db = str(tmp_path / "f.db")
    export_milvus(rows_index, db, "pics")
    with pytest.raises(OutputExistsError, match="collection 'pics' exists.*--force"):
        export_milvus(rows_index, db, "pics")
    export_milvus(rows_index, db, "pics", index_type="IVF_FLAT", params={"nlist": 16}, force=True)
    client = connect(db)
    try:
        assert len(client.list_collections()) == 1  # the previous physical collection was dropped
        client.create_collection("plain", dimension=E)  # a collection vqclip did not make
    finally:
        client.close()
    with MilvusIndex.open(f"milvus://{db}/pics") as m:
        assert m.store.client.describe_index(m.store.collection, "embedding")["index_type"] == "IVF_FLAT"
        assert len(m) == N
        before = m.search_embeddings(_queries(4), 5)
        # A forced export that dies after its rows went in (here: in the index build) leaves the
        # old collection serving and no half-made one behind.
        import vqclip.index.milvus as milvus_module

        def dies(*args):
            raise RuntimeError("killed mid-build")

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(milvus_module, "create_index", dies)
            with pytest.raises(RuntimeError, match="killed mid-build"):
                export_milvus(rows_index, db, "pics", index_type="HNSW", force=True)
        assert [h.row for h in m.search_embeddings(_queries(4), 5)[0]] == [h.row for h in before[0]]
    with MilvusIndex.open(f"milvus://{db}/pics") as m:
        assert m.index_type == "IVF_FLAT"
    client = connect(db)
    try:
        assert len(client.list_collections()) == 2  # pics's one and "plain": the failed export left nothing
    finally:
        client.close()
    with pytest.raises(SearchIndexError, match="was not made by `vqclip index export-milvus`"):
        MilvusIndex.open(f"milvus://{db}/plain")
    with pytest.raises(OutputExistsError, match="'plain' .* was not made by vqclip"):
        export_milvus(rows_index, db, "plain", force=True)  # --force never drops someone else's collection
    with pytest.raises(SearchIndexError, match="no collection 'nothere'"):
        MilvusIndex.open(f"milvus://{db}/nothere")


def test_an_open_index_keeps_its_collection_until_refresh(rows_index, tmp_path, tiny):
    db = str(tmp_path / "r.db")
    target = export_milvus(rows_index, db, "pics").target
    with MilvusIndex.open(target, encoder=tiny.encoder(0)) as m:
        first = m.store.collection
        export_milvus(rows_index, db, "pics", index_type="IVF_FLAT", params={"nlist": 16}, force=True)
        assert m.store.collection == first  # pinned: a search never meets a half-swapped name
        m.refresh()
        assert m.store.collection != first and m.index_type == "IVF_FLAT"
        assert len(m.search_embeddings(_queries(1), 3)[0]) == 3
        q = _queries(2)
        np.testing.assert_allclose([h.score for h in m.search_embeddings(3 * q, 3)[0]],
                                   [h.score for h in m.search_embeddings(q, 3)[0]], atol=1e-6)  # cosine, any norm


def test_bad_targets_and_unreachable_databases(rows_index, tmp_path):
    assert parse_target("milvus://host:19530/pics") == ("http://host:19530", "pics")
    assert parse_target("milvus+https://host:443/pics") == ("https://host:443", "pics")
    assert parse_target("milvus:///data/x.db/pics") == ("/data/x.db", "pics")
    for bad in ("milvus://host:19530", "milvus://host/bad-name", "http://host/pics"):
        with pytest.raises(InvalidInputError):
            parse_target(bad)
    with pytest.raises(ServiceUnreachableError, match=r"cannot reach Milvus at 'http://127.0.0.1:1'"):
        MilvusIndex.open("milvus://127.0.0.1:1/pics")
    with pytest.raises(ServiceUnreachableError, match="its folder .*nowhere does not exist"):
        export_milvus(rows_index, str(tmp_path / "nowhere" / "x.db"), "pics")
    with pytest.raises(SearchIndexError, match="no Milvus Lite file at"):
        MilvusIndex.open(f"milvus://{tmp_path}/absent.db/pics")
    assert not (tmp_path / "absent.db").exists()  # searching never makes an empty database
    with pytest.raises(InvalidInputError, match="index type 'DISKANN'"):
        export_milvus(rows_index, str(tmp_path / "x.db"), "pics", index_type="diskann")
