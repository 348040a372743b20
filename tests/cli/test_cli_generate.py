"""``vqclip generate`` as a user runs it: files written, bad input in one line, and a
SIGTERM or Ctrl-C mid-run leaving the latest image whole."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from vqclip.cli import main
from vqclip.jobs.generate.outputs import read_png_settings


def test_several_prompts_and_seeds_in_one_batch(tmp_path, capsys):
    rc = main(["generate", "a red star", "a blue circle", "--seeds", "1", "2", "--steps", "3", "--cutn", "4",
               "--out", str(tmp_path), "--json", "--no-progress"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and {line["status"] for line in lines} == {"done"}
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["a-blue-circle-1.png", "a-blue-circle-2.png", "a-red-star-1.png", "a-red-star-2.png"]
    assert read_png_settings(tmp_path / "a-red-star-2.png")["seed"] == 2


@pytest.mark.parametrize("args,match", [
    ([], "no prompts were given"),
    (["x", "--steps", "0"], "steps must be a whole number >= 1"),
    (["x", "--cutn", "0"], "cutn must be a whole number >= 1"),
    (["x:heavy"], "weight 'heavy' is not a number"),
    (["x", "--size", "30"], "30 is not a multiple of 4"),
    (["x", "--palette", "nope", "--palette-weight", "1"], "colour 'nope' does not parse"),
    (["x", "--augments", "blur"], "unknown augmentation 'blur'"),
    (["x", "--device", "cuda"], "needs a CUDA GPU"),
    (["x", "--init-image", "/nonexistent.png"], "does not exist"),
    (["x", "--noise-prompts", "seven"], "noise prompt 'seven'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, match):
    if "--device" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present")
    argv = ["generate", *args, "--out", str(tmp_path / "out"), "--no-progress"]
    rc = main(argv if "--steps" in args else argv + ["--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("vqclip: error:") and match in err and "\n" not in err


def test_an_output_folder_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["generate", "x", "--steps", "1", "--out", str(tmp_path / "f"), "--no-progress"]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_leaves_the_latest_image_whole(tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vqclip.cli", "generate", "a red star", "--steps", "100000",
                             "--seeds", "1", "--save-every", "1", "--cutn", "2", "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job ignores SIGINT, and the child would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(out.glob("a-red-star-1-*.png")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; the latest images are written" in err
    final = out / "a-red-star-1.png"
    rec = read_png_settings(final)
    assert rec["status"] == "interrupted" and rec["step"] >= 1
    Image.open(final).verify()  # a whole PNG
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_resume_writes_beside_the_checkpoint_unless_out_is_given(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["generate", "a red star", "--seeds", "1", "--steps", "4", "--cutn", "2", "--checkpoint-every", "3",
                 "--out", str(first), "--no-progress"]) == 0
    ckpt = first / "a-red-star-1.ckpt"  # saved at step 3 of 4
    capsys.readouterr()
    moved = tmp_path / "moved"
    assert main(["generate", "--resume", str(ckpt), "--out", str(moved), "--no-progress"]) == 0
    assert read_png_settings(moved / "a-red-star-1.png")["step"] == 4 and str(moved) in capsys.readouterr().out
    assert main(["generate", "--resume", str(ckpt), "--no-progress"]) == 0
    assert str(first) in capsys.readouterr().out and not (first / "moved").exists()


def test_a_finished_run_resumes_only_with_more_steps(tmp_path, capsys):
    assert main(["generate", "a red star", "--seeds", "1", "--steps", "2", "--cutn", "2", "--checkpoint-every", "2",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    ckpt = tmp_path / "a-red-star-1.ckpt"
    assert main(["generate", "--resume", str(ckpt), "--no-progress"]) == 2
    assert "nothing left to run" in capsys.readouterr().err
    assert main(["generate", "--resume", str(ckpt), "--steps", "3", "--no-progress"]) == 0
    assert read_png_settings(tmp_path / "a-red-star-1.png")["step"] == 3


def test_augments_without_affine_turn_every_warp_off():
    from vqclip.cli.generate import _settings
    from vqclip.cli.main import build_parser
    from vqclip.jobs.generate.settings import PRESETS

    preset = PRESETS[("shapes-clip", "shapes-vqgan")]  # zooms 0.8-1.2 in its cutouts
    args = build_parser().parse_args(["generate", "x", "--augments", "jitter"])
    cut = _settings(args, preset).cutouts
    assert (cut.degrees, cut.translate, cut.shear, cut.scale, cut.perspective) == (0.0, 0.0, 0.0, (1.0, 1.0), 0.0)


def test_generate_help_states_the_presets_defaults():
    # The help text is written out (importing the presets would load torch for `--help`);
    # this keeps it in step with settings.PRESETS and GenerateSettings.
    from vqclip.cli.main import build_parser
    from vqclip.jobs.generate.settings import PRESETS, GenerateSettings

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["generate"]
    helps = {a.dest: a.help for a in sub._actions}
    bundled, other = PRESETS[("shapes-clip", "shapes-vqgan")], GenerateSettings()
    assert f"{bundled.steps}" in helps["steps"] and bundled.steps == other.steps
    assert f"bundled {bundled.lr}, others {other.lr}" in helps["lr"]
    assert f"bundled {bundled.init}, others {other.init}" in helps["init"]
    assert f"bundled {bundled.init_weight}, others {other.init_weight:g}" in helps["init_weight"]
    assert f"bundled {bundled.cutouts.cutn}, others {other.cutouts.cutn}" in helps["cutn"]


def test_the_onnxruntime_backend_runs_an_exported_step_graph(tmp_path, capsys, bundled_step_graph):
    rc = main(["generate", "a red star", "--backend", "onnxruntime", "--step-graph", str(bundled_step_graph),
               "--steps", "2", "--cutn", "2", "--seeds", "1", "--out", str(tmp_path), "--json", "--no-progress"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["status"] == "done"
    assert (tmp_path / "a-red-star-1.png").is_file()


@pytest.mark.parametrize("args,match", [
    (["--backend", "onnxruntime", "--step-graph", "GRAPH", "--cutn", "4"], "export one with --size 64 64 --cutn 4"),
    (["--backend", "onnxruntime", "--cut-method", "crops"], "pooled cutouts only"),
    (["--step-graph", "GRAPH"], "runs on the onnxruntime generation backend"),
    (["--backend", "onnxruntime", "--step-graph", "NOWHERE"], "is not a generation-step export"),
])
def test_the_onnxruntime_backend_refuses_in_one_line(tmp_path, capsys, bundled_step_graph, args, match):
    args = [str(bundled_step_graph) if a == "GRAPH" else str(tmp_path / "none") if a == "NOWHERE" else a
            for a in args]
    rc = main(["generate", "x", "--steps", "1", *args, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("vqclip: error:") and match in err and "\n" not in err
