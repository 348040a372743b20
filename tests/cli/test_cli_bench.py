"""`vqclip bench` from the command line: every mistake is one line and a non-zero exit before
anything is measured; a tiny run prints its table, writes its report and compares."""
from __future__ import annotations

import json

import pytest
from test_cli import _one_line_error  # tests/cli is on sys.path (no __init__.py)

from vqclip.cli import main


@pytest.mark.parametrize("argv, words", [
    (["nosuchjob"], "unknown bench job 'nosuchjob'; jobs: encode-image, encode-text, topk, search, index-build"),
    (["topk", "--backend", "nosuch"], "unknown backend 'nosuch'; available: torch, onnxruntime, tensorrt"),
    (["topk", "--precision", "fp8"], "unknown precision 'fp8'; precisions: fp32, fp16, bf16, int8"),
    (["encode-image", "--backend", "torch", "--precision", "int8"],
     "--precision int8 is run by none of --backend torch"),
    (["search", "--precision", "bf16"], "--precision bf16 runs on CUDA only (the torch backend)"),
    (["topk", "--model", "no-such-model"], "unknown clip model 'no-such-model'; available: "),
])
def test_mistakes_are_one_line_before_anything_runs(argv, words, capsys):
    _one_line_error(capsys, main(["bench", *argv]), words)


@pytest.mark.parametrize("flag, value", [("--batch", "1,x"), ("--batch", "0,16"), ("--batch", ""),
                                         ("--rows", "-5"), ("--seconds", "0"), ("--device", "tpu")])
def test_values_that_do_not_parse_are_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "topk", flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("vqclip: error: ") and err.count("\n") == 1 and flag in err


def test_a_backend_not_installed_is_one_line(capsys):
    from vqclip.backends import backend_status

    why = backend_status()["tensorrt"]
    if why is None:
        pytest.skip("tensorrt is installed and runs here")
    _one_line_error(capsys, main(["bench", "topk", "--backend", "tensorrt"]), f"--backend tensorrt: {why}")


def test_device_cuda_without_a_gpu_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    _one_line_error(capsys, main(["bench", "topk", "--device", "cuda"]), "sees no CUDA GPU; use --device cpu")


def test_an_out_that_cannot_be_written_is_one_line_before_the_run(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_line_error(capsys, main(["bench", "topk", "--out", str(blocker / "sub")]),
                    f"--out: cannot create the output folder {str(blocker / 'sub')!r} (Not a directory)")


@pytest.mark.parametrize("text", ["[1, 2]", '{"format": 1, "machine": {}, "jobs": []}',
                                  '{"format": 1, "machine": {"cpu": "x", "cpu_class": "y"}, "jobs": [3]}',
                                  '{"machine": {"cpu": "x", "cpu_class": "y"}, "jobs": []}'])
def test_compare_with_a_file_that_is_not_a_report_is_one_line(tmp_path, capsys, text):
    bad = tmp_path / "old.json"
    bad.write_text(text)
    out = tmp_path / "out"
    _one_line_error(capsys, main(["bench", "topk", "--compare", str(bad), "--out", str(out)]),
                    "not a vqclip bench report.json")
    assert not out.exists()  # refused before the --out folder is made


def test_topk_takes_storage_types_whatever_the_backends(tmp_path, capsys):
    assert main(["bench", "topk", "--backend", "torch", "--precision", "int8", "--rows", "500", "--batch", "1",
                 "--seconds", "0.01", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["runner"] for r in report["jobs"][0]["rows"] if not r["peer"]} >= {"vqclip int8"}


def test_a_failed_job_exits_1_naming_it(monkeypatch, capsys):
    import vqclip.bench as bench

    def broken(opts, job):
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(bench.JOBS, "topk", broken)
    assert main(["bench", "topk", "--seconds", "0.01"]) == 1
    captured = capsys.readouterr()
    assert "FAILED: RuntimeError: disk on fire" in captured.out
    assert captured.err.startswith("vqclip: error: bench jobs failed: topk ")


def test_compare_with_a_missing_file_is_one_line(tmp_path, capsys):
    _one_line_error(capsys, main(["bench", "topk", "--compare", str(tmp_path / "missing.json")]),
                    "not a vqclip bench report.json")


def test_a_tiny_run_prints_writes_and_compares(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["bench", "topk", "--quick", "--rows", "2000", "--batch", "1", "--seconds", "0.03", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "== topk" in text and "vqclip float32" in text and f"wrote {out / 'report.json'}" in text
    old = json.loads((out / "report.json").read_text())
    for row in old["jobs"][0]["rows"]:
        row["throughput"] *= 10  # an earlier run ten times faster: every figure is now worse
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main([*argv[:-2], "--json", "--compare", str(tmp_path / "old.json")]) == 0  # a warning, not a failure
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout is the JSON alone; the tables went to stderr
    assert report["command"] == "vqclip bench topk --quick --batch 1 --rows 2000 --seconds 0.03"
    assert "== topk" in captured.err
    assert "vqclip: warning: WORSE topk | N=2,000 D=512 B=1 k=10 | vqclip float32: " in captured.err
