"""Each endpoint of the in-process app against the library: the same embeddings, the same
classification numbers as ``vqclip classify``, the same hits as ``vqclip search``."""
from __future__ import annotations

import base64
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'server' extra (fastapi)")
pytest.importorskip("httpx", reason="the server tests need httpx (FastAPI's TestClient)")

from vqclip.index import Index  # noqa: E402
from vqclip.jobs.classify import ZeroShotClassifier  # noqa: E402
from vqclip.preprocess import load_image  # noqa: E402

TOL = 1e-5  # batched and single calls of the torch backend differ by float rounding only


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_embed_text_matches_the_encoder(make_client):
    c = make_client()
    texts = ["a red circle", "a blue square", ""]
    r = c.post("/v1/embed/text", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    want = c.encoder.encode_texts(texts)
    assert body["model"] == "tiny-0" and body["dim"] == want.shape[1]
    np.testing.assert_allclose(np.array(body["embeddings"]), want, atol=TOL)


@pytest.mark.parametrize("fmt", ["float32", "float16"])
def test_embed_text_binary_formats_say_their_dtype_and_shape(make_client, fmt):
    c = make_client()
    want = c.encoder.encode_texts(["a", "b", "c"])
    by_field = c.post("/v1/embed/text", json={"texts": ["a", "b", "c"], "format": fmt})
    by_accept = c.post("/v1/embed/text", json={"texts": ["a", "b", "c"]},
                       headers={"Accept": f"application/x-vqclip-{fmt}"})
    for r in (by_field, by_accept):
        assert r.status_code == 200
        assert r.headers["content-type"] == f"application/x-vqclip-{fmt}; rows=3; dim={want.shape[1]}"
        assert r.headers["x-embedding-shape"] == f"3,{want.shape[1]}"
        got = np.frombuffer(r.content, dtype=np.dtype(fmt).newbyteorder("<")).reshape(3, -1)
        np.testing.assert_allclose(got, want, atol=1e-3 if fmt == "float16" else TOL)


def test_embed_image_json_and_multipart_match_the_encoder(make_client, images, tmp_path):
    c = make_client()
    paths = [images.png(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    want = c.encoder.encode_image(c.encoder.preprocess([load_image(p.read_bytes()) for p in paths]))
    as_json = c.post("/v1/embed/image", json={"images": [b64(p) for p in paths[:2]] +
                                              ["data:image/png;base64," + b64(paths[2])]})
    as_form = c.post("/v1/embed/image", files=[("images", (p.name, p.read_bytes(), "image/png")) for p in paths])
    for r in (as_json, as_form):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["embeddings"]), want, atol=TOL)


def test_concurrent_requests_share_backend_calls(make_client):
    import concurrent.futures

    c = make_client(max_wait_ms=50)
    gate = c.backend.hold()  # the first call blocks, so the other seven queue behind it on any machine
    queue = c.app.state.vqclip.runtime.main.text
    post = lambda i: c.post("/v1/embed/text", json={"texts": [f"text {i}"]})  # noqa: E731
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        try:
            futures = [pool.submit(post, 0)]
            assert gate.entered.wait(10)  # request 0 alone is being computed (held)
            futures += [pool.submit(post, i) for i in range(1, 8)]
            deadline = time.monotonic() + 10
            while queue.queued < 7:
                assert time.monotonic() < deadline, "the other requests never queued"
                time.sleep(0.005)
        finally:
            gate.open()
        rs = [f.result() for f in futures]
    assert all(r.status_code == 200 for r in rs)
    for i, r in enumerate(rs):  # each caller got its own row
        np.testing.assert_allclose(r.json()["embeddings"][0], c.encoder.encode_texts([f"text {i}"])[0], atol=TOL)
    text_calls = [n for kind, n in c.backend.calls if kind == "text" and n > 1]
    assert text_calls and max(text_calls) > 1  # at least one call carried several requests
    metrics = c.get("/metrics").text
    assert 'vqclip_batch_size_count{queue="text:tiny-0@torch-fp32"}' in metrics


def test_classify_gives_the_numbers_of_vqclip_classify(make_client, images, tmp_path):
    c = make_client()
    paths = [images.png(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    labels = ["a red circle", "a blue square", "a green star"]
    clf = ZeroShotClassifier(c.encoder, labels, "short", use_cache=False)
    want = clf.classify_paths([str(p) for p in paths], top_k=2)  # what `vqclip classify` runs
    r = c.post("/v1/classify", json={"images": [b64(p) for p in paths], "labels": labels, "templates": "short",
                                     "top_k": 2})
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    for g, w in zip(got, want):
        assert [x["label"] for x in g] == [p.label for p in w.labels]
        np.testing.assert_allclose([x["prob"] for x in g], [p.prob for p in w.labels], atol=TOL)
    form = c.post("/v1/classify", files=[("images", (p.name, p.read_bytes(), "image/png")) for p in paths],
                  data={"labels": labels, "templates": "short", "top_k": "2"})
    assert form.status_code == 200 and form.json()["results"] == got


def test_search_text_and_image_give_the_hits_of_vqclip_search(make_client, tiny_index, tiny):
    c = make_client(indexes={"pics": tiny_index.path})
    with Index.open(tiny_index.path, encoder=tiny.encoder(0)) as idx:
        want_text = idx.search(text="a red circle", k=5)
        query = tiny_index.root / "3.png"
        want_image = idx.search(image=str(query), k=4)
    r = c.post("/v1/search", json={"index": "pics", "text": " a red circle ", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index"] == "pics" and body["model"] == "tiny-0"
    root = tiny_index.root.resolve()
    assert [h["path"] for h in body["hits"]] == [str(Path(h.path).relative_to(root)) for h in want_text]
    np.testing.assert_allclose([h["score"] for h in body["hits"]], [h.score for h in want_text], atol=TOL)
    for asked in ({"json": {"image": b64(query), "k": 4}},  # the only index: no name needed
                  {"files": {"image": ("q.png", query.read_bytes(), "image/png")}, "data": {"k": "4"}}):
        r = c.post("/v1/search", **asked)
        assert r.status_code == 200, r.text
        assert [h["row"] for h in r.json()["hits"]] == [h.row for h in want_image]
        assert r.json()["hits"][0]["path"] == "3.png"  # the image finds itself first


def test_indexes_thumbnails_and_files(make_client, tiny_index):
    c = make_client(indexes={"pics": tiny_index.path})
    [info] = c.get("/v1/indexes").json()["indexes"]
    assert info == {"name": "pics", "entries": 9, "model": "tiny-0", "storage": "fp32", "dim": 32}
    hit = c.post("/v1/search", json={"text": "x", "k": 9}).json()["hits"]
    one = next(h for h in hit if h["path"] == "2.png")
    thumb = c.get(one["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert load_image(thumb.content).size[0] <= 256
    f = c.get(one["file"])
    assert f.status_code == 200 and f.headers["content-type"] == "image/png"
    assert f.content == (tiny_index.root / "2.png").read_bytes()
    assert c.get("/v1/indexes/pics/rows/999/file").status_code == 404
    assert c.get("/v1/indexes/nope/rows/0/file").json()["error"]["type"] == "not_found"


def test_an_index_served_from_milvus_answers_as_the_folder_does(make_client, tiny_index, tmp_path):
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'vqclip[milvus]')")
    from vqclip.index.milvus import export_milvus

    target = export_milvus(tiny_index.path, str(tmp_path / "v.db"), "pics").target
    c = make_client(indexes={"local": tiny_index.path, "milvus": target})
    infos = {i["name"]: i for i in c.get("/v1/indexes").json()["indexes"]}
    assert infos["milvus"] == {**infos["local"], "name": "milvus"}
    got = {}
    for name in ("local", "milvus"):
        r = c.post("/v1/search", json={"index": name, "text": "a red circle", "k": 5})
        assert r.status_code == 200, r.text
        got[name] = r.json()["hits"]
    assert [h["path"] for h in got["milvus"]] == [h["path"] for h in got["local"]]
    np.testing.assert_allclose([h["score"] for h in got["milvus"]], [h["score"] for h in got["local"]], atol=TOL)
    one = next(h for h in got["milvus"] if h["path"] != "link.png")
    f = c.get(one["file"])  # files by row, looked up in the collection
    assert f.status_code == 200 and f.content == (tiny_index.root / one["path"]).read_bytes()


def test_files_are_served_only_from_inside_the_index_root(make_client, tiny_index, tmp_path):
    import shutil

    copy = tmp_path / "pics.vqindex"
    shutil.copytree(tiny_index.path, copy)
    c = make_client(indexes={"pics": copy})
    hits = c.post("/v1/search", json={"text": "x", "k": 9}).json()["hits"]
    link = next(h for h in hits if h["path"] == "link.png")  # a symlink inside the root to a file outside
    for url in (link["file"], link["thumbnail"]):
        r = c.get(url)
        assert r.status_code == 403 and "outside the index's root" in r.json()["error"]["message"]
    # An entry rewritten to climb out of the root, after the server opened the index.
    row = next(h["row"] for h in hits if h["path"] == "0.png")
    with sqlite3.connect(copy / "entries.sqlite") as db:
        db.execute("UPDATE entries SET path = '../outside.png' WHERE path = '0.png'")
    r = c.get(f"/v1/indexes/pics/rows/{row}/file")  # refused by the index (409, damaged) before the file route
    assert r.status_code in (403, 409) and "outside" in r.json()["error"]["message"], r.text


def test_health_ready_info_page_and_metrics(make_client):
    c = make_client()
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/readyz").json() == {"status": "ready"}
    info = c.get("/v1/info").json()
    assert info["model"]["name"] == "tiny-0" and info["features"] == ["embed", "classify", "search"]
    assert info["auth"] is False and info["limits"]["max_items"] == 64
    page = c.get("/")
    assert page.status_code == 200 and 'data-panel="generate"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    js = c.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    c.post("/v1/embed/text", json={"texts": ["a"]})
    c.post("/v1/embed/text", json={})
    m = c.get("/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    for line in ('vqclip_http_requests_total{endpoint="/v1/embed/text",method="POST",status="200"} 1.0',
                 'vqclip_http_errors_total{endpoint="/v1/embed/text",status="422"} 1.0',
                 'vqclip_http_request_duration_seconds_count{endpoint="/v1/embed/text"} 2.0',
                 "vqclip_queue_depth{", "vqclip_ready 1.0"):
        assert line in m.text
    spec = c.get("/openapi.json").json()
    assert {"/v1/embed/text", "/v1/embed/image", "/v1/classify", "/v1/search", "/v1/indexes"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]


def test_read_inside_refuses_what_is_not_a_small_regular_file_inside(tmp_path):
    import os

    from vqclip.serving.files import read_inside
    from vqclip.serving.responses import ApiError

    (tmp_path / "ok.png").write_bytes(b"x" * 10)
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "big.png").write_bytes(b"x" * 11)
    assert read_inside(tmp_path, "ok.png", 10)[1] == b"x" * 10
    for rel, status in (("pipe.png", 403), ("big.png", 413), ("gone.png", 404), ("../ok.png", 404)):
        with pytest.raises(ApiError) as err:
            read_inside(tmp_path, rel, 10)  # a FIFO returns at once: opened non-blocking
        assert err.value.status == status, (rel, err.value)
