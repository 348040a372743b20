"""A real ``vqclip serve`` process on loopback: a bounded load run with no errors and no hung
connections, graceful shutdown on SIGTERM, and the command's one-line errors."""
from __future__ import annotations

import asyncio
import base64
import signal
import threading
import time

import httpx
import pytest

from vqclip.cli.main import main

from .conftest import start_server, stop_server

CLIENTS, REQUESTS = 32, 50


async def _client(url: str, n: int, i: int, image: str, timeout: float) -> tuple[list[int], int, list[float]]:
    """One client's n sequential requests on one connection: statuses, hung count, latencies."""
    statuses, hung, latencies = [], 0, []
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as c:
        for j in range(n):
            kind = (i + j) % 5
            if kind in (0, 1):
                req = c.post("/v1/embed/text", json={"texts": [f"a red circle {i} {j}"]})
            elif kind == 2:
                req = c.post("/v1/search", json={"text": "a blue square", "k": 5})
            elif kind == 3:
                req = c.post("/v1/embed/image", json={"images": [image]})
            else:
                req = c.post("/v1/classify", json={"images": [image], "labels": ["a red circle", "a blue square"]})
            t = time.perf_counter()
            try:
                r = await req
                statuses.append(r.status_code)
            except httpx.TimeoutException:
                hung += 1
            latencies.append(time.perf_counter() - t)
    return statuses, hung, latencies


def test_load_run_has_no_errors_and_no_hung_connections(live_server, shapes_images):
    image = base64.b64encode((shapes_images / "00.png").read_bytes()).decode()

    async def run():
        return await asyncio.gather(*(_client(live_server.url, REQUESTS, i, image, 60.0) for i in range(CLIENTS)))

    t = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - t
    statuses = [s for r in results for s in r[0]]
    hung = sum(r[1] for r in results)
    assert hung == 0
    assert len(statuses) == CLIENTS * REQUESTS
    bad = [s for s in statuses if s != 200]
    assert not bad, f"{len(bad)} errors: {sorted(set(bad))}"
    print(f"{len(statuses)} requests in {wall:.1f} s ({len(statuses) / wall:.0f}/s)")
    # Afterwards the server still answers, and batched (several requests per backend call).
    assert httpx.get(f"{live_server.url}/healthz").json() == {"status": "ok"}
    r = httpx.post(f"{live_server.url}/v1/search", json={"index": "shapes", "text": "a red circle", "k": 3})
    assert r.status_code == 200 and len(r.json()["hits"]) == 3
    metrics = httpx.get(f"{live_server.url}/metrics").text
    assert 'vqclip_http_requests_total{endpoint="/v1/embed/text",method="POST",status="200"}' in metrics
    sums = [line for line in metrics.splitlines() if line.startswith("vqclip_batch_size_sum{queue=\"text:")]
    counts = [line for line in metrics.splitlines() if line.startswith("vqclip_batch_size_count{queue=\"text:")]
    assert float(sums[0].split()[-1]) > float(counts[0].split()[-1])  # more texts than backend calls


def test_sigterm_finishes_in_flight_requests_then_exits(tmp_path):
    # A long batching wait keeps the requests in flight while the signal arrives.
    server = start_server(["--model", "shapes-clip", "--max-wait-ms", "1500", "--max-batch", "64"])
    results: list[int] = []

    def post(i: int) -> None:
        r = httpx.post(f"{server.url}/v1/embed/text", json={"texts": [f"text {i}"]}, timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while "vqclip_queue_depth{queue=\"text:shapes-clip@torch-fp32\"} 3.0" not in httpx.get(
                f"{server.url}/metrics").text:
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.02)
        t0 = time.monotonic()
        code, out = stop_server(server)
        for t in threads:
            t.join(10)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert code == -signal.SIGTERM, out  # uvicorn re-raises the signal once it has stopped cleanly
    assert "Traceback" not in out
    assert results == [200, 200, 200]  # finished, not cut off
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("argv, words", [
    (["serve", "--model", "no-such-model"], "no-such-model"),
    (["serve", "--max-wait-ms", "-1"], "max_wait_ms"),
    (["serve", "--index", "a/b=/tmp/x"], "index name"),
    (["serve", "--index", "x=/no/such/index"], "/no/such/index"),
])
def test_serve_errors_are_one_line(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqclip: error:") and "\n" not in err and words in err
