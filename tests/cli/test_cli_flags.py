"""The CLI's shared flags and its wording: errors that name the CLI's flags (not Python
arguments), --device, --truncate, --precision per backend, `~` in every path argument,
classify's --top-k aliases, --threshold and --logits, and `index info --skipped`."""
from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path

import pytest
from test_cli import _all_labels, _one_line_error  # tests/cli is on sys.path (no __init__.py)

from vqclip.cli import main
from vqclip.cli.main import build_parser
from vqclip.errors import OutputExistsError, UnknownModelError, VqclipError


# ----- the wording mechanism -----
def test_main_prints_the_cli_wording_when_the_error_has_one(monkeypatch, capsys):
    from vqclip.cli import info

    def fail(args):
        raise VqclipError("pass force=True", cli="pass --force")

    monkeypatch.setattr(info, "_cmd_models", fail)
    _one_line_error(capsys, main(["models"]), "vqclip: error: pass --force\n")

    def fail_plain(args):
        raise VqclipError("one wording for both")

    monkeypatch.setattr(info, "_cmd_models", fail_plain)
    _one_line_error(capsys, main(["models"]), "vqclip: error: one wording for both\n")


def test_the_cli_wording_rides_along_any_error_type():
    e = OutputExistsError("python words", cli="cli words")  # an OSError underneath
    assert isinstance(e, FileExistsError) and str(e) == "python words" and e.cli == "cli words"
    assert e.cli_message() == "cli words" and VqclipError("x").cli_message() == "x"
    k = UnknownModelError("no model 'x'", cli="no model 'x'; see `vqclip models`")
    assert str(k) == "no model 'x'" and k.cli.endswith("`vqclip models`")
    back = pickle.loads(pickle.dumps(e))  # crosses process pools with both wordings
    assert str(back) == "python words" and back.cli == "cli words"


# ----- --backend, --precision, --device: checked before any model loads -----
_MODEL_COMMANDS = [["classify", "img.png", "--labels", "x"], ["index", "build", "dir", "--out", "idx"],
                   ["index", "update", "idx"], ["search", "idx", "a query"], ["serve"]]


@pytest.mark.parametrize("command", _MODEL_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("flags, words", [
    (["--backend", "torch", "--precision", "int8"],
     "--backend torch runs --precision fp32, bf16, fp16, not int8; for int8 use --backend onnxruntime"),
    (["--backend", "tensorrt", "--precision", "bf16"],
     "--backend tensorrt runs --precision fp32, fp16, not bf16; for bf16 use --backend torch"),
    (["--backend", "onnxruntime", "--precision", "bf16"], "for bf16 use --backend torch"),
    (["--backend", "nosuch"], "unknown backend 'nosuch'; available: torch, onnxruntime, tensorrt"),
])
def test_a_precision_the_backend_does_not_run_is_one_line(capsys, command, flags, words):
    _one_line_error(capsys, main([*command, *flags]), words)


def test_tensorrt_on_the_cpu_names_the_device_flag(capsys):
    _one_line_error(capsys, main(["classify", "img.png", "--labels", "x", "--backend", "tensorrt", "--device", "cpu"]),
                    "tensorrt backend runs on a CUDA GPU, not 'cpu'; pass --device cuda (or leave it out)")


def test_tensorrt_on_the_cpu_in_python_names_the_argument(tmp_path):
    from vqclip.backends import open_backend
    from vqclip.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"pass device='cuda' \(or leave it out\)") as e:
        open_backend("tensorrt", tmp_path, device="cpu")
    assert "--device" not in str(e.value) and "--device cuda" in e.value.cli


