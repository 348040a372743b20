"""vqclip.encoder: the export cache behind the exported backends, names and identities."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from vqclip import __version__
from vqclip.encoder import _quiet_exporter, open_encoder
from vqclip.errors import UnknownBackendError


@pytest.fixture(scope="module")
def exported_cache(tmp_path_factory, tiny_clip):
    """A cache holding the one export of the tiny CLIP that every test here starts from."""
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("VQCLIP_CACHE", str(cache))
    try:
        open_encoder(tiny_clip, "onnxruntime")
    finally:
        mp.undo()
    return cache


@pytest.fixture
def cache(exported_cache, tmp_path, monkeypatch):
    """A private copy of the exported cache (tests damage it), set as VQCLIP_CACHE."""
    dst = tmp_path / "cache"
    shutil.copytree(exported_cache, dst)
    monkeypatch.setenv("VQCLIP_CACHE", str(dst))
    return dst


def _only_export(cache):
    folders = list((cache / "exports").iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def _ids():
    ids = np.zeros((1, 77), dtype=np.int64)
    ids[0, :3] = [49406, 320, 49407]
    return ids


def test_cached_export_is_reused_then_remade_for_another_vqclip_version(tiny_clip, cache):
    folder = _only_export(cache)
    manifest = folder / "manifest.json"
    made = manifest.stat().st_mtime_ns
    first = open_encoder(tiny_clip, "onnxruntime")  # same weights, same vqclip: the cache answers
    assert manifest.stat().st_mtime_ns == made

    data = json.loads(manifest.read_text())
    data["versions"]["vqclip"] = "0.0.1"  # as if an older vqclip had exported it
    manifest.write_text(json.dumps(data))
    again = open_encoder(tiny_clip, "onnxruntime")
    assert _only_export(cache) == folder
    assert json.loads(manifest.read_text())["versions"]["vqclip"] == __version__
    np.testing.assert_allclose(again.session.encode_text(_ids()), first.session.encode_text(_ids()), atol=1e-6)


def test_damaged_cached_graph_is_remade_not_served(tiny_clip, cache):
    first = open_encoder(tiny_clip, "onnxruntime")
    want = first.session.encode_text(_ids())
    graph = _only_export(cache) / "text_encoder.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the sha256 no longer matches the manifest
    graph.write_bytes(bytes(data))

    again = open_encoder(tiny_clip, "onnxruntime")  # checked before the backend loads it
    np.testing.assert_allclose(again.session.encode_text(_ids()), want, atol=1e-6)


@pytest.mark.parametrize("name", ["Torch", "PYTORCH", "OnnxRuntime", "ORT"])
def test_backend_names_are_case_insensitive(tiny_clip, cache, name):
    enc = open_encoder(tiny_clip, name)
    assert enc.backend in ("torch-fp32", "onnxruntime-fp32")
    assert len(list((cache / "exports").iterdir())) == 1  # no second export for another spelling


def test_unknown_backend_fails_before_any_model_loads():
    with pytest.raises(UnknownBackendError, match="available: torch, onnxruntime, tensorrt"):
        open_encoder("no-such-model", "openvino")


def test_export_on_demand_quietens_only_the_exporter(caplog):
    caplog.set_level(logging.INFO, logger="torch.onnx")  # the suite quietens it: start from INFO
    with caplog.at_level(logging.INFO):
        with _quiet_exporter():
            logging.getLogger("torch.onnx").warning("exporter chatter")
            logging.getLogger("myapp").warning("the application's own warning")
            logging.getLogger().info("a root record")
        logging.getLogger("torch.onnx").warning("after the export")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["the application's own warning", "a root record", "after the export"]


def _bare_gelu_file(tmp_path, tiny):
    """A GELU model's state dict with nothing beside it that states the architecture."""
    import dataclasses

    import torch

    from vqclip.models.clip import CLIP

    cfg = dataclasses.replace(tiny.CLIP, activation="gelu")
    torch.manual_seed(3)
    torch.save(CLIP(cfg).state_dict(), tmp_path / "bare.pt")
    return tmp_path / "bare.pt", cfg


def test_the_same_weights_as_two_architectures_never_share_an_export(tmp_path, monkeypatch, tiny):
    # A file that states no architecture, opened once as QuickGELU and once as GELU: two exports,
    # each matching torch on its own architecture, and neither served for a call that names none.
    import dataclasses

    from vqclip.errors import CheckpointError

    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "cache"))
    path, gelu = _bare_gelu_file(tmp_path, tiny)
    quick = dataclasses.replace(gelu, activation="quick_gelu")
    ids = np.array([[49406, 320, 1929, 49407] + [0] * 73])
    got = {}
    for name, cfg in (("quick", quick), ("gelu", gelu)):
        ort = open_encoder(path, "onnxruntime", precision="fp32", config=cfg).encode_text(ids)
        ref = open_encoder(path, "torch", config=cfg).encode_text(ids)
        assert np.abs(ort - ref).max() < 1e-4
        got[name] = ort
    assert np.abs(got["quick"] - got["gelu"]).max() > 1e-3  # two models, not one graph served twice
    assert len(list((tmp_path / "cache" / "exports").iterdir())) == 2
    with pytest.raises(CheckpointError, match="does not say its architecture"):
        open_encoder(path, None)  # the caches were made for given architectures: not served unnamed


def test_int8_failing_its_self_test_here_falls_back_to_fp32_unless_asked_for(tmp_path, monkeypatch, caplog):
    from vqclip.errors import BackendUnavailableError
    from vqclip.manifest import read_manifest, write_manifest

    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "cache"))
    open_encoder("shapes-clip", "onnxruntime", precision="int8")  # makes the cached export
    (folder,) = (tmp_path / "cache" / "exports").iterdir()
    manifest = read_manifest(folder, verify=False)
    for g in manifest.graphs:
        if g.precision == "int8":
            g.selftest["min_cosine"] = 1.5  # no CPU passes this bound
    write_manifest(manifest, folder)
    import vqclip.backends.onnxruntime_backend as ort_backend

    monkeypatch.setattr(ort_backend, "_SELF_TESTED", {})
    caplog.set_level("INFO")
    enc = open_encoder("shapes-clip", None, precision=None)  # what the CLI asks when no flag is given
    assert enc.backend == "onnxruntime-fp32" and "int8 export not used on this CPU" in caplog.text
    with pytest.raises(BackendUnavailableError, match="self-test") as err:
        open_encoder("shapes-clip", None, precision="int8").encode_texts(["a red circle"])
    assert "--precision fp32" in err.value.cli_message()
