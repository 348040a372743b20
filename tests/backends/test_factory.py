"""Choosing backends by name, and the one-line reasons when one cannot run here."""
from __future__ import annotations

import importlib.util

import onnxruntime
import pytest

from vqclip.backends import BACKENDS, backend_status, open_backend
from vqclip.errors import BackendUnavailableError, ManifestError, UnknownBackendError


def test_unknown_backend_lists_names():
    with pytest.raises(UnknownBackendError) as e:
        open_backend("openvino")
    msg = str(e.value)
    assert "'openvino'" in msg and all(name in msg for name in BACKENDS)


def test_aliases_resolve(tiny_clip, tmp_path):
    assert open_backend("PyTorch", clip=tiny_clip).name == "torch"
    with pytest.raises(ManifestError, match="no manifest.json"):  # reached the ORT backend
        open_backend("ort", tmp_path)


def test_sources_checked(tiny_clip, tmp_path):
    with pytest.raises(BackendUnavailableError, match="not an export folder"):
        open_backend("torch", tmp_path, clip=tiny_clip)
    with pytest.raises(BackendUnavailableError, match="needs an export folder"):
        open_backend("onnxruntime")
    with pytest.raises(BackendUnavailableError, match="needs a module"):
        open_backend("torch")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_missing_names_package(tmp_path):
    with pytest.raises(BackendUnavailableError, match="tensorrt Python package is not installed"):
        open_backend("tensorrt", tmp_path)
    assert "tensorrt" in backend_status()["tensorrt"]


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                    reason="onnxruntime-gpu is installed here")
def test_ort_cuda_missing_names_package(tmp_path):
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider.*install onnxruntime-gpu"):
        open_backend("onnxruntime", tmp_path, device="cuda")


def test_unknown_device_and_precision(tiny_clip, tmp_path):
    with pytest.raises(BackendUnavailableError, match="no device 'tpu'"):
        open_backend("onnxruntime", tmp_path, device="tpu")
    with pytest.raises(BackendUnavailableError, match="int8 runs on the onnxruntime backend"):
        open_backend("torch", clip=tiny_clip, precision="int8")


def test_cli_lists_backends(capsys):
    from vqclip.cli import main

    assert main(["backends"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:len(BACKENDS)]] == list(BACKENDS)
    assert out[0].split()[1] == "available"  # torch always runs


def test_tensorrt_refuses_a_cpu_device(tmp_path):
    with pytest.raises(BackendUnavailableError, match="runs on a CUDA GPU, not 'cpu'"):
        open_backend("tensorrt", tmp_path, device="cpu")
