"""The runtime subcommands end to end, in process: classify, index build/update, search,
and each bad input giving one line on stderr and a non-zero exit."""
from __future__ import annotations

import json

import pytest
from _runtime_support import save_png, tiny_checkpoint, truncated_png

from engine.cli import main


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "cache"))
    model = tiny_checkpoint(tmp_path / "tiny.safetensors")
    src = tmp_path / "images"
    for i in range(5):
        save_png(src / ("sub" if i % 2 else "") / f"img{i}.png", i)
    return tmp_path, str(model), src


def _one_line_error(capsys, rc, match):
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1, err
    assert match in err


def test_classify_json_and_bad_images(env, capsys):
    tmp, model, src = env
    bad = truncated_png(tmp / "bad.png")
    rc = main(["classify", str(src / "img0.png"), str(src / "sub" / "*.png"), str(bad), "--model", model,
               "--labels", "a red circle", "a blue square", "a green star", "--top-k", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 1  # one image could not be read
    assert f"skipped {bad}" in err and "truncated" in err
    doc = json.loads(out)
    assert [d["image"] for d in doc] == [str(src / "img0.png"), str(src / "sub" / "img1.png"),
                                         str(src / "sub" / "img3.png")]
    for d in doc:
        assert len(d["labels"]) == 2 and d["labels"][0]["prob"] >= d["labels"][1]["prob"]
        assert {x["label"] for x in d["labels"]} <= {"a red circle", "a blue square", "a green star"}
    # The table, from the cache this time (same model, templates and labels).
    rc = main(["classify", str(src / "img0.png"), "--model", model, "--labels", "a red circle",
               "a blue square", "a green star"])
    out = capsys.readouterr().out
    assert rc == 0 and out.splitlines()[0] == str(src / "img0.png") and "%" in out


def test_classify_bad_input(env, capsys, tmp_path):
    _, model, src = env
    img = str(src / "img0.png")
    _one_line_error(capsys, main(["classify", img, "--model", model]), "no labels")
    _one_line_error(capsys, main(["classify", img, "--model", model, "--labels", "x", "--top-k", "0"]),
                    "--top-k must be at least 1")
    latin = tmp_path / "labels.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    _one_line_error(capsys, main(["classify", img, "--model", model, "--labels-file", str(latin)]), "not UTF-8")
    _one_line_error(capsys, main(["classify", img, "--model", model, "--labels", "x", "--templates",
                                  str(tmp_path / "none.txt")]), "neither a built-in set")
    _one_line_error(capsys, main(["classify", img, "--model", "no-such-model", "--labels", "x"]),
                    "unknown clip model")


def test_index_build_update_search(env, capsys):
    tmp, model, src = env
    idx = str(tmp / "idx")
    (src / "readme.txt").write_text("not an image")
    (src / "zero.png").write_bytes(b"")
    rc = main(["index", "build", str(src), "--out", idx, "--model", model, "--storage", "int8", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0 and "5 entries: 5 added" in out and "1 non-images and 1 unreadable" in out
    assert "zero.png" in err

    assert main(["search", idx, "a red circle", "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and set(hits[0]) == {"path", "score"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    assert main(["search", idx, "--image", str(src / "sub" / "img3.png"), "-k", "1"]) == 0
    score, path = capsys.readouterr().out.split()
    assert path == str(src / "sub" / "img3.png") and float(score) > 0.98  # int8 rounding only

    save_png(src / "new.png", 50)
    assert main(["index", "update", idx, "--no-progress"]) == 0
    assert "6 entries: 1 added" in capsys.readouterr().out
    assert main(["index", "info", idx, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["entries"], info["storage"], info["embed_dim"], info["skipped"]) == (6, "int8", 32, 1)


def test_search_bad_input(env, capsys):
    tmp, model, src = env
    idx = str(tmp / "idx")
    assert main(["index", "build", str(src), "--out", idx, "--model", model, "--no-progress"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, main(["search", idx, "   "]), "only whitespace")
    _one_line_error(capsys, main(["search", idx, "circle", "--k", "0"]), "--k must be at least 1")
    _one_line_error(capsys, main(["search", str(tmp / "missing"), "circle"]), "does not exist")
    _one_line_error(capsys, main(["search", idx]), "either a TEXT query or --image")
    _one_line_error(capsys, main(["index", "update", str(tmp / "missing")]), "does not exist")
    _one_line_error(capsys, main(["index", "build", str(src), "--out", idx, "--model", model]),
                    "already holds an index")
    tiny_checkpoint(tmp / "tiny.safetensors", seed=1)  # the model file now holds other weights
    _one_line_error(capsys, main(["search", idx, "circle"]), "was built with")


def test_demo_writes_its_report_and_reruns(env, capsys):
    # The tiny random model stands in for shapes-clip (mechanics, not accuracy); torch
    # only, so no ONNX export runs here (the export has its own tests).
    from engine.demo import run_demo

    tmp, model, _ = env
    out = tmp / "demo"
    for _ in range(2):  # a second run into the same folder replaces the first run's output
        assert run_demo(out, samples=6, backend="torch", model=model, echo=print) == 0
    text = capsys.readouterr().out
    assert "torch fp32" in text and "<- fastest, used below" in text and str(out / "index.html") in text
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["classified"]) == 6 and len(doc["search"]) == 3
    assert all(len(q["hits"]) == 3 for q in doc["search"])
    assert len(list((out / "images").glob("demo_*.png"))) == 6
    page = (out / "index.html").read_text()
    assert page.count("<img src='images/demo_") == 6 + 9  # every sample + 3 hits per query
    (out / "index" / "header.json").unlink()  # no longer the demo's own index: left alone
    _one_line_error(capsys, main(["demo", "--out", str(out)]), "is not a demo index")
