"""Bad input to the export step: each is a typed error, and nothing is half-written."""
import importlib.util

import pytest
import torch

from vqclip.cli import main
from vqclip.errors import BackendUnavailableError, CheckpointError, OutputExistsError, ParityError, UnknownModelError
from vqclip.export import TOLERANCES, export_model, read_manifest
from vqclip.export.api import _swap_in


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_unknown_model_name(tmp_path, capsys):
    with pytest.raises(UnknownModelError, match="unknown model 'ViT-Z/99'; available: .*ViT-B-32"):
        export_model("ViT-Z/99", tmp_path / "out")
    assert main(["export", "ViT-Z/99", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqclip: error: unknown model") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_zoo_model_without_weights_is_not_exported_random(tmp_path):
    with pytest.raises(CheckpointError, match="no bundled weights.*weights=PATH") as err:
        export_model("ViT-B/32", tmp_path / "out")
    assert "vqclip export ViT-B-32 --weights PATH" in err.value.cli_message()  # the CLI's wording names its flag
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_not_matching_the_named_config(tmp_path, vqgan_checkpoint):
    # The tiny VQGAN's weights given for the f16-1024 architecture.
    with pytest.raises(CheckpointError):
        export_model("vqgan-f16-1024", tmp_path / "out", weights=vqgan_checkpoint)
    assert list(tmp_path.iterdir()) == []


def test_unknown_precision(tmp_path, tiny):
    with pytest.raises(ValueError, match="unknown precision.*fp32, fp16, int8"):
        export_model(tiny.vqgan(), tmp_path / "out", ["fp8"])


def test_existing_folder_refused_before_any_work(tmp_path, capsys, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists; pass force=True"):
        export_model(tiny.vqgan(), out)
    assert main(["export", "vqgan-f16-1024", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and _leftovers(tmp_path) == []


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
                    reason="tensorrt and a CUDA GPU are present, so the missing-TensorRT gate does not apply")
def test_tensorrt_gate_stops_before_any_work(tmp_path, tiny):
    with pytest.raises(BackendUnavailableError, match="--tensorrt needs"):
        export_model(tiny.vqgan(), tmp_path / "out", tensorrt=True)
    assert list(tmp_path.iterdir()) == []


def test_out_of_tolerance_writes_nothing_and_keeps_the_old_export(tmp_path, monkeypatch, tiny):
    # A real export judged against a bound no graph can meet: the export must fail with the
    # report, and even with force=True the previous folder must survive untouched.
    out = tmp_path / "out"
    export_model(tiny.vqgan(with_encoder=False), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setitem(TOLERANCES, "fp32", {"max_abs_diff": -1.0})
    with pytest.raises(ParityError, match=r"failed validation, nothing written: vqgan_decoder fp32: "
                                          r"max_abs_diff .* > -1"):
        export_model(tiny.vqgan(with_encoder=False), out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_force_replaces_only_an_export_or_an_empty_folder(tmp_path, capsys, tiny):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    afile = tmp_path / "afile"
    afile.write_text("a file")
    for out, words in ((mine, "not a vqclip export"), (afile, "is a file")):
        with pytest.raises(OutputExistsError, match=words):
            export_model(tiny.vqgan(with_encoder=False), out, force=True)
        assert main(["export", "vqgan-f16-1024", "--out", str(out), "--force"]) == 2
        assert words in capsys.readouterr().err
    assert (mine / "thesis.txt").read_text() == "years of work" and (mine / "sub").is_dir()
    assert afile.read_text() == "a file" and _leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    export_model(tiny.vqgan(with_encoder=False), empty, force=True)  # an empty folder may be filled
    export_model(tiny.vqgan(with_encoder=False), empty, force=True)  # and an export replaced
    assert (empty / "manifest.json").is_file() and _leftovers(tmp_path) == []


def test_swap_in_replaces_only_with_force(tmp_path):
    new, out = tmp_path / "new", tmp_path / "out"
    new.mkdir()
    (new / "f").write_text("new")
    out.mkdir()  # appeared while the export worked (empty, as a --force target may be)
    with pytest.raises(OutputExistsError):
        _swap_in(new, out, force=False)
    assert new.exists()
    _swap_in(new, out, force=True)
    assert (out / "f").read_text() == "new" and not new.exists()
    assert _leftovers(tmp_path) == []


def test_cli_export_from_checkpoint_path(vqgan_export, vqgan_checkpoint):
    # The CLI run in the fixture: a .ckpt path is a VQGAN, named after the file, hashed.
    m = read_manifest(vqgan_export.directory)
    assert m.family == "vqgan" and m.model == "tiny-vqgan"
    assert m.source["path"] == str(vqgan_checkpoint.resolve())
    from vqclip.manifest import sha256_file

    assert m.source["sha256"] == sha256_file(vqgan_checkpoint)


def test_clip_checkpoint_not_matching_the_named_config(tmp_path, tiny_clip):
    # A tiny CLIP's state dict given as ViT-B/32 weights: refused by the strict loader.
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.state_dict(), path)
    with pytest.raises(CheckpointError):
        export_model("ViT-B/32", tmp_path / "out", weights=path)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_triton_clash_refused_before_any_work(tmp_path, tiny):
    repo = tmp_path / "repo"
    (repo / "mine_vqgan_decoder").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="Triton model folder .*mine_vqgan_decoder already exists"):
        export_model(tiny.vqgan(with_encoder=False), tmp_path / "out", triton_repo=repo, name="mine")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("args,match", [
    (["--triton", "repo"], "--generation exports one fp32 ONNX graph"),
    (["--precision", "int8"], "--generation exports one fp32 ONNX graph"),
    (["--size", "63"], "multiples of 4"),
    (["--size", "64", "64", "64"], "a side or width height"),
    (["EXISTS"], "already exists; pass --force"),
])
def test_generation_export_refuses_in_one_line_before_any_work(tmp_path, capsys, args, match):
    out = tmp_path / "out"
    if args == ["EXISTS"]:
        out.mkdir()
        args = []
    rc = main(["export", "shapes-clip", "--generation", "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and match in err and "\n" not in err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
                    reason="tensorrt and a CUDA GPU are present, so the missing-TensorRT gate does not apply")
def test_generation_tensorrt_gate_stops_before_any_work(tmp_path, capsys, tiny_clip, tiny_vqgan):
    from vqclip.export.generation import StepShape, export_generation

    with pytest.raises(BackendUnavailableError, match="--tensorrt needs"):
        export_generation(tiny_clip, tiny_vqgan, tmp_path / "out", StepShape(size=(32, 32), cutn=2),
                          mean=(0.5,) * 3, std=(0.5,) * 3, tensorrt=True)
    assert main(["export", "shapes-clip", "--generation", "--tensorrt", "--out", str(tmp_path / "out")]) == 2
    assert "--tensorrt needs" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_generation_flags_without_generation_are_refused(tmp_path, capsys):
    assert main(["export", "shapes-clip", "--out", str(tmp_path / "out"), "--cutn", "4"]) == 2
    assert "--cutn shape(s) the generation step: add --generation" in capsys.readouterr().err
