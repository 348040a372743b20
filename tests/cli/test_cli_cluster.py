"""The cluster path from the command line, on the bundled model: `index build --ray` (a local
Ray the command starts and stops), `index import`, `index export-milvus` (Milvus Lite), and
`search milvus://...` answering as `search INDEX`; each bad input one line and exit 2."""
from __future__ import annotations

import json

import pytest

from vqclip.cli import main

pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'vqclip[ray]')")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'vqclip[milvus]')")


def _one_line_error(capsys, rc, match):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and match in err[-1], (rc, err)


@pytest.mark.slow
def test_ray_shards_import_export_and_search_through_milvus(env, capsys):
    tmp, _, src = env
    shards, idx, db = str(tmp / "shards"), str(tmp / "idx"), str(tmp / "v.db")
    rc = main(["index", "build", str(src), "--out", shards, "--ray", "--backend", "torch", "--shard-size", "2",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "3 shards: 3 written, 0 already done; 5 images encoded" in out, out
    assert main(["index", "import", shards, "--out", idx]) == 0
    assert "5 entries" in capsys.readouterr().out
    assert main(["index", "export-milvus", idx, "--uri", db, "--collection", "shapes"]) == 0
    out = capsys.readouterr().out
    assert f"5 rows in milvus://{db}/shapes (FLAT index)" in out
    answers = []
    for where in (idx, f"milvus://{db}/shapes"):
        assert main(["search", where, "a red circle", "-k", "3", "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert [h["path"] for h in answers[0]] == [h["path"] for h in answers[1]]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(*answers))
    # Exporting again without --force: refused, the collection still answers.
    _one_line_error(capsys, main(["index", "export-milvus", idx, "--uri", db, "--collection", "shapes"]),
                    "collection 'shapes' exists")
    assert main(["search", f"milvus://{db}/shapes", "a red circle", "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == answers[1]
    _one_line_error(capsys, main(["index", "import", shards, "--out", idx]), "already holds an index")


def test_cluster_commands_refuse_bad_input_in_one_line(env, capsys):
    tmp, _, src = env
    _one_line_error(capsys, main(["index", "build", str(src), "--out", str(tmp / "s"), "--ray", "--force"]),
                    "--force does not apply to --ray")
    _one_line_error(capsys, main(["index", "build", str(src), "--out", str(tmp / "s"), "--ray", "127.0.0.1:1"]),
                    "cannot reach the Ray cluster at '127.0.0.1:1'")
    (tmp / "x.parquet").write_text("hello")
    _one_line_error(capsys, main(["index", "import", str(tmp / "x.parquet"), "--out", str(tmp / "i")]),
                    "is not a readable Parquet file")
    _one_line_error(capsys, main(["search", "milvus://127.0.0.1:1/pics", "a red circle"]),
                    "cannot reach Milvus at 'http://127.0.0.1:1'")
    _one_line_error(capsys, main(["search", "milvus://127.0.0.1:1", "a red circle"]), "does not end in /COLLECTION")
    _one_line_error(capsys, main(["index", "export-milvus", str(tmp / "none"), "--uri", str(tmp / "v.db"),
                                  "--collection", "c"]), "does not exist")
    with pytest.raises(SystemExit) as e:
        main(["index", "export-milvus", "x", "--uri", "v.db", "--collection", "c", "--param", "nokey"])
    assert e.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err
