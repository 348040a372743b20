"""The runtime subcommands end to end, in process, on the bundled shapes-clip (the default
model) and rendered scenes of its world: classify, index build/update/info, search, the
demo, and each bad input giving one line on stderr and a non-zero exit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqclip.cli import main


def _all_labels():
    from vqclip.zoo import shapes

    return [shapes.label(c, s) for c, s in shapes.all_labels()]


def _one_line_error(capsys, rc, match):
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1, err
    assert match in err


def test_classify_json_and_bad_images(images, env, capsys):
    tmp, truth, src = env
    bad = images.truncated(tmp / "bad.png")
    rc = main(["classify", str(src / "img0.png"), str(src / "sub" / "*.png"), str(bad),
               "--labels", *_all_labels(), "--top-k", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 1  # one image could not be read
    assert f"skipped {bad}" in err and "truncated" in err
    doc = json.loads(out)
    assert [d["image"] for d in doc] == [str(src / "img0.png"), str(src / "sub" / "img1.png"),
                                         str(src / "sub" / "img3.png")]
    for d in doc:
        assert len(d["labels"]) == 2 and d["labels"][0]["prob"] >= d["labels"][1]["prob"]
        assert d["labels"][0]["label"] == truth[d["image"]]  # the bundled model knows its world
    # The table, from the cache this time (same model, templates and labels).
    rc = main(["classify", str(src / "img0.png"), "--labels", *_all_labels()])
    out = capsys.readouterr().out
    assert rc == 0 and out.splitlines()[0] == str(src / "img0.png")
    assert out.splitlines()[1].endswith(truth[str(src / "img0.png")]) and "%" in out


def test_classify_bad_input(env, capsys, tmp_path):
    _, _, src = env
    img = str(src / "img0.png")
    _one_line_error(capsys, main(["classify", img]), "no labels")
    _one_line_error(capsys, main(["classify", img, "--labels", "x", "--top-k", "0"]), "--top-k must be at least 1")
    latin = tmp_path / "labels.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    _one_line_error(capsys, main(["classify", img, "--labels-file", str(latin)]), "not UTF-8")
    _one_line_error(capsys, main(["classify", img, "--labels", "x", "--templates", str(tmp_path / "none.txt")]),
                    "neither a built-in set")
    _one_line_error(capsys, main(["classify", img, "--model", "no-such-model", "--labels", "x"]),
                    "unknown clip model")


def test_index_build_update_search(images, env, capsys):
    tmp, truth, src = env
    idx = str(tmp / "idx")
    (src / "readme.txt").write_text("not an image")
    (src / "zero.png").write_bytes(b"")
    rc = main(["index", "build", str(src), "--out", idx, "--storage", "int8", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0 and "5 entries: 5 added" in out and "1 non-images and 1 unreadable" in out
    assert "zero.png" in err

    query = truth[str(src / "img0.png")]
    assert main(["search", idx, query, "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and set(hits[0]) == {"path", "score"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert truth[hits[0]["path"]] == query  # the scene of the queried class comes first

    assert main(["search", idx, "--image", str(src / "sub" / "img3.png"), "-k", "1"]) == 0
    score, path = capsys.readouterr().out.split()
    assert path == str(src / "sub" / "img3.png") and float(score) > 0.98  # int8 rounding only

    images.png(src / "new.png", 50)
    assert main(["index", "update", idx, "--no-progress"]) == 0
    assert "6 entries: 1 added" in capsys.readouterr().out
    assert main(["index", "info", idx, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["entries"], info["storage"], info["embed_dim"], info["skipped"]) == (6, "int8", 128, 1)
    assert info["model"] == "shapes-clip"


def test_search_bad_input(env, capsys):
    tmp, _, src = env
    idx = str(tmp / "idx")
    assert main(["index", "build", str(src), "--out", idx, "--no-progress"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, main(["search", idx, "   "]), "only whitespace")
    _one_line_error(capsys, main(["search", idx, "circle", "--k", "0"]), "--top-k must be at least 1")
    _one_line_error(capsys, main(["search", str(tmp / "missing"), "circle"]), "does not exist")
    _one_line_error(capsys, main(["search", idx]), "give one of: a TEXT query, --image PATH")
    _one_line_error(capsys, main(["index", "update", str(tmp / "missing")]), "does not exist")
    _one_line_error(capsys, main(["index", "build", str(src), "--out", idx]), "already holds an index")


def test_index_of_another_model_is_refused(tiny, env, capsys):
    tmp, _, src = env
    model = tiny.checkpoint(tmp / "tiny.safetensors")
    idx = str(tmp / "idx")
    assert main(["index", "build", str(src), "--out", idx, "--model", str(model), "--no-progress"]) == 0
    capsys.readouterr()
    tiny.checkpoint(model, seed=1)  # the model file now holds other weights
    _one_line_error(capsys, main(["search", idx, "circle"]), "was built with")


@pytest.mark.slow
def test_demo_writes_its_report_and_reruns(env, capsys):
    # torch only, so no ONNX export runs here (the export has its own tests; the demo's
    # backend table compares every backend with torch when it runs for real).
    from vqclip.jobs.demo import run_demo

    tmp, _, _ = env
    out = tmp / "demo"
    for _ in range(2):  # a second run into the same folder replaces the first run's output
        assert run_demo(out, samples=8, backend="torch", echo=print, generate_steps=2) == 0
    text = capsys.readouterr().out
    assert "torch fp32" in text and "<- fastest, used below" in text and str(out / "index.html") in text
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["classified"]) == 8 and len(doc["search"]) == 3
    assert doc["backends"][0]["accuracy"] >= 0.75  # shapes-clip on its own world (model card: ~97%)
    assert all(len(q["hits"]) == 3 and q["hits"][0]["match"] for q in doc["search"])
    assert len(list((out / "images").glob("demo_*.png"))) == 8
    page = (out / "index.html").read_text()
    assert page.count("<img src='images/demo_") == 8 + 9  # every sample + 3 hits per query
    gen = doc["generation"]
    assert gen["steps"] == 2 and len(gen["images"]) == 4 and page.count("<img src='generated/") == 4
    assert all((out / "generated" / Path(g["image"]).name).is_file() for g in gen["images"])
    # One convention for every path in results.json: relative to the demo folder.
    paths = [c["image"] for c in doc["classified"]] + [h["path"] for q in doc["search"] for h in q["hits"]] + \
        [g["image"] for g in gen["images"]]
    assert all(not Path(p).is_absolute() and (out / p).is_file() for p in paths), paths
    (out / "index" / "header.json").unlink()  # no longer the demo's own index: left alone
    _one_line_error(capsys, main(["demo", "--out", str(out)]), "is not a demo index")


def test_backends_says_which_simd_and_int8_gemm_paths_run_here(capsys):
    from vqclip import kernels

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    k = kernels.info()
    assert f"SIMD path {k['simd']}" in out and f"CPU class {k['cpu_class']}" in out
    assert f"int8 GEMM    {k['int8_gemm']}" in out


@pytest.mark.parametrize("argv, words", [
    (["index", "build", "x", "--out", "y", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["search", "idx", "q", "--k", "abc"], "invalid int value: 'abc'"),
    (["nosuch"], "invalid choice: 'nosuch'"),
])
def test_argument_errors_are_one_line(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("vqclip: error: ") and err.count("\n") == 1 and words in err, err


def test_a_weights_file_that_does_not_state_its_architecture_takes_arch(tiny, env, capsys, monkeypatch):
    # A bare state dict (no config beside it, no vqclip metadata, not OpenAI's format) is refused
    # in one line that names --arch; with --arch it loads, and the index built from it keeps the
    # architecture so that search reopens the same model.
    import torch

    from vqclip.zoo import ModelRecord, registry

    tmp, _, src = env
    monkeypatch.setitem(registry._REGISTRY, "tiny-arch", ModelRecord(name="tiny-arch", family="clip",
                                                                       config=tiny.CLIP))
    bare = tmp / "epoch_3.pt"
    torch.save(tiny.clip(0).state_dict(), bare)
    img = str(src / "img0.png")
    _one_line_error(capsys, main(["classify", img, "--labels", "x", "y", "--model", str(bare)]),
                    "does not say its architecture")
    assert main(["classify", img, "--labels", "x", "y", "--model", str(bare), "--arch", "tiny-arch"]) == 0
    idx = str(tmp / "idx")
    assert main(["index", "build", str(src), "--out", idx, "--model", str(bare), "--arch", "tiny-arch",
                 "--no-progress"]) == 0
    assert json.loads((Path(idx) / "header.json").read_text())["model"]["config"] == "tiny-arch"
    capsys.readouterr()
    assert main(["search", idx, "circle", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) >= 1
    # The same weights opened as another architecture are another model for the index.
    import dataclasses

    from vqclip.encoder import open_encoder
    from vqclip.errors import IndexMismatchError
    from vqclip.index.reader import Index

    other = open_encoder(bare, config=dataclasses.replace(tiny.CLIP, activation="gelu"))
    with pytest.raises(IndexMismatchError, match="as architecture tiny-arch.*--arch tiny-arch"):
        Index.open(idx, encoder=other)
