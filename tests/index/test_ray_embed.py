"""Embedding on Ray Data: on a local Ray started by this module (2 CPUs, torn down after), the
shards hold the embeddings `build_index` computes on the same folder, a rerun resumes, a worker
killed mid-batch is retried without losing or doubling rows, and bad addresses fail in one line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'vqclip[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'vqclip[ray]')")

from vqclip.encoder import open_encoder  # noqa: E402
from vqclip.errors import IndexMismatchError, SearchIndexError, ServiceUnreachableError  # noqa: E402
from vqclip.index import IndexStore, build_index  # noqa: E402
from vqclip.index.ray_embed import EncoderSpec, embed_with_ray  # noqa: E402
from vqclip.index.shards import import_shards, iter_shard_rows, read_shard_meta, shard_name  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, no dashboard, shut down at the end."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("ray") / "pics"
    for i in range(14):
        images.png(root / ("sub" if i % 3 == 0 else "") / f"{i}.png", i)
    images.truncated(root / "broken.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny):
    return tiny.checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", 0)


def _rows(out: Path) -> dict[str, np.ndarray]:
    """Every row of every shard in ``out``, by path; a path seen twice fails the test."""
    rows: dict[str, np.ndarray] = {}
    for p in sorted(out.glob("shard-*.parquet")):
        for entries, emb in iter_shard_rows(read_shard_meta(p)):
            for e, v in zip(entries, emb):
                assert e[0] not in rows, f"{e[0]} written twice"
                rows[e[0]] = v
    return rows


def test_shards_equal_index_build_on_the_same_folder(local_ray, folder, checkpoint, tmp_path):
    report = embed_with_ray(folder, tmp_path / "shards", model=str(checkpoint), backend="torch", shard_size=4,
                            batch_size=3)
    assert (report.shards, report.written, report.kept, report.images) == (4, 4, 0, 14)
    assert [r for r, _ in report.failed] == ["broken.png"] and report.not_images == 1
    got = _rows(tmp_path / "shards")
    build_index(folder, tmp_path / "idx", open_encoder(str(checkpoint)), storage="fp32", progress=False)
    with IndexStore.open(tmp_path / "idx") as st:
        want = {rel: np.array(st.vectors[e.row]) for rel, e in st.entries().items()}
        assert set(st.skipped()) == {"broken.png"}
    assert set(got) == set(want)
    cos = np.array([got[r] @ want[r] / np.linalg.norm(got[r]) / np.linalg.norm(want[r]) for r in want])
    assert cos.min() >= 0.9999, cos.min()
    # imported, the shards make the same index: same paths, rows to float32 rounding, same skipped file
    import_shards([tmp_path / "shards"], tmp_path / "imported", storage="fp32")
    with IndexStore.open(tmp_path / "imported") as st:
        assert set(st.skipped()) == {"broken.png"} and st.header.root == str(folder.resolve())
        for rel, e in st.entries().items():
            np.testing.assert_allclose(st.vectors[e.row], want[rel], atol=1e-5)


def test_rerun_resumes_and_redoes_only_changed_shards(local_ray, folder, checkpoint, tmp_path, tiny):
    out = tmp_path / "shards"
    embed_with_ray(folder, out, model=str(checkpoint), backend="torch", shard_size=4)
    again = embed_with_ray(folder, out, model=str(checkpoint), backend="torch", shard_size=4)
    assert (again.written, again.kept, again.images) == (0, 4, 0)  # nothing re-encoded
    (out / shard_name(2)).unlink()  # as a job killed before it wrote shard 2 leaves it
    again = embed_with_ray(folder, out, model=str(checkpoint), backend="torch", shard_size=4)
    assert (again.written, again.kept) == (1, 3)
    assert len(_rows(out)) == 14
    other = tiny.checkpoint(tmp_path / "other.safetensors", 1)
    with pytest.raises(IndexMismatchError, match=r"holds shards of .*tiny.safetensors.*not .*other.safetensors"):
        embed_with_ray(folder, out, model=str(other), backend="torch", shard_size=4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(SearchIndexError, match="holds shards of the folder .*pics, not .*elsewhere"):
        embed_with_ray(elsewhere, out, model=str(checkpoint), backend="torch", shard_size=4)
    unmounted = tmp_path / "copy"
    (out / "vqclip-shards.json").write_text((out / "vqclip-shards.json").read_text().replace(
        str(folder.resolve()), str(unmounted.resolve())))  # the job's folder, now empty (a lost mount)
    unmounted.mkdir()
    with pytest.raises(SearchIndexError, match="holds no images now, while .* holds 4 shards of it"):
        embed_with_ray(unmounted, out, model=str(checkpoint), backend="torch", shard_size=4)
    assert len(_rows(out)) == 14  # nothing deleted


class CrashOnce:
    """An encoder factory whose encoder kills its worker process (os._exit, as an OOM kill or a
    lost node ends it) in the first batch any worker encodes; later workers encode normally."""

    def __init__(self, model: str, marker: str):
        self.model, self.marker, self.driver = model, marker, os.getpid()

    def __call__(self):
        enc = EncoderSpec(self.model, backend="torch")()
        if os.getpid() != self.driver:
            inner, marker = enc.encode_image, self.marker

            def encode_image(px):
                if not os.path.exists(marker):
                    Path(marker).write_text(str(os.getpid()))
                    os._exit(1)
                return inner(px)

            enc.encode_image = encode_image
        return enc


def test_a_killed_worker_is_retried_without_losing_or_doubling_rows(local_ray, folder, checkpoint, tmp_path):
    marker = tmp_path / "crashed"
    report = embed_with_ray(folder, tmp_path / "shards", encoder_factory=CrashOnce(str(checkpoint), str(marker)),
                            shard_size=5, batch_size=4)
    assert marker.exists(), "no worker was killed: the test proved nothing"
    assert report.images == 14 and report.written == 3
    got = _rows(tmp_path / "shards")  # fails on a doubled row
    assert len(got) == 14
    ref = open_encoder(str(checkpoint))
    for rel in ("sub/0.png", "1.png"):  # rows of the batch that died are the right embeddings, not zeros
        from vqclip.decode import read_and_decode

        want = ref.encode_image(ref.preprocess([read_and_decode(str(folder / rel)).image]))[0]
        assert got[rel] @ want > 0.9999


def test_unreachable_address_fails_fast_naming_it(folder, checkpoint, tmp_path):
    with pytest.raises(ServiceUnreachableError, match=r"cannot reach the Ray cluster at '127.0.0.1:1'"):
        embed_with_ray(folder, tmp_path / "s", model=str(checkpoint), address="127.0.0.1:1")
    assert not (tmp_path / "s").exists()


def test_a_workers_error_reaches_the_user_as_itself_or_one_line():
    from ray.exceptions import RayTaskError

    from vqclip.index.ray_embed import _unwrap

    mine = IndexMismatchError("this worker opened other.safetensors")
    assert _unwrap(RayTaskError("MapWorker.submit", "Traceback ...", mine)) is mine
    other = _unwrap(RayTaskError("MapWorker.submit", "Traceback ...", MemoryError("out of memory\nmore")))
    assert isinstance(other, SearchIndexError)
    assert str(other) == ("the Ray job failed (MemoryError: out of memory); rerun it to resume from the shards "
                          "written")
