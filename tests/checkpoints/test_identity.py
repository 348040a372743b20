"""One model identity: a zoo name, its weights file, a folder holding it and a module loaded
from any of them are the same weights; a module changed in memory is not."""
from __future__ import annotations

import shutil

import torch

from vqclip.checkpoints import load_clip, weights_digest
from vqclip.zoo import get
from vqclip.zoo.bundled import weights_file


def test_name_file_folder_and_loaded_module_share_one_digest(tmp_path):
    path = weights_file(get("shapes-clip"))
    folder = tmp_path / "hf-like"
    folder.mkdir()
    shutil.copy(path, folder / "model.safetensors")
    want = get("shapes-clip").weights.sha256
    assert weights_digest("shapes-clip") == weights_digest(path) == weights_digest(folder) == want
    assert weights_digest(load_clip("shapes-clip")) == want
    assert weights_digest(load_clip(path)) == want


def test_a_module_changed_after_loading_is_another_model(tmp_path, tiny):
    path = tiny.checkpoint(tmp_path / "tiny.safetensors")
    model = load_clip(path)
    assert weights_digest(model) == weights_digest(path)
    with torch.no_grad():
        model.logit_scale.add_(1.0)  # edited in place: the file no longer describes it
    assert weights_digest(model) != weights_digest(path)
    other = load_clip(path)
    with torch.no_grad():
        other.ln_final.weight = torch.nn.Parameter(other.ln_final.weight * 2)  # replaced
    assert weights_digest(other) != weights_digest(path)
    third = load_clip(path)
    path.write_bytes(path.read_bytes())  # the file rewritten since loading: it no longer vouches
    assert weights_digest(third) != weights_digest(path)
    built = tiny.clip()  # never a file: its tensors are its identity
    assert weights_digest(built) == weights_digest(tiny.clip()) != weights_digest(tiny.clip(1))
