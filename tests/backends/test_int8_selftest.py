"""int8 graphs carry a self-test that the backend runs on the CPU it opens them on: an
export validated on one CPU class cannot give wrong embeddings silently on another."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vqclip._hashing import sha256_file
from vqclip.backends import onnxruntime_backend as ortb
from vqclip.backends import open_backend
from vqclip.errors import BackendUnavailableError
from vqclip.manifest import read_manifest


@pytest.fixture
def folder(tiny_clip_export, tmp_path):
    """A private copy of the suite's export (these tests edit it)."""
    dst = tmp_path / "export"
    shutil.copytree(tiny_clip_export, dst)
    return dst


def _ids(n=2):
    ids = np.zeros((n, 77), dtype=np.int64)
    ids[:, :3] = [49406, 320, 49407]
    return ids


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_int8_graphs_record_a_selftest_and_the_cpu_they_were_measured_on(tiny_clip_export):
    from vqclip._cpus import int8_gemm_path, simd_class

    m = read_manifest(tiny_clip_export)
    assert m.measured_on["int8_gemm"] == int8_gemm_path() and m.measured_on["cpu_class"] == simd_class()
    for g in m.graphs:
        if g.precision != "int8":
            assert g.selftest == {}
            continue
        st = g.selftest
        assert st["file"] == f"{g.component}.int8.selftest.npz" and st["min_cosine"] == 0.99 and st["n"] == 3
        with np.load(tiny_clip_export / st["file"]) as data:
            assert len(data["inputs"]) == len(data["outputs"]) == 3


def test_the_selftest_runs_once_per_graph_and_process(folder, monkeypatch):
    ortb._SELF_TESTED.clear()
    loads = []
    real = np.load
    monkeypatch.setattr(ortb.np, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    for _ in range(2):
        be = open_backend("onnxruntime", folder, precision="int8")
        be.encode_text(_ids())
        be.encode_image(np.zeros((1, 3, 32, 32), np.float32))
    assert len(loads) == 2  # text and image, each checked once
    assert all(cos >= 0.99 for cos in ortb._SELF_TESTED.values())


def test_a_graph_that_is_off_on_this_cpu_is_refused_in_one_line(folder):
    # What an AVX2 machine sees with a saturating int8 GEMM, made here by recording outputs
    # the graph does not give: the backend must refuse, not answer.
    st_file = folder / "text_encoder.int8.selftest.npz"
    with np.load(st_file) as data:
        inputs, outputs = data["inputs"], data["outputs"]
    rng = np.random.default_rng(0)
    with open(st_file, "wb") as f:
        np.savez(f, inputs=inputs, outputs=rng.standard_normal(outputs.shape).astype(np.float32))

    def fix_sha(data):
        for g in data["graphs"]:
            if g["selftest"].get("file") == st_file.name:
                g["selftest"]["sha256"] = sha256_file(st_file)

    _edit_manifest(folder, fix_sha)
    be = open_backend("onnxruntime", folder, precision="int8")
    with pytest.raises(BackendUnavailableError) as err:
        be.encode_text(_ids())
    msg, cli = str(err.value), err.value.cli_message()
    assert "\n" not in msg + cli
    assert "text_encoder.int8.onnx fails its int8 self-test on this CPU" in msg
    assert "int8 GEMM here" in msg and "force=True" in msg and "precision='fp32'" in msg  # Python's words
    assert "--precision int8 --force" in cli and "--precision fp32" in cli  # the CLI's
    be.encode_image(np.zeros((1, 3, 32, 32), np.float32))  # the image graph still passes its own


def test_an_int8_export_without_a_selftest_is_refused_where_int8_can_saturate(folder, monkeypatch):
    def drop(data):
        for g in data["graphs"]:
            g.pop("selftest", None)
        data.pop("measured_on", None)

    _edit_manifest(folder, drop)
    monkeypatch.setattr(ortb, "int8_gemm_path", lambda: "avx2 vpmaddubsw (int16 pair sums)")
    monkeypatch.setattr(ortb, "has_vnni", lambda: False)
    with pytest.raises(BackendUnavailableError, match="older vqclip without an int8 self-test.*avx2"):
        open_backend("onnxruntime", folder, precision="int8").encode_text(_ids())
    monkeypatch.setattr(ortb, "int8_gemm_path", lambda: "vnni (avx512_vnni)")
    monkeypatch.setattr(ortb, "has_vnni", lambda: True)
    assert open_backend("onnxruntime", folder, precision="int8").encode_text(_ids()).shape == (2, 32)
    open_backend("onnxruntime", folder, precision="fp32").encode_text(_ids())  # fp32 never needs one


def test_a_tampered_selftest_file_is_refused_like_a_tampered_graph(folder):
    from vqclip.errors import ManifestError

    st_file = folder / "image_encoder.int8.selftest.npz"
    st_file.write_bytes(st_file.read_bytes()[:-10])
    with pytest.raises(ManifestError, match="image_encoder.int8.selftest.npz: sha256 differs"):
        read_manifest(folder)
    with pytest.raises(ManifestError, match="sha256 differs"):
        open_backend("onnxruntime", folder, precision="int8").encode_image(np.zeros((1, 3, 32, 32), np.float32))
