"""manifest.json: what it records, and every way a folder can disagree with it."""
import json
import shutil

import onnx
import onnxruntime
import pytest
import torch

from vqclip import __version__
from vqclip._hashing import sha256_file
from vqclip.errors import ManifestError
from vqclip.export import read_manifest
from vqclip.manifest import FORMAT_VERSION


@pytest.fixture
def folder(clip_export, tmp_path):
    # A private copy: these tests damage it.
    dst = tmp_path / "copy"
    shutil.copytree(clip_export.directory, dst)
    return dst


def test_manifest_records_provenance(clip_export):
    data = json.loads((clip_export.directory / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert data["model"] == "tiny-clip" and data["family"] == "clip"
    assert data["opset"] == 18
    assert data["versions"] == {"torch": torch.__version__, "onnx": onnx.__version__,
                                "onnxruntime": onnxruntime.__version__, "vqclip": __version__}
    assert len(data["source"]["sha256"]) == 64
    assert data["config"]["vocab_size"] == 49408 and data["config"]["embed_dim"] == 32
    assert data["created"].endswith("+00:00")
    for g in data["graphs"]:
        assert g["sha256"] == sha256_file(clip_export.directory / g["file"])
        assert set(g["parity"]) >= {"max_abs_diff", "min_cosine", "zero_shot_agreement", "n_samples", "bounds"}
        assert all(set(t) == {"name", "dtype", "shape"} for t in g["inputs"] + g["outputs"])


def test_round_trip(clip_export):
    m = read_manifest(clip_export.directory)
    assert m.to_dict() == clip_export.to_dict()
    assert m.graph("text_encoder", "int8").file == "text_encoder.int8.onnx"


def test_same_model_same_source_hash(tiny_clip, tiny, clip_export):
    # The manifest names the weights by the one model identity: the same weights hash the same.
    from vqclip.checkpoints import weights_digest

    assert clip_export.source["sha256"] == weights_digest(tiny_clip) == weights_digest(tiny.clip())
    assert weights_digest(tiny_clip) != weights_digest(tiny.clip(seed=1))


def test_tampered_graph_is_refused(folder):
    path = folder / "image_encoder.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"image_encoder\.onnx: sha256 differs.*re-export"):
        read_manifest(folder)
    read_manifest(folder, verify=False)  # the caller may opt out of hashing


def test_missing_graph_is_refused(folder):
    (folder / "text_encoder.fp16.onnx").unlink()
    with pytest.raises(ManifestError, match=r"text_encoder\.fp16\.onnx is listed in the manifest but missing"):
        read_manifest(folder, verify=False)


def test_asking_for_an_absent_graph(clip_export):
    with pytest.raises(ManifestError, match="no onnx graph 'vqgan_decoder' at fp32.*image_encoder/fp32/onnx"):
        clip_export.graph("vqgan_decoder")
