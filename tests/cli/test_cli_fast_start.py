"""The one-shot commands on an existing export start without torch, and many queries pay the
start-up once (``vqclip search --queries``). Start-up speed itself is a benchmark
(benchmarks/bench_cli_start.py), not a test; here: what is imported and what is answered."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from vqclip.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory, bundled_clip):
    """An index of 6 shapes scenes by the bundled model, and its export in a cache of its own."""
    from vqclip.zoo import shapes

    base = tmp_path_factory.mktemp("fast")
    photos = base / "photos"
    photos.mkdir()
    scenes = shapes.sample_scenes("test", 0, 6)
    for i, px in enumerate(shapes.render_batch(scenes, size=64)):
        Image.fromarray(px).save(photos / f"{i}.png")
    return base, photos


@pytest.fixture
def cache(world, monkeypatch):
    base, _ = world
    monkeypatch.setenv("VQCLIP_CACHE", str(base / "cache"))
    return base / "cache"


def _index(world, cache) -> str:
    base, photos = world
    idx = base / "pics.vqindex"
    if not idx.exists():
        assert main(["index", "build", str(photos), "--out", str(idx), "--no-progress", "--backend", "torch"]) == 0
    return str(idx)


def _exported(world, cache, capsys) -> str:
    idx = _index(world, cache)
    # Exports fp32 and int8 once; fp32 here, so that a CPU failing the int8 self-test still passes.
    assert main(["search", idx, "a red circle", "--backend", "onnxruntime", "--precision", "fp32"]) == 0
    capsys.readouterr()
    return idx


def _fresh_process(code: str, env_cache) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter (this one has torch loaded), with the same cache."""
    import os

    env = {**os.environ, "VQCLIP_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_search_classify_and_update_on_the_export_never_import_torch(world, cache, capsys):
    idx = _exported(world, cache, capsys)
    img = str(world[1] / "0.png")
    done = _fresh_process(f"""
        import shutil
        import sys
        from vqclip.cli import main
        assert main(["-v", "search", {idx!r}, "a red circle"]) == 0
        assert main(["classify", {img!r}, "--labels", "a red circle", "a blue star"]) == 0
        assert main(["index", "update", {idx!r}, "--no-progress"]) == 0
        assert main(["index", "info", {idx!r}]) == 0
        shutil.copy({img!r}, {str(world[1] / "new.png")!r})  # a new image: update encodes it, still no torch
        assert main(["index", "update", {idx!r}, "--no-progress"]) == 0
        assert main(["models"]) == 0
        print("TORCH", "torch" in sys.modules)
    """, cache)
    assert done.returncode == 0, done.stderr
    assert "TORCH False" in done.stdout
    # int8 where this CPU passes its self-test, else fp32: either way the cached export, no torch.
    assert re.search(r"on onnxruntime (int8|fp32) from the cached export .*torch not loaded", done.stderr)


def test_help_and_models_never_import_torch(cache):
    done = _fresh_process("""
        import sys
        from vqclip.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        main(["models"])
        print("TORCH", "torch" in sys.modules)
    """, cache)
    assert done.returncode == 0, done.stderr
    assert "TORCH False" in done.stdout and "ViT-B-32-gelu" in done.stdout


def test_without_a_cached_export_the_default_is_torch_and_says_so(world, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "empty-cache"))
    idx = _index(world, None)
    caplog.set_level("INFO")
    assert main(["search", idx, "a red circle"]) == 0
    assert "no cached export yet: running on torch fp32" in caplog.text
    assert not (tmp_path / "empty-cache" / "exports").exists()  # a one-shot query never exports on its own


def test_queries_file_answers_each_line_as_one_json_line(world, cache, capsys, tmp_path):
    idx = _exported(world, cache, capsys)
    queries = tmp_path / "q.txt"
    queries.write_text("a red circle\n\n{\"text\": \"a blue star\", \"k\": 2, \"id\": \"q2\"}\n{not json\n"
                       f"{{\"image\": \"{world[1] / '1.png'}\"}}\n{{\"image\": \"{tmp_path / 'missing.png'}\"}}\n"
                       "{\"text\": \"x\", \"k\": 0}\n")
    rc = main(["search", idx, "--queries", str(queries), "--top-k", "3"])
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert rc == 1  # some queries failed; every one was still answered, in order
    assert [q["id"] for q in lines] == [1, "q2", 4, 5, 6, 7]
    assert len(lines[0]["hits"]) == 3 and len(lines[1]["hits"]) == 2 and len(lines[3]["hits"]) == 3
    assert lines[3]["hits"][0]["path"].endswith("1.png")  # an indexed image finds itself first
    assert "not JSON" in lines[2]["error"] and "missing.png" in lines[4]["error"] and "k" in lines[5]["error"]
    # The same text alone gives the same hits as in a batch, in fp32 up to summation order. (int8
    # quantises activations with one scale per batch, so there a query's batch-mates move its
    # scores: benchmarks/check_clip_parity.py prints by how much.)
    fp32 = ["--backend", "onnxruntime", "--precision", "fp32"]
    main(["search", idx, "--queries", str(queries), "--top-k", "3", *fp32])
    batched = json.loads(capsys.readouterr().out.splitlines()[0])["hits"]
    assert main(["search", idx, "a red circle", "--json", "-k", "3", *fp32]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert [h["path"] for h in alone] == [h["path"] for h in batched]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(alone, batched)) < 1e-5


def test_queries_on_stdin_are_answered_as_they_come(world, cache, capsys):
    idx = _exported(world, cache, capsys)
    proc = subprocess.Popen([sys.executable, "-m", "vqclip.cli", "search", idx, "--queries", "-", "-k", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "VQCLIP_CACHE": str(cache)})
    try:
        proc.stdin.write("a red circle\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())  # answered before stdin is closed
        assert first["id"] == 1 and len(first["hits"]) == 1
        proc.stdin.write('{"text": "a blue star"}\n')
        proc.stdin.close()
        assert json.loads(proc.stdout.readline())["id"] == 2
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def test_queries_flag_errors(world, cache, capsys, tmp_path):
    idx = _index(world, cache)
    for argv, match in ((["search", idx, "x", "--queries", "-"], "give one of"),
                        (["search", idx, "--queries", str(tmp_path / "none.txt")], "cannot read queries file")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["word"] * 100) + '\n{"image": "~/no-such.png"}\n')
    assert main(["search", idx, "--queries", str(long)]) == 1
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert "--truncate" in lines[0]["error"] and "truncate=True" not in lines[0]["error"]  # the CLI's words
    assert "~" not in lines[1]["error"] and "no-such.png" in lines[1]["error"]  # ~ expanded
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    assert main(["search", idx, "--queries", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
