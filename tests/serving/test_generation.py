"""Generation jobs over HTTP on the in-process app: queued, stepped together, streamed,
cancelled, refused when the queue is full or the request is bad, and yielding to encodes."""
from __future__ import annotations

import io
import json
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'server' extra (fastapi)")
pytest.importorskip("httpx", reason="the server tests need httpx (FastAPI's TestClient)")

from PIL import Image  # noqa: E402

FAST = {"steps": 3, "cutn": 2}


def _wait(c, job_id: str, want=("done",), timeout: float = 120.0) -> dict:
    t = time.monotonic() + timeout
    while True:
        body = c.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in want:
            return body
        assert time.monotonic() < t, body
        time.sleep(0.05)


def test_a_job_runs_to_a_result_that_carries_its_settings(make_client):
    c = make_client(generation_jobs=2)
    r = c.post("/v1/generate", json={"prompt": "a red star", "seed": 3, **FAST})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and job["steps"] == 3
    done = _wait(c, job["id"])
    assert done["step"] == 3 and done["result"] == f"/v1/jobs/{job['id']}/result" and done["loss"] > 0
    png = c.get(done["result"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as im:
        record = json.loads(im.text["vqclip"])
        assert im.size == (64, 64)
    assert record["seed"] == 3 and record["settings"]["steps"] == 3 and record["prompts"].split("|")[0] == "a red star"
    assert "vqclip_generation_jobs" in c.get("/metrics").text


def test_events_stream_progress_then_done(make_client):
    c = make_client(generation_jobs=1)
    job = c.post("/v1/generate", json={"prompt": "a blue circle", "seed": 1, **FAST}).json()
    events = []
    with c.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "done"
    steps = [d["step"] for k, d in events if k == "progress"]
    assert steps == sorted(steps) and events[-1][1]["step"] == 3
    assert c.get(f"/v1/jobs/{job['id']}/preview").headers["content-type"] == "image/png"


def test_concurrent_jobs_step_together_and_a_cancelled_one_keeps_its_latest_image(make_client):
    c = make_client(generation_jobs=4)
    long = c.post("/v1/generate", json={"prompt": "a green square", "seed": 2, "steps": 1000, "cutn": 2}).json()
    short = c.post("/v1/generate", json={"prompt": "a yellow cross", "seed": 4, **FAST}).json()
    assert _wait(c, short["id"])["status"] == "done"
    running = c.get(f"/v1/jobs/{long['id']}").json()
    assert running["status"] == "running" and 0 < running["step"] < 1000  # stepped beside the short one
    gone = c.delete(f"/v1/jobs/{long['id']}").json()
    assert gone["status"] == "cancelled" and gone["result"] is not None
    assert c.get(gone["result"]).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(make_client):
    c = make_client(generation_jobs=1, generation_queue=1)
    first = c.post("/v1/generate", json={"prompt": "a red star", "steps": 1000, "cutn": 2}).json()
    _wait(c, first["id"], want=("running",))
    second = c.post("/v1/generate", json={"prompt": "a red star", **FAST})
    assert second.status_code == 202 and second.json()["queue_position"] == 0
    third = c.post("/v1/generate", json={"prompt": "a red star", **FAST})
    assert third.status_code == 503 and "Retry-After" in third.headers and "waiting" in third.json()["error"]["message"]
    c.delete(f"/v1/jobs/{second.json()['id']}")
    c.delete(f"/v1/jobs/{first['id']}")


@pytest.mark.parametrize("body,status,match", [
    ({"prompt": ""}, 400, "no prompts"),
    ({"prompt": "a red star:heavy"}, 400, "weight 'heavy' is not a number"),
    ({"prompt": "x", "steps": 0}, 400, "steps must be"),
    ({"prompt": "x", "steps": 5000}, 400, "more than the limit of 1000"),
    ({"prompt": "x", "size": [63, 64]}, 400, "not a multiple of 4"),
    ({"prompt": "x", "size": [1024, 1024]}, 400, "larger than the limit"),
    ({"prompt": "x", "palette": ["#12"], "palette_weight": 1}, 400, "does not parse"),
    ({"prompt": "x", "colour": "red"}, 422, "colour"),
    ({"prompt": "x" * 3000}, 400, "characters"),
])
def test_bad_requests_are_4xx_with_a_message(make_client, body, status, match):
    c = make_client(generation_jobs=1)
    r = c.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert match in r.json()["error"]["message"]


def test_unknown_and_unfinished_jobs(make_client):
    c = make_client(generation_jobs=1)
    assert c.get("/v1/jobs/nope").status_code == 404
    assert c.delete("/v1/jobs/nope").status_code == 404
    job = c.post("/v1/generate", json={"prompt": "a red star", "steps": 1000, "cutn": 2}).json()
    r = c.get(f"/v1/jobs/{job['id']}/result")
    assert r.status_code == 409 and "comes when it finishes" in r.json()["error"]["message"]
    c.delete(f"/v1/jobs/{job['id']}")


def test_generation_yields_to_encode_requests(make_client):
    # A long job keeps the worker busy; interactive requests still get answered, because the
    # worker waits for the interactive queues to empty before each step.
    c = make_client(generation_jobs=1)
    job = c.post("/v1/generate", json={"prompt": "a red star", "steps": 1000, "cutn": 8}).json()
    _wait(c, job["id"], want=("running",))
    answers = []

    def ask():
        answers.append(c.post("/v1/embed/text", json={"texts": ["a red circle"]}).status_code)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [200] * 8
    assert c.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
    c.delete(f"/v1/jobs/{job['id']}")


def test_shutdown_interrupts_running_jobs_and_keeps_their_images(make_client, tmp_path):
    c = make_client(generation_jobs=1, generation_out=str(tmp_path))
    job = c.post("/v1/generate", json={"prompt": "a red star", "seed": 5, "steps": 1000, "cutn": 2}).json()
    _wait(c, job["id"], want=("running",))
    service = c.app.state.vqclip.extras["generate"]
    service.stop()  # what the app's lifespan does on SIGTERM, before the batchers close
    rec = service.records[job["id"]]
    assert rec.status == "interrupted" and rec.result is not None
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and json.loads(Image.open(pngs[0]).text["vqclip"])["status"] == "interrupted"


def test_a_bad_generation_model_stops_the_app_before_it_listens(make_client):
    from vqclip.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a known VQGAN model"):
        make_client(generation_jobs=1, generation_vqgan="/nonexistent/last.ckpt")


def test_with_generation_off_the_routes_are_absent(make_client):
    c = make_client(generation_jobs=0)
    assert c.post("/v1/generate", json={"prompt": "a red star"}).status_code == 404
    assert "generate" not in c.get("/v1/info").json()["features"]


def test_a_load_balancers_request_id_becomes_the_job_id(make_client):
    # nginx hashes the POST on $request_id and later requests on the id in the path: one key
    rid = "0123456789abcdef0123456789abcdef"
    c = make_client(generation_jobs=2)  # by default a client cannot choose its job's id
    assert c.post("/v1/generate", json={"prompt": "a red star", **FAST}, headers={"X-Request-Id": rid}).json()["id"] != rid
    c = make_client(generation_jobs=2, trust_request_id=True)
    first = c.post("/v1/generate", json={"prompt": "a red star", **FAST}, headers={"X-Request-Id": rid}).json()
    assert first["id"] == rid
    again = c.post("/v1/generate", json={"prompt": "a red star", **FAST}, headers={"X-Request-Id": rid}).json()
    odd = c.post("/v1/generate", json={"prompt": "a red star", **FAST}, headers={"X-Request-Id": "../../etc"}).json()
    for job in (again, odd):  # taken or malformed: a fresh id instead
        assert job["id"] != rid and len(job["id"]) == 16 and int(job["id"], 16) >= 0
    for job in (first, again, odd):
        _wait(c, job["id"])


def test_jobs_run_on_the_exported_step_graph_without_autograd(make_client, bundled_step_graph, monkeypatch):
    from vqclip.jobs.generate import Generator

    def autograd(*args, **kwargs):
        raise AssertionError("the torch autograd step ran")

    monkeypatch.setattr(Generator, "_gradients", autograd)
    c = make_client(generation_jobs=2, generation_clip="shapes-clip", generation_backend="onnxruntime",
                    generation_step_graph=str(bundled_step_graph))
    r = c.post("/v1/generate", json={"prompt": "a red star", "seed": 3, **FAST})
    assert r.status_code == 202, r.text
    done = _wait(c, r.json()["id"])
    assert done["step"] == 3 and done["loss"] is not None
    bad = c.post("/v1/generate", json={"prompt": "a red star", "steps": 3, "cutn": 4})
    assert bad.status_code == 400 and "--cutn 4" in bad.json()["error"]["message"]
    many = "|".join(f"a red star {i}" for i in range(5))  # 10 prompts with the background split; the graph has 8
    bad = c.post("/v1/generate", json={"prompt": many, **FAST})
    assert bad.status_code == 400 and "--prompts 10" in bad.json()["error"]["message"]


def test_an_unknown_generation_backend_stops_the_server_at_setup():
    from vqclip.serving.config import ServerConfig, ServerSetupError

    with pytest.raises(ServerSetupError, match="generation_backend must be torch or onnxruntime"):
        ServerConfig(generation_backend="jax")
    with pytest.raises(ServerSetupError, match="generation_step_graph runs on generation_backend onnxruntime"):
        ServerConfig(generation_step_graph="/x")
