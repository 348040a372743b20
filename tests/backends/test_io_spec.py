"""Input checks and manifest reading: every mistake a caller can make gets a typed error."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vqclip.backends import TensorSpec, open_backend, read_manifest
from vqclip.backends._io_spec import check_input
from vqclip.errors import BackendUnavailableError, InputShapeError, ManifestError, UnsupportedOperationError

PIXELS = TensorSpec("pixels", "float32", ("batch", 3, 8, 8))


def test_check_input_accepts_and_makes_contiguous():
    x = np.zeros((2, 8, 8, 3), np.float32).transpose(0, 3, 1, 2)  # a non-contiguous view
    out = check_input(x, PIXELS, "image_encoder")
    assert out.flags.c_contiguous and out.shape == (2, 3, 8, 8)
    assert check_input(torch.zeros(1, 3, 8, 8), PIXELS, "image_encoder").dtype == np.float32


@pytest.mark.parametrize("bad, words", [
    (np.zeros((2, 3, 8, 8), np.float64), ["float64", "float32[batch,3,8,8]", "astype"]),
    (np.zeros((2, 3, 8, 9), np.float32), ["[2, 3, 8, 9]", "float32[batch,3,8,8]"]),
    (np.zeros((3, 8, 8), np.float32), ["[3, 8, 8]"]),
    (np.zeros((0, 3, 8, 8), np.float32), ["no items"]),
    ([[0.0]], ["list", "numpy array"]),
])
def test_check_input_refuses(bad, words):
    with pytest.raises(InputShapeError) as e:
        check_input(bad, PIXELS, "image_encoder")
    for w in words:
        assert w in str(e.value)


def _graph(path):
    """A one-node graph (pixels -> ReduceMean over H, W -> embedding [batch, 3]) for reader tests."""
    node = helper.make_node("ReduceMean", ["pixels"], ["embedding"], axes=[2, 3], keepdims=0)
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture
def folder(tmp_path):
    _graph(tmp_path / "image_encoder.onnx")
    entry = {
        "file": "image_encoder.onnx",
        "sha256": hashlib.sha256((tmp_path / "image_encoder.onnx").read_bytes()).hexdigest(),
        "inputs": [{"name": "pixels", "dtype": "float32", "shape": ["batch", 3, 8, 8]}],
        "outputs": [{"name": "embedding", "dtype": "float32", "shape": ["batch", 3]}],
    }
    # Hand-written, as a user wrapping their own graph would: the entry leaves out
    # component, precision and format, which the reader takes from the file name.
    manifest = {"format_version": 1, "model": "mean-pool", "family": "clip", "source": {}, "opset": 17,
                "created": "2026-01-01T00:00:00+00:00", "versions": {}, "config": {}, "graphs": [entry]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_manifest_read(folder):
    m = read_manifest(folder)
    spec = m.graph("image_encoder", "fp32", "onnx")
    assert spec.inputs == (PIXELS,) and spec.outputs[0].shape == ("batch", 3)
    assert m.precisions() == ["fp32"] and m.vocab_size is None
    be = open_backend("onnxruntime", folder)
    x = np.arange(2 * 3 * 64, dtype=np.float32).reshape(2, 3, 8, 8)
    np.testing.assert_allclose(be.encode_image(x), x.mean(axis=(2, 3)), rtol=1e-6)


def test_manifest_entry_without_inputs(folder):
    data = json.loads((folder / "manifest.json").read_text())
    del data["graphs"][0]["inputs"]
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="lacks a field"):
        read_manifest(folder)


def test_hash_mismatch_refused_on_load(folder):
    with open(folder / "image_encoder.onnx", "ab") as f:
        f.write(b"\0")  # a changed graph file, manifest untouched
    be = open_backend("onnxruntime", folder)  # reading the manifest is cheap; hashing waits for load
    with pytest.raises(ManifestError, match="sha256"):
        be.load()
    with pytest.raises(ManifestError, match="sha256"):  # reading the folder with verification
        read_manifest(folder)
    assert read_manifest(folder, verify=False).graphs
    with pytest.raises(ManifestError, match="cannot load .*image_encoder.onnx"):  # unverified: ORT's error, typed
        open_backend("onnxruntime", folder, verify=False).load()


def test_graph_names_disagree_with_manifest(folder):
    data = json.loads((folder / "manifest.json").read_text())
    data["graphs"][0]["inputs"][0]["name"] = "image"
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="re-export"):
        open_backend("onnxruntime", folder, verify=False).load()


def test_missing_precision_and_component(folder):
    with pytest.raises(BackendUnavailableError, match="no ONNX graphs at int8; it has: fp32"):
        open_backend("onnxruntime", folder, precision="int8")
    with pytest.raises(UnsupportedOperationError, match="no text_encoder; it holds: image_encoder"):
        open_backend("onnxruntime", folder).encode_text(np.zeros((1, 77), np.int64))


def test_vqgan_encoder_needs_multiple_of_factor(tmp_path):
    # The check reads the factor from the output spec ("H/16"); the graph itself is not needed.
    from vqclip.backends._io_spec import GraphSpec
    from vqclip.backends.base import Backend

    spec = GraphSpec("vqgan_encoder", "fp32",
                     (TensorSpec("image", "float32", ("batch", 3, "H", "W")),),
                     (TensorSpec("latent", "float32", ("batch", 4, "H/16", "W/16")),))
    Backend._check_multiple(np.zeros((1, 3, 32, 48), np.float32), spec)
    with pytest.raises(InputShapeError, match="is 32x40; expected sides that are multiples of 16"):
        Backend._check_multiple(np.zeros((1, 3, 32, 40), np.float32), spec)
