"""Search with the query encoder on ONNX Runtime gives torch's results within the backend
tolerance, from the Python API and from ``vqclip search --backend onnxruntime``; and the
kernel's thread count is the process's CPUs whatever torch was told.

The index is built once with the torch backend from scenes of the bundled model's world,
so rankings mean something. Tolerances come from the backends' own bounds on unit query
embeddings (tests/backends/test_backend_parity.py): fp32 max abs difference 1e-4, int8
cosine 0.99. A query that moves by ``d`` (L2) moves every cosine score by at most ``d``
(the rows are unit vectors), so scores may differ by ``sqrt(E) * 1e-4`` (fp32) or
``sqrt(2 - 2 * 0.99)`` (int8), plus the fp16 storage's kernel arithmetic (1e-5).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vqclip.cli import main
from vqclip.errors import InvalidInputError
from vqclip.index.build import build_index
from vqclip.index.reader import Index

N = 24
KERNEL_TOL = 1e-5  # fp16 rows, float32 accumulation (tests/test_search.py)


@pytest.fixture(scope="module")
def world(tmp_path_factory, bundled_clip):
    """(index path, {image path: label}, {backend name: Index}) over N rendered scenes."""
    from vqclip.encoder import open_encoder
    from vqclip.zoo import shapes

    tmp = tmp_path_factory.mktemp("search-backends")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQCLIP_CACHE", str(tmp / "cache"))  # the export is made here, once
        scenes = shapes.sample_scenes("test", 200, N)
        truth = {}
        for i, (scene, px) in enumerate(zip(scenes, shapes.render_batch(scenes, size=64))):
            p = tmp / "images" / f"img{i:02d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(px).save(p)
            truth[str(p)] = shapes.label(scene.colour, scene.shape)
        build_index(tmp / "images", tmp / "idx", open_encoder("shapes-clip"), storage="fp16", progress=False)
        indexes = {"torch": Index.open(tmp / "idx", model="shapes-clip")}
        for precision in ("fp32", "int8"):
            indexes[precision] = Index.open(tmp / "idx", model="shapes-clip", backend="onnxruntime",
                                            precision=precision)
        yield tmp / "idx", truth, indexes
        for idx in indexes.values():
            idx.close()


def _queries(truth: dict) -> list[str]:
    return sorted(set(truth.values()))[:6]


def _score_tol(precision: str, dim: int) -> float:
    return (math.sqrt(dim) * 1e-4 if precision == "fp32" else math.sqrt(2 - 2 * 0.99)) + KERNEL_TOL


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_search_matches_torch(world, precision):
    _, _, indexes = world
    ref, idx = indexes["torch"], indexes[precision]
    assert idx.encoder.backend == f"onnxruntime-{precision}" and ref.encoder.backend == "torch-fp32"
    tol = _score_tol(precision, ref.store.header.embed_dim)
    for text in _queries(world[1]):
        q_ref, q = ref.encoder.encode_texts([text]), idx.encoder.encode_texts([text])  # (1, E) each
        if precision == "fp32":
            assert float(np.abs(q - q_ref).max()) <= 1e-4, text
        else:
            assert float((q * q_ref).sum()) >= 0.99, text
        every = {h.row: h.score for h in ref.search(text=text, k=N)}  # torch's score of each row
        kth = sorted(every.values(), reverse=True)[4]
        hits = idx.search(text=text, k=5)
        assert len(hits) == 5 and len({h.row for h in hits}) == 5
        for h in hits:
            assert abs(h.score - every[h.row]) <= tol, (text, h)  # the same row, scored alike
            assert every[h.row] >= kth - 2 * tol, (text, h)  # among torch's best 5, up to ties
        if precision == "fp32":  # tight enough to pin the order wherever torch's gaps exceed it
            want = [h.row for h in ref.search(text=text, k=5)]
            got = [h.row for h in hits]
            gaps = np.diff([every[r] for r in want])
            if (np.abs(gaps) > 2 * tol).all():
                assert got == want, text


def test_onnxruntime_int8_finds_the_queried_scenes(world):
    # The semantic check, on the least exact backend: the best hit shows what was asked for.
    _, truth, indexes = world
    for text in _queries(truth):
        for name in ("torch", "int8"):
            assert truth[indexes[name].search(text=text, k=1)[0].path] == text, (name, text)


def test_cli_search_on_onnxruntime(world, capsys, monkeypatch):
    path, truth, indexes = world
    monkeypatch.setenv("VQCLIP_CACHE", str(path.parent / "cache"))  # the fixture's export, reused
    text = _queries(truth)[0]
    for precision in ("fp32", "int8"):
        assert main(["search", str(path), text, "--k", "3", "--backend", "onnxruntime",
                     "--precision", precision, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        want = indexes[precision].search(text=text, k=3)  # same graph, same session settings
        assert [g["path"] for g in got] == [h.path for h in want]
        np.testing.assert_allclose([g["score"] for g in got], [h.score for h in want], atol=1e-6)


def test_kernel_threads_ignore_torch_setting(world, monkeypatch):
    from vqclip._cpus import available_cpus

    path, truth, indexes = world
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shares the OpenMP runtime with the kernels
    try:
        idx = Index.open(path, encoder=indexes["torch"].encoder)
        assert idx.threads == available_cpus()
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = Index.open(path, encoder=indexes["torch"].encoder)
    assert one.threads == 1
    text = _queries(truth)[0]
    many = idx.search(text=text, k=N)
    assert [(h.row, h.score) for h in one.search(text=text, k=N)] == [(h.row, h.score) for h in many]
    idx.close()
    one.close()


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_bad_thread_count(world, threads):
    with pytest.raises(InvalidInputError, match="threads must be (a whole number|at least 1)"):
        Index.open(world[0], threads=threads)