def test_cuda_without_a_gpu_names_the_device_flag(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is not refused")
    _one_line_error(capsys, main(["classify", "img.png", "--labels", "x", "--backend", "torch", "--device", "cuda"]),
                    "sees no CUDA GPU; use --device cpu")


@pytest.mark.parametrize("argv, words", [
    (["classify", "img.png", "--labels", "x", "--device", "gpu"], "expected cpu, cuda or cuda:N, got 'gpu'"),
    (["search", "idx", "q", "--precision", "int4"], "invalid choice: 'int4'"),
    (["classify", "img.png", "--labels", "x", "--threshold", "1.5"], "must be from 0 to 1 (a probability), got 1.5"),
    (["classify", "img.png", "--labels", "x", "--threshold", "high"], "expected a number from 0 to 1, got 'high'"),
])
def test_bad_flag_values_are_one_line(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("vqclip: error: ") and err.count("\n") == 1 and words in err, err


def test_devices_are_parsed_for_every_model_command():
    parser = build_parser()
    for command in _MODEL_COMMANDS[:4]:
        assert parser.parse_args([*command]).device is None  # the backend's own default
        assert parser.parse_args([*command, "--device", "CUDA:1"]).device == "cuda:1"
    args = parser.parse_args(["classify", "img.png", "--labels", "x"])
    assert (args.backend, args.precision) == (None, None)  # the library chooses


def test_the_precision_help_lists_what_each_backend_runs(capsys):
    from vqclip.backends.factory import BACKEND_PRECISIONS

    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, precisions in BACKEND_PRECISIONS.items():
        assert f"{name}: {', '.join(precisions)}" in text
    assert "'default', the model's own" in text  # --templates names its default


def test_backend_precisions_agree_with_the_backends():
    from vqclip.backends.factory import BACKEND_PRECISIONS
    from vqclip.backends.torch_backend import TORCH_PRECISIONS
    from vqclip.cli._common import PRECISIONS
    from vqclip.export.api import PRECISIONS as EXPORTED

    assert set(BACKEND_PRECISIONS["torch"]) == set(TORCH_PRECISIONS)
    assert set(BACKEND_PRECISIONS["onnxruntime"]) == set(EXPORTED)  # the graphs `vqclip export` writes
    assert set(BACKEND_PRECISIONS["tensorrt"]) == set(EXPORTED) - {"int8"}  # int8 plans need calibration data
    assert set(PRECISIONS) == {p for ps in BACKEND_PRECISIONS.values() for p in ps}


# ----- `~` in every path argument -----
@pytest.mark.parametrize("argv, fields", [
    (["classify", "~/a.png", "--labels", "x", "--labels-file", "~/l.txt", "--templates", "~/t.txt",
      "--model", "~/m.pt"], {"images": ["a.png"], "labels_file": "l.txt", "templates": "t.txt", "model": "m.pt"}),
    (["index", "build", "~/pics", "--out", "~/idx", "--model", "~/m.pt"],
     {"dir": "pics", "out": "idx", "model": "m.pt"}),
    (["index", "update", "~/idx"], {"index": "idx"}),
    (["index", "info", "~/idx"], {"index": "idx"}),
    (["export", "~/m.pt", "--out", "~/exp", "--weights", "~/w.pt", "--triton", "~/repo"],
     {"model": "m.pt", "out": "exp", "weights": "w.pt", "triton": "repo"}),
    (["demo", "--out", "~/demo"], {"out": "demo"}),
    (["generate", "a star", "--clip", "~/c.pt", "--vqgan", "~/v.ckpt", "--out", "~/g", "--init-image", "~/i.png",
      "--resume", "~/r.ckpt", "--image-prompts", "~/p.png:0.5"],
     {"clip": "c.pt", "vqgan": "v.ckpt", "out": "g", "init_image": "i.png", "resume": "r.ckpt",
      "image_prompts": ["p.png:0.5"]}),
    (["serve", "--model", "~/m.pt", "--index", "pics=~/idx", "--api-key-file", "~/keys", "--generation-vqgan",
      "~/v.ckpt", "--generation-out", "~/out", "--config", "~/c.yaml"],
     {"model": "m.pt", "index": [("pics", "idx")], "api_key_file": "keys", "generation_vqgan": "v.ckpt",
      "generation_out": "out", "config": "c.yaml"}),
], ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None)
def test_tilde_is_expanded_in_every_path_argument(monkeypatch, tmp_path, argv, fields):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = build_parser().parse_args(argv)

    def home(v):
        if isinstance(v, list):
            return [home(x) for x in v]
        if isinstance(v, tuple):
            return (v[0], home(v[1]))
        return str(tmp_path / v)

    for name, rel in fields.items():
        assert getattr(args, name) == home(rel), name


def test_quoted_tilde_paths_are_read_and_written_under_home(env, monkeypatch, capsys):
    tmp, truth, src = env
    monkeypatch.setenv("HOME", str(tmp))
    monkeypatch.chdir(tmp / "images")
    (tmp / "labels.txt").write_text("\n".join(_all_labels()) + "\n")
    assert main(["classify", "~/images/img0.png", "--labels-file", "~/labels.txt", "--json", "-k", "1"]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["labels"][0]["label"] == truth[str(src / "img0.png")]
    assert main(["index", "build", "~/images", "--out", "~/idx", "--no-progress"]) == 0
    capsys.readouterr()
    assert (tmp / "idx" / "header.json").is_file() and not (tmp / "images" / "~").exists()  # never ./~/idx
    _one_line_error(capsys, main(["classify", "img0.png", "--labels", "x", "--model", "~/missing.pt"]),
                    str(tmp / "missing.pt"))  # the expanded path is what is reported missing


# ----- errors that named Python arguments -----
def test_a_label_too_long_names_truncate(env, capsys):
    _, _, src = env
    img, long_label = str(src / "img0.png"), " ".join(["word"] * 100)
    _one_line_error(capsys, main(["classify", img, "--labels", long_label, "circle"]), "or pass --truncate")
    assert main(["classify", img, "--labels", long_label, "circle", "--truncate"]) == 0


def test_export_refusals_name_the_cli_flags(tmp_path, capsys):
    from vqclip.export import export_model

    taken = tmp_path / "taken"
    taken.mkdir()
    _one_line_error(capsys, main(["export", "shapes-clip", "--out", str(taken)]),
                    f"export folder {taken} already exists; pass --force to replace it, or choose another path")
    with pytest.raises(OutputExistsError, match="pass force=True to replace it") as e:
        export_model("shapes-clip", taken)
    assert "--force" not in str(e.value)
    (taken / "mine.txt").write_text("a user's file")
    _one_line_error(capsys, main(["export", "shapes-clip", "--out", str(taken), "--force"]),
                    "--force replaces only a vqclip export folder or an empty one")


def test_a_zoo_model_without_weights_names_the_weights_flag(tmp_path, capsys):
    from vqclip.errors import CheckpointError
    from vqclip.export import export_model

    out = str(tmp_path / "exp")
    _one_line_error(capsys, main(["export", "ViT-B-32", "--out", out]), "vqclip export ViT-B-32 --weights PATH")
    with pytest.raises(CheckpointError, match=r"export_model\('ViT-B-32', out_dir, weights=PATH\)"):
        export_model("ViT-B-32", out)


# ----- classify: one set of flags, --threshold, --logits -----
@pytest.mark.parametrize("flag", ["--top-k", "--k", "-k"])
def test_classify_takes_top_k_and_its_aliases(flag):
    assert build_parser().parse_args(["classify", "a.png", "--labels", "x", flag, "3"]).top_k == 3


def test_classify_threshold_and_logits(env, capsys):
    _, truth, src = env
    img = str(src / "img0.png")
    assert main(["classify", img, "--labels", *_all_labels(), "-k", "100", "--json"]) == 0
    [probs] = json.loads(capsys.readouterr().out)
    assert main(["classify", img, "--labels", *_all_labels(), "-k", "100", "--json", "--logits"]) == 0
    [logits] = json.loads(capsys.readouterr().out)
    assert [set(d) for d in logits["labels"]] == [{"label", "logit"}] * len(_all_labels())
    assert [d["label"] for d in logits["labels"]] == [d["label"] for d in probs["labels"]]  # same ranking
    top, second = logits["labels"][0]["logit"], logits["labels"][1]["logit"]
    p0, p1 = probs["labels"][0]["prob"], probs["labels"][1]["prob"]
    assert top > second and abs((top - second) - math.log(p0 / p1)) < 1e-3  # softmax's input

    assert main(["classify", img, "--labels", *_all_labels(), "-k", "100", "--json", "--threshold", "0.01"]) == 0
    [kept] = json.loads(capsys.readouterr().out)
    assert kept["labels"] == [d for d in probs["labels"] if d["prob"] >= 0.01] and kept["labels"]
    assert kept["labels"][0]["label"] == truth[img]

    assert main(["classify", img, "--labels", *_all_labels(), "--logits"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == img and lines[1].split(None, 1) == [f"{top:.3f}", truth[img]] and "%" not in lines[1]


def test_classify_threshold_that_no_label_reaches(env, capsys, monkeypatch):
    from vqclip.jobs import classify as job

    _, _, src = env
    img = str(src / "img0.png")
    monkeypatch.setattr(job, "_softmax", lambda logits: 0 * logits + 1 / logits.shape[1])  # every label equal
    assert main(["classify", img, "--labels", "a", "b", "--threshold", "0.6"]) == 0
    assert capsys.readouterr().out.splitlines() == [img, "  (no label has probability >= 0.6)"]


# ----- index: reported once, listed on demand -----
def test_index_update_reports_an_unreadable_image_once_and_info_lists_it(env, images, capsys, caplog):
    tmp, _, src = env
    idx = str(tmp / "idx")
    assert main(["index", "build", str(src), "--out", idx, "--no-progress"]) == 0
    capsys.readouterr()
    images.truncated(src / "broken.png")
    with caplog.at_level(logging.WARNING):
        assert main(["index", "update", idx, "--no-progress"]) == 0
    out, err = capsys.readouterr()
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert (err + warned).count("broken.png") == 1 and "vqclip: skipped" in err
    assert "1 unreadable images" in out

    assert main(["index", "info", idx]) == 0
    assert "broken.png" not in capsys.readouterr().out  # the count only, unless asked
    assert main(["index", "info", idx, "--skipped"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped file")]
    assert len(listed) == 1 and "broken.png" in listed[0] and "truncated" in listed[0]
    assert main(["index", "info", idx, "--skipped", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["skipped"] == 1 and [f["path"] for f in doc["skipped_files"]] == ["broken.png"]
    assert "truncated" in doc["skipped_files"][0]["reason"]


# ----- the demo -----
def test_the_demo_suggests_the_index_name_the_readme_uses():
    from vqclip.jobs.demo import NEXT_STEPS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    hints = " ".join(command for _, command in NEXT_STEPS)
    assert "pics.vqindex" in hints and "pics.vqindex" in readme and "pics.idx" not in hints + readme


def test_demo_result_paths_are_relative_to_its_folder(tmp_path, monkeypatch):
    from vqclip.jobs.demo import _relative

    out = tmp_path / "demo"
    assert _relative(out / "images" / "a.png", out) == "images/a.png"
    monkeypatch.chdir(tmp_path)
    assert _relative(Path("demo") / "generated" / "b.png", Path("demo")) == "generated/b.png"  # cwd-relative in
    assert _relative(tmp_path / "elsewhere.png", out) == str(tmp_path / "elsewhere.png")  # outside: absolute


def test_device_defaults_to_the_backends_own(tiny):
    # No --device: torch and ONNX Runtime run on the CPU; tensorrt would take cuda (and here says
    # what is missing rather than a device error).
    from vqclip.encoder import open_encoder
    from vqclip.errors import BackendUnavailableError

    assert open_encoder(tiny.clip(), "torch", device=None).session.describe().device == "cpu"
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        open_encoder(tiny.clip(), "tensorrt", device=None)


def test_model_errors_name_the_cli_flags(env, capsys, monkeypatch, tmp_path):
    _, _, src = env
    img = str(src / "img0.png")
    _one_line_error(capsys, main(["classify", img, "--labels", "x", "--model", "ViT-B-32"]),
                    "--model PATH, adding --arch ViT-B-32")
    monkeypatch.setenv("HOME", str(tmp_path))
    _one_line_error(capsys, main(["classify", img, "--labels", "x", "--model", "~/missing.pt"]),
                    f"file '{tmp_path / 'missing.pt'}' does not exist")
    _one_line_error(capsys, main(["classify", img, "--labels", "x", "--model", "no-such-model"]),
                    "unknown clip model 'no-such-model'; available:")


def test_serve_takes_device_and_refuses_cuda_without_a_gpu(capsys):
    pytest.importorskip("fastapi", reason="the server needs the 'server' extra")
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    # The model loads before the server binds, so the refusal comes first, in one line.
    _one_line_error(capsys, main(["serve", "--device", "cuda", "--port", "0"]), "--device cpu")
