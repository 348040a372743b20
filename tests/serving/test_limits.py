"""Every refusal of the in-process app: each limit, bad bodies and images, keys, the rate
limit, a full queue, a passed deadline and a client that disconnects. Each must be a 4xx
(or 503 with Retry-After) JSON error with a message, never a 500 or a hang."""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import time

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'server' extra (fastapi)")
pytest.importorskip("httpx", reason="the server tests need httpx (FastAPI's TestClient)")

from vqclip.serving.config import ServerConfig, ServerSetupError, load_config  # noqa: E402
from vqclip.serving.limits import ApiKeys, RateLimiter  # noqa: E402
from vqclip.serving.responses import ApiError  # noqa: E402

KEY = "k" * 24


def refused(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    for w in words:
        assert w in err["message"], err["message"]
    return err


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_body_size_limit_declared_and_streamed(make_client):
    c = make_client(max_body_bytes=1000)
    refused(c.post("/v1/embed/text", json={"texts": ["x" * 2000]}), 413, "1,000 bytes")
    chunks = iter([b'{"texts": ["' + b"y" * 600, b"y" * 600 + b'"]}'])  # no Content-Length: chunked
    refused(c.post("/v1/embed/text", content=chunks, headers={"content-type": "application/json"}), 413)
    assert c.post("/v1/embed/text", json={"texts": ["small"]}).status_code == 200


def test_item_label_prompt_k_and_text_limits(make_client, tiny_index, images, tmp_path):
    c = make_client(indexes={"pics": tiny_index.path}, max_items=2, max_labels=2, max_prompts=10, max_k=5,
                    max_text_chars=20)
    png = b64(images.png(tmp_path / "a.png", seed=1).read_bytes())
    refused(c.post("/v1/embed/text", json={"texts": ["a", "b", "c"]}), 400, "3 texts", "limit of 2")
    refused(c.post("/v1/embed/text", json={"texts": []}), 400, "no texts")
    refused(c.post("/v1/embed/image", json={"images": [png] * 3}), 400, "3 images")
    files = [("images", ("a.png", base64.b64decode(png), "image/png"))] * 3
    refused(c.post("/v1/embed/image", files=files), 400)
    refused(c.post("/v1/classify", json={"images": [png], "labels": ["a", "b", "c"]}), 400, "3 labels")
    refused(c.post("/v1/classify", json={"images": [png], "labels": ["a", "b"], "templates": "short"}), 400,
            "14 prompts")
    refused(c.post("/v1/classify", json={"images": [png], "labels": ["a", "a"]}), 400, "twice")
    not_an_image = base64.b64encode(b"not an image").decode()  # the labels are judged before any decoding
    refused(c.post("/v1/classify", json={"images": [not_an_image], "labels": ["a", "a"]}), 400, "twice")
    refused(c.post("/v1/classify", json={"images": [png], "labels": ["a"], "top_k": 0}), 400, "top_k")
    refused(c.post("/v1/classify", json={"images": [png], "labels": ["a"], "templates": ["no slot"]}), 400, "{}")
    refused(c.post("/v1/search", json={"text": "a", "k": 6}), 400, "k=6", "limit of 5")
    refused(c.post("/v1/search", json={"text": "a", "k": 0}), 400)
    refused(c.post("/v1/search", json={"text": "x" * 21}), 400, "21 characters")
    refused(c.post("/v1/embed/text", json={"texts": ["x" * 21]}), 400, "limit of 20")
    refused(c.post("/v1/search", json={"text": "   "}), 400, "empty")
    refused(c.post("/v1/search", json={"text": "a", "image": png}), 400, "exactly one")
    refused(c.post("/v1/search", json={}), 400, "exactly one")
    refused(c.post("/v1/search", json={"index": "nope", "text": "a"}), 404, "pics")


def test_text_longer_than_the_context_is_refused_unless_truncated(make_client):
    c = make_client()
    long = " ".join(["word"] * 100)
    refused(c.post("/v1/embed/text", json={"texts": ["ok", long]}), 400, "text 1", "truncate")
    assert c.post("/v1/embed/text", json={"texts": [long], "truncate": True}).status_code == 200


def test_image_pixel_limit_refuses_bombs_before_decoding(make_client, images, tmp_path):
    c = make_client(max_image_pixels=1000)
    bomb = images.huge(tmp_path / "bomb.png")  # 40000 x 40000 declared, a few bytes on disk
    refused(c.post("/v1/embed/image", json={"images": [b64(bomb.read_bytes())]}), 400, "images[0]", "pixels")
    small = images.png(tmp_path / "s.png", seed=0, size=40)  # 40 x 40 = 1600 > 1000
    refused(c.post("/v1/embed/image", files={"images": ("s.png", small.read_bytes(), "image/png")}), 400, "1,000")


def test_malformed_bodies_and_wrong_content_types(make_client):
    c = make_client()
    refused(c.post("/v1/embed/text", content=b'{"texts": [', headers={"content-type": "application/json"}), 400,
            "not valid JSON")
    refused(c.post("/v1/embed/text", content=b"[1, 2]", headers={"content-type": "application/json"}), 422)
    refused(c.post("/v1/embed/text", json={"texts": "abc"}), 422, "texts")
    refused(c.post("/v1/embed/text", json={"texts": ["a"], "colour": 1}), 422, "colour")
    refused(c.post("/v1/embed/text", data={"texts": "a"}), 415, "application/json")
    refused(c.post("/v1/embed/image", content=b"abc", headers={"content-type": "text/plain"}), 415)
    refused(c.post("/v1/embed/image", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}), 400)
    refused(c.post("/v1/embed/text", content=b"{}", headers={"content-type": "application/json",
                                                               "content-length": "abc"}), 400, "Content-Length")
    refused(c.post("/v1/embed/text", json={"texts": ["a"], "format": "npy"}), 422, "format")
    refused(c.get("/v1/embed/text"), 405)
    refused(c.get("/no/such/page"), 404)


