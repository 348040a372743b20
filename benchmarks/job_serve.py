"""Job ``serve``: a real ``vqclip serve`` process on loopback under C concurrent clients, each
sending single-image ``POST /v1/embed/image`` requests on its own keep-alive connection; the
server with batching on beside itself with batching off (``--max-batch 1``). The load
generator runs on the same cores as the server, so its CPU is part of every figure."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator

from .harness import Options, add_ratios, make_row
from .models import resolve_model

__all__ = ["run", "server"]

OFF = "vqclip serve, batching off"
MODES = {"vqclip serve, batching on": ["--max-batch", "32", "--max-wait-ms", "2"], OFF: ["--max-batch", "1"]}
ROUNDS = 2  # each level runs on one server, then the other, twice: load hits both modes alike


def run(opts: Options, job: str = "serve") -> dict:
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        return {"rows": [], "skipped": [f"serve: {e.name} is not installed; pip install 'vqclip[server]' httpx"]}
    levels = (1, 8) if opts.quick else (1, 4, 16, 32)
    requests = 32 if opts.quick else 192
    jpeg = _jpeg()
    body = {"images": [base64.b64encode(jpeg).decode()]}
    rows: list[dict] = []
    backend, precision = opts.preferred_pair()
    for name in opts.models:
        model = resolve_model(name)
        args = ["--model", model.source, "--backend", backend, "--precision", precision, "--device", opts.device,
                "--generation-jobs", "0"]
        modes = {m: extra for m, extra in MODES.items() if opts.peers or m != OFF}
        with contextlib.ExitStack() as stack:  # both servers up at once: the modes alternate per level
            urls = {mode: stack.enter_context(server([*args, *extra])) for mode, extra in modes.items()}
            for clients in levels:
                per_round = max(requests, 4 * clients) // ROUNDS
                got = {mode: {"wall": 0.0, "lat": [], "errors": 0, "items": 0.0, "calls": 0.0} for mode in urls}
                for _ in range(ROUNDS):
                    for mode, url in urls.items():
                        wall, lat, errors, items, calls = _level(url, body, clients, per_round)
                        g = got[mode]
                        g["wall"] += wall
                        g["lat"] += lat
                        g["errors"] += errors
                        g["items"] += items
                        g["calls"] += calls
                case = f"{model.label} {backend} {precision}, /v1/embed/image, {clients} clients"
                for mode, g in got.items():
                    row = make_row(job, case, mode, g["lat"] or None, unit="img/s", peer=mode == OFF, keep_cdf=True,
                                   clients=clients, errors=g["errors"], model=model.label,
                                   mean_batch=g["items"] / g["calls"] if g["calls"] else None,
                                   reproduce=opts.invocation(job, model=model.name))
                    # concurrent clients: answered requests over wall time, not 1 / mean latency; errors excluded
                    row["throughput"] = len(g["lat"]) / g["wall"] if g["lat"] else None
                    rows.append(row)
    add_ratios(rows, OFF)
    return {"rows": rows, "skipped": []}


def _jpeg() -> bytes:
    from PIL import Image

    from vqclip.zoo import shapes

    buf = io.BytesIO()
    Image.fromarray(shapes.render(shapes.sample_scene("test", 0), size=256, supersample=2)).save(buf, "JPEG",
                                                                                                quality=90)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args: list[str], timeout: float = 900.0) -> Iterator[str]:
    """A ``vqclip serve ARGS`` process on a free loopback port, ready; SIGTERM at the end."""
    port = _free_port()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vqclip.cli", "serve", "--port", str(port),
                                 "--log-level", "warning", *args], stdout=log, stderr=subprocess.STDOUT)
        yield from _until_stopped(proc, log, f"http://127.0.0.1:{port}", args, timeout)


def _until_stopped(proc: subprocess.Popen, log, url: str, args: list[str], timeout: float) -> Iterator[str]:
    import httpx

    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"vqclip serve {' '.join(args)} exited: {log.read().strip()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"vqclip serve {' '.join(args)} not ready after {timeout:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _batch_stats(url: str) -> tuple[float, float]:
    """(items, backend calls) so far of the image queues, from the server's /metrics."""
    import httpx

    items = calls = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('vqclip_batch_size_sum{queue="image:'):
            items += float(line.split()[-1])
        elif line.startswith('vqclip_batch_size_count{queue="image:'):
            calls += float(line.split()[-1])
    return items, calls


def _level(url: str, body: dict, clients: int, total: int) -> tuple[float, list[float], int, float, float]:
    """(wall s, latencies of the answered requests, errors, items and backend calls the server batched)."""
    before = _batch_stats(url)
    wall, lat, errors = asyncio.run(_load(url, body, clients, total))
    after = _batch_stats(url)
    return wall, lat, errors, after[0] - before[0], after[1] - before[1]


async def _load(url: str, body: dict, clients: int, total: int) -> tuple[float, list[float], int]:
    """``clients`` concurrent clients sending ``total`` requests in all: (wall s, latencies, errors)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    per_client = [total // clients + (i < total % clients) for i in range(clients)]

    async def client(n: int, c: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in range(n):
            t = time.perf_counter()
            r = await c.post("/v1/embed/image", json=body)
            if r.status_code == 200:  # a fast error answer is not throughput
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1

    conns = [httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1))
             for _ in range(clients)]
    try:
        await asyncio.gather(*(client(1, c) for c in conns))  # warm each connection, not timed
        latencies.clear()
        errors = 0
        t = time.perf_counter()
        await asyncio.gather(*(client(n, c) for n, c in zip(per_client, conns)))
        wall = time.perf_counter() - t
    finally:
        await asyncio.gather(*(c.aclose() for c in conns))
    return wall, latencies, errors
