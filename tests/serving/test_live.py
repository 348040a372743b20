"""A real ``vqclip serve`` process on loopback: a bounded load run with no errors and no hung
connections, graceful shutdown on SIGTERM, and the command's one-line errors."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import socket
import time

import pytest

httpx = pytest.importorskip("httpx", reason="the live-server tests need httpx")
pytest.importorskip("uvicorn", reason="the live-server tests need the 'server' extra (uvicorn)")

from vqclip.cli.main import main  # noqa: E402

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


@pytest.mark.slow
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


def test_large_bodies_arrive_whole_through_uvicorn(live_server, tmp_path):
    """Bodies of many socket reads (multipart and base64 JSON) are read whole, not raced by the
    disconnect watch, and give the in-process embeddings."""
    import numpy as np
    from PIL import Image

    from vqclip.encoder import open_encoder
    from vqclip.preprocess import load_image

    rng = np.random.default_rng(0)
    blobs = []
    for i in range(3):  # noise does not compress: ~200 kB each
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    enc = open_encoder("shapes-clip")
    want = enc.encode_image(enc.preprocess([load_image(b) for b in blobs]))
    url = f"{live_server.url}/v1/embed/image"
    as_form = httpx.post(url, files=[("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)],
                         timeout=60)
    as_json = httpx.post(url, json={"images": [base64.b64encode(b).decode() for b in blobs]}, timeout=60)
    for r in (as_form, as_json):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["embeddings"]), want, atol=1e-4)


def _partial_request(port: int, texts: list[str]) -> tuple[socket.socket, bytes]:
    """A request whose headers and first body byte are sent; the rest is returned to send later."""
    body = json.dumps({"texts": texts}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:1])
    return sock, body[1:]


def _read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split()[1])


def test_sigterm_finishes_in_flight_requests_then_exits(server_process):
    server = server_process(["--model", "shapes-clip"])
    # Two requests in flight (their bodies half sent) when the signal arrives.
    pending = [_partial_request(server.port, [f"text {i}"]) for i in range(2)]
    deadline = time.monotonic() + 10
    while "vqclip_http_requests_in_flight 3.0" not in httpx.get(f"{server.url}/metrics").text:  # 2 + this one
        assert time.monotonic() < deadline, "the requests never reached the app"
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10  # a loaded machine may take a while to stop listening
    while True:
        try:
            httpx.get(f"{server.url}/healthz", timeout=2)
        except httpx.HTTPError:  # no new connections once stopping
            break
        assert time.monotonic() < deadline, "still accepting connections 10 s after SIGTERM"
        time.sleep(0.05)
    statuses = []
    for sock, rest in pending:
        sock.sendall(rest)
        statuses.append(_read_status(sock))
        sock.close()
    code, out = server.stop()
    assert statuses == [200, 200]  # finished, not cut off
    assert code == -signal.SIGTERM, out  # uvicorn re-raises the signal once it has stopped cleanly
    assert "Traceback" not in out


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