def test_corrupt_and_non_image_inputs(make_client, images, tmp_path):
    c = make_client()
    truncated = images.truncated(tmp_path / "t.png").read_bytes()
    refused(c.post("/v1/embed/image", json={"images": [b64(truncated)]}), 400, "images[0]")
    refused(c.post("/v1/embed/image", files={"images": ("x.png", b"\x89PNG not really", "image/png")}), 400)
    refused(c.post("/v1/embed/image", json={"images": [b64(b"")]}), 400, "empty")
    refused(c.post("/v1/embed/image", json={"images": ["not base64 at all!"]}), 400, "base64")
    refused(c.post("/v1/classify", json={"images": ["https://example.com/cat.jpg"], "labels": ["cat"]}), 400,
            "never fetches URLs")
    refused(c.post("/v1/embed/image", files={"wrong": ("x.png", truncated, "image/png")}), 400, "'wrong'")


def _send_in_thread(pool, c, texts, headers=None):
    return pool.submit(c.post, "/v1/embed/text", json={"texts": texts}, headers=headers or {})


def _wait_until(cond, timeout=10.0):
    t = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < t, "condition not reached"
        time.sleep(0.005)


def test_a_full_queue_answers_503_with_retry_after(make_client):
    c = make_client(max_queue=2, max_batch=1, max_wait_ms=0)
    gate = c.backend.hold()
    queue = c.app.state.vqclip.runtime.main.text
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        busy = _send_in_thread(pool, c, ["busy"])
        assert gate.entered.wait(10)
        waiting = _send_in_thread(pool, c, ["w1", "w2"])
        _wait_until(lambda: queue.queued == 2)
        err = refused(c.post("/v1/embed/text", json={"texts": ["one more"]}), 503, "queue is full")
        gate.open()
        assert busy.result().status_code == 200 and waiting.result().status_code == 200
    assert err["type"] == "queue_full"
    r = c.post("/v1/embed/text", json={"texts": ["after"]})
    assert r.status_code == 200
    metrics = c.get("/metrics").text
    assert 'vqclip_dropped_requests_total{queue="text:tiny-0@torch-fp32",reason="queue_full"} 1.0' in metrics


def test_a_passed_deadline_answers_503_and_the_work_is_never_done(make_client):
    c = make_client(max_batch=1, max_wait_ms=0)
    gate = c.backend.hold()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = _send_in_thread(pool, c, ["busy"])
        assert gate.entered.wait(10)
        c.backend.calls.clear()
        r = c.post("/v1/embed/text", json={"texts": ["late", "late", "late"]},
                   headers={"X-Request-Timeout-Ms": "100"})
        refused(r, 503, "deadline")
        assert int(r.headers["retry-after"]) >= 1
        gate.open()
        assert busy.result().status_code == 200
    time.sleep(0.05)
    assert c.backend.calls == [("text", 1)]  # only "busy": the late texts were dropped, not computed
    refused(c.post("/v1/embed/text", json={"texts": ["a"]}, headers={"X-Request-Timeout-Ms": "soon"}), 400)


