"""vqclip.manifest without an export: naming, specs, atomic writes, a round trip, every broken folder."""
import json

import pytest

from vqclip.errors import ManifestError
from vqclip.manifest import (
    FORMAT_VERSION,
    GraphRecord,
    Manifest,
    TensorSpec,
    graph_filename,
    read_manifest,
    sha256_file,
    write_manifest,
)


def _manifest(tmp_path, payload=b"graph bytes"):
    (tmp_path / "image_encoder.fp16.onnx").write_bytes(payload)
    rec = GraphRecord("image_encoder", "fp16", "onnx", "image_encoder.fp16.onnx",
                      sha256_file(tmp_path / "image_encoder.fp16.onnx"),
                      [TensorSpec("pixels", "float32", ("batch", 3, 8, 8))],  # a list, as graph_io gives
                      [TensorSpec("embedding", "float32", ("batch", 4))])
    return Manifest(model="m", family="clip", source={"sha256": "0" * 64}, opset=18,
                    created="2026-01-01T00:00:00+00:00", versions={}, config={"vocab_size": 10}, graphs=[rec])


@pytest.mark.parametrize("args, name", [
    (("text_encoder", "fp32"), "text_encoder.onnx"),
    (("text_encoder", "int8"), "text_encoder.int8.onnx"),
    (("vqgan_decoder", "fp16", "tensorrt"), "vqgan_decoder.fp16.plan"),
    (("vqgan_decoder", "fp32", "tensorrt"), "vqgan_decoder.fp32.plan"),
])
def test_graph_filename(args, name):
    assert graph_filename(*args) == name


def test_write_then_read_round_trip(tmp_path):
    m = _manifest(tmp_path)
    write_manifest(m, tmp_path)
    back = read_manifest(tmp_path)
    assert back == m and back.directory == tmp_path
    assert back.graph("image_encoder", "fp16").inputs == (TensorSpec("pixels", "float32", ("batch", 3, 8, 8)),)
    assert back.vocab_size == 10 and back.precisions() == ["fp16"] and back.precisions("tensorrt") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_encoder.fp16.onnx", "manifest.json"]  # no temp left


def test_failed_write_keeps_the_old_manifest(tmp_path):
    m = _manifest(tmp_path)
    write_manifest(m, tmp_path)
    before = (tmp_path / "manifest.json").read_bytes()
    m.config = {"bad": object()}  # not JSON-serialisable: the write fails half-way

    with pytest.raises(TypeError):
        write_manifest(m, tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_encoder.fp16.onnx", "manifest.json"]


def test_onnx_dtype_spellings_and_an_unfeedable_dtype(tmp_path):
    spec = TensorSpec.from_dict({"name": "ids", "dtype": "tensor(int64)", "shape": ["batch", "77", None]})
    assert spec == TensorSpec("ids", "int64", ("batch", 77, "?"))
    write_manifest(_manifest(tmp_path), tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["graphs"][0]["inputs"][0]["dtype"] = "bool"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="dtype 'bool'; expected one of .*re-export"):
        read_manifest(tmp_path)


def test_missing_top_level_field(tmp_path):
    write_manifest(_manifest(tmp_path), tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["opset"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="malformed manifest .*opset"):
        read_manifest(tmp_path)


def test_path_needs_a_folder(tmp_path):
    m = _manifest(tmp_path)
    with pytest.raises(ManifestError, match="not read from a folder"):
        m.path(m.graphs[0])


def test_every_broken_folder_is_refused(tmp_path):
    # The union of what the export's and the backends' readers refused, now one reader.
    with pytest.raises(ManifestError, match="does not exist.*no manifest.json"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(ManifestError, match="no manifest.json here"):
        read_manifest(tmp_path)
    cases = [
        ("{not json", "unreadable, it cannot be read as JSON"),
        ('{"graphs": []}', "not a vqclip export manifest"),
        (json.dumps({"format_version": FORMAT_VERSION + 98}),
         f"format version {FORMAT_VERSION + 98}; this vqclip reads up to {FORMAT_VERSION}: upgrade vqclip"),
        ('{"format_version": 1, "opset": 17}', "no 'graphs'"),
        (json.dumps({"format_version": FORMAT_VERSION, "graphs": [{}]}), "malformed manifest.*lacks a field"),
    ]
    for text, words in cases:
        (tmp_path / "manifest.json").write_text(text)
        with pytest.raises(ManifestError, match=words):
            read_manifest(tmp_path)
