"""TensorRT: what can be checked without it (the builder itself is not run here)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from vqclip.errors import BackendUnavailableError, InputShapeError
from vqclip.export.graphs import components_for
from vqclip.export.tensorrt import build_engine, profile_for, require_tensorrt

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def test_profiles_cover_every_dynamic_dim(tiny):
    image, text = components_for(tiny.clip())
    assert profile_for(image) == {"pixels": ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))}
    assert profile_for(text) == {"input_ids": ((1, 1), (8, 16), (32, 77))}  # batch x tokens
    dec, enc = components_for(tiny.vqgan())
    assert profile_for(dec) == {"latent": ((1, 16, 1, 1), (8, 16, 16, 16), (32, 16, 32, 32))}
    # The encoder's image side is f * latent side (f = 2 for the tiny model, 16 in the zoo).
    assert profile_for(enc)["image"] == ((1, 3, 2, 2), (8, 3, 32, 32), (32, 3, 64, 64))


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt and a CUDA GPU are present, so the gate does not apply")
def test_gate_names_what_is_missing():
    with pytest.raises(BackendUnavailableError, match=r"--tensorrt needs (the `tensorrt` package|an NVIDIA GPU)"):
        require_tensorrt()


def test_int8_without_calibration_is_refused(tmp_path):
    with pytest.raises(InputShapeError, match="int8 needs calibration data"):
        build_engine(Path("x.onnx"), tmp_path / "x.int8.plan", {}, precision="int8")
    assert list(tmp_path.iterdir()) == []
