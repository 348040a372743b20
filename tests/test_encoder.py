"""vqclip.encoder: the export cache behind the exported backends."""
from __future__ import annotations

import json

import numpy as np

from vqclip import __version__
from vqclip.encoder import open_encoder


def _only_export(cache):
    folders = list((cache / "exports").iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def test_cached_export_is_reused_then_remade_for_another_vqclip_version(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path))
    module = tiny.clip(3)
    first = open_encoder(module, "onnxruntime")
    folder = _only_export(tmp_path)
    manifest = folder / "manifest.json"
    made = manifest.stat().st_mtime_ns

    open_encoder(module, "onnxruntime")  # same weights, same vqclip: the cache answers
    assert manifest.stat().st_mtime_ns == made

    data = json.loads(manifest.read_text())
    data["versions"]["vqclip"] = "0.0.1"  # as if an older vqclip had exported it
    manifest.write_text(json.dumps(data))
    again = open_encoder(module, "onnxruntime")
    assert _only_export(tmp_path) == folder
    assert json.loads(manifest.read_text())["versions"]["vqclip"] == __version__

    ids = np.zeros((1, 77), dtype=np.int64)
    ids[0, :3] = [49406, 320, 49407]
    np.testing.assert_allclose(again.session.encode_text(ids), first.session.encode_text(ids), atol=1e-6)


def test_damaged_cached_graph_is_remade_not_served(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path))
    module = tiny.clip(4)
    first = open_encoder(module, "onnxruntime")
    graph = _only_export(tmp_path) / "text_encoder.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the sha256 no longer matches the manifest
    graph.write_bytes(bytes(data))

    again = open_encoder(module, "onnxruntime")  # checked before the backend loads it
    ids = np.zeros((1, 77), dtype=np.int64)
    ids[0, :3] = [49406, 320, 49407]
    np.testing.assert_allclose(again.session.encode_text(ids), first.session.encode_text(ids), atol=1e-6)