def test_a_client_that_disconnects_mid_request_is_dropped_before_compute(make_client):
    c = make_client(max_batch=1, max_wait_ms=0)
    app = c.app
    gate = c.backend.hold()
    body = b'{"texts": ["gone", "gone", "gone"]}'
    sent: list[dict] = []

    async def disconnecting_call() -> None:
        hang_up = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/embed/text", "raw_path": b"/v1/embed/text", "root_path": "",
                 "query_string": b"", "headers": [(b"content-type", b"application/json"),
                                                  (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
        queue = app.state.vqclip.runtime.main.text
        task = asyncio.ensure_future(app(scope, receive, send))
        while queue.queued < 3:  # queued behind the busy worker
            await asyncio.sleep(0.005)
        hang_up.set()
        await asyncio.wait_for(task, 10)
        assert queue.queued == 0  # taken out of the queue, not left for the worker

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = _send_in_thread(pool, c, ["busy"])
        assert gate.entered.wait(10)
        c.backend.calls.clear()
        asyncio.run(disconnecting_call())
        gate.open()
        assert busy.result().status_code == 200
    assert sent[0]["status"] == 499
    assert c.backend.calls == [("text", 1)]  # the disconnected request's 3 texts were never encoded
    metrics = c.get("/metrics").text
    assert 'vqclip_dropped_requests_total{queue="text:tiny-0@torch-fp32",reason="disconnected"} 1.0' in metrics


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"# the team\nalice:{KEY}\n{'b' * 32}\n")
    path.chmod(0o600)
    return path


def test_api_keys_wrong_or_missing_are_401_and_probes_stay_open(make_client, key_file):
    c = make_client(api_key_file=str(key_file))
    for headers in ({}, {"Authorization": "Bearer " + "x" * 24}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEY[:-1]}"}):
        r = c.post("/v1/embed/text", json={"texts": ["a"]}, headers=headers)
        refused(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
    refused(c.get("/v1/info"), 401, "API key")
    for key in (KEY, "b" * 32):
        assert c.post("/v1/embed/text", json={"texts": ["a"]},
                      headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert c.get("/v1/info", headers={"Authorization": f"Bearer {KEY}"}).json()["auth"] is True
    for path in ("/healthz", "/readyz", "/metrics", "/"):
        assert c.get(path).status_code == 200


def test_key_files_that_cannot_be_used_are_refused_at_start(tmp_path):
    bad = tmp_path / "k.txt"
    for text, words in (("short\n", "fewer than 16"), ("# nothing\n\n", "holds no keys"),
                        (f"a:{KEY}\na:{KEY}x\n", "appears twice")):
        bad.write_text(text)
        with pytest.raises(ServerSetupError, match=words):
            ApiKeys.load(bad)
    with pytest.raises(ServerSetupError, match="cannot read"):
        ApiKeys.load(tmp_path / "missing.txt")


def test_rate_limit_per_key(make_client, key_file):
    c = make_client(api_key_file=str(key_file), rate_limit=0.5, rate_burst=2)
    alice = {"Authorization": f"Bearer {KEY}"}
    assert [c.post("/v1/embed/text", json={"texts": ["a"]}, headers=alice).status_code for _ in range(2)] == [200, 200]
    r = c.post("/v1/embed/text", json={"texts": ["a"]}, headers=alice)
    refused(r, 429, "rate limit")
    assert int(r.headers["retry-after"]) >= 1
    assert c.post("/v1/embed/text", json={"texts": ["a"]},
                  headers={"Authorization": f"Bearer {'b' * 32}"}).status_code == 200  # its own bucket


def test_rate_limiter_refills_at_its_rate():
    rl = RateLimiter(rate=2.0, burst=1)
    rl.take("a", now=0.0)
    with pytest.raises(ApiError) as e:
        rl.take("a", now=0.1)
    assert e.value.status == 429
    rl.take("a", now=0.6)  # 0.5 s at 2/s refilled one token


def test_cors_is_off_unless_configured(make_client):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    off = make_client()
    assert "access-control-allow-origin" not in off.options("/v1/embed/text", headers=preflight).headers
    assert "access-control-allow-origin" not in off.post("/v1/embed/text", json={"texts": ["a"]},
                                                         headers={"Origin": "https://app.example"}).headers
    on = make_client(cors_origins=["https://app.example"])
    r = on.options("/v1/embed/text", headers=preflight)
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in on.options(
        "/v1/embed/text", headers={**preflight, "Origin": "https://evil.example"}).headers


def test_config_refuses_unknown_keys_and_bad_values(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text("max_batch: 8\nindexes: {photos: /data/p.vqindex}\nport: 9000\n")
    cfg = load_config(f, {"port": 9100, "host": None})
    assert (cfg.max_batch, cfg.port, cfg.host, cfg.indexes) == (8, 9100, "127.0.0.1", {"photos": "/data/p.vqindex"})
    f.write_text("max_bach: 8\n")
    with pytest.raises(ServerSetupError, match="unknown setting 'max_bach'.*max_batch"):
        load_config(f)
    f.write_text("- a list\n")
    with pytest.raises(ServerSetupError, match="mapping"):
        load_config(f)
    for bad in ({"max_batch": 0}, {"max_wait_ms": -1}, {"timeout_s": 0}, {"port": 70000}, {"indexes": {"a/b": "x"}},
                {"max_items": "many"}, {"cors_origins": "*"}):
        with pytest.raises(ServerSetupError):
            ServerConfig(**bad)
