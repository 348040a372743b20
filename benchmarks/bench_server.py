"""Server benchmark: ``vqclip serve`` on loopback under N concurrent clients, batching on and off.

Part 1, image embedding: a real uvicorn process (``vqclip serve``) and 1, 4, 16, 32, 64
concurrent clients, each sending single-image ``POST /v1/embed/image`` requests (a 256x256
JPEG, base64 JSON) on its own keep-alive connection; a bounded number of requests per level,
then it stops. Requests/s, images/s, p50/p99 latency and the mean images per backend call
(from the server's /metrics), with batching on (``--max-batch 32 --max-wait-ms 2``) and off
(``--max-batch 1``). Models: the bundled shapes-clip (torch, the default) and ViT-B/32 with
random weights on ONNX Runtime int8 (its export is made once, ~40 s, and cached). The peer,
measured in the same run with no server up: the same work in-process (``load_image`` +
``Encoder.preprocess`` + ``encode_image``) one call at a time.

Part 2, text search on a 1,000,000 x 512 fp16 index of random unit rows (ViT-B/32 int8 as
the query encoder): 1 and 16 clients, batching on and off. Peers: ``Index.search(text=...)``
in-process, one at a time and from 16 threads (no server-side batching).

The load generator (httpx, asyncio) runs on the same cores as the server: on a 2-core
machine its CPU is part of every figure. Targets (2-core machine): at 32 clients on ViT-B/32,
batching on >= 2x the images/s of batching off at a lower or equal p99; the server adds
<= 2 ms p50 over the in-process peer at 1 client; search sustains >= 10 queries/s at
p99 < 250 ms with 16 clients.

Run: ``nice -n 10 python benchmarks/bench_server.py --json benchmarks/results/server.<cpu>.json``
(about 8 minutes on 2 cores, plus the one-time ViT-B/32 export; writes a 1 GB index under a
temp folder). ``--quick`` runs fewer requests and a 100k-row index.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_runtime import make_big_index  # noqa: E402  (the one way benchmarks write a big index)

from vqclip._cpus import simd_class  # noqa: E402

LEVELS = (1, 4, 16, 32, 64)
VIT_FILE = "vit-b-32-random-seed0.safetensors"  # a fixed name: the export cache is keyed by it and the digest


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1000


def render_jpeg() -> bytes:
    from PIL import Image

    from vqclip.zoo import shapes

    buf = io.BytesIO()
    Image.fromarray(shapes.render(shapes.sample_scene("test", 0), size=256, supersample=2)).save(buf, "JPEG",
                                                                                                quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args: list[str], timeout: float = 900.0):
    """A ``vqclip serve ARGS`` process on a free loopback port, ready; SIGTERM at the end."""
    port = free_port()
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "vqclip.cli", "serve", "--port", str(port),
                             "--log-level", "warning", *args], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"vqclip serve {' '.join(args)} exited: {log.read()}")
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


def batch_stats(url: str, queue_prefix: str) -> tuple[float, float]:
    """(items, backend calls) so far of the queues whose name starts with ``queue_prefix``."""
    items = calls = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'vqclip_batch_size_sum{{queue="{queue_prefix}'):
            items += float(line.split()[-1])
        elif line.startswith(f'vqclip_batch_size_count{{queue="{queue_prefix}'):
            calls += float(line.split()[-1])
    return items, calls


async def _load(url: str, path: str, body: dict, clients: int, total: int) -> tuple[float, list[float], int]:
    """``clients`` concurrent clients sending ``total`` requests in all: (wall s, latencies, errors)."""
    latencies: list[float] = []
    errors = 0
    per_client = [total // clients + (i < total % clients) for i in range(clients)]

    async def client(n: int, c: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in range(n):
            t = time.perf_counter()
            r = await c.post(path, json=body)
            latencies.append(time.perf_counter() - t)
            errors += r.status_code != 200

    conns = [httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1))
             for _ in range(clients)]
    try:
        await asyncio.gather(*(client(1, c) for c in conns))  # warm each connection, not timed
        latencies.clear()
        t = time.perf_counter()
        await asyncio.gather(*(client(n, c) for n, c in zip(per_client, conns)))
        wall = time.perf_counter() - t
    finally:
        await asyncio.gather(*(c.aclose() for c in conns))
    return wall, latencies, errors


def load_level(url: str, path: str, body: dict, clients: int, total: int, queue_prefix: str) -> dict:
    before = batch_stats(url, queue_prefix)
    wall, lat, errors = asyncio.run(_load(url, path, body, clients, total))
    after = batch_stats(url, queue_prefix)
    calls = after[1] - before[1]
    n = len(lat)
    return {"clients": clients, "requests": n, "errors": errors, "req_s": n / wall, "items_s": n / wall,
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "mean_batch": (after[0] - before[0]) / calls if calls else None}


async def _paced(url: str, path: str, body: dict, clients: int, rate: float, total: int) -> tuple[float, list[float], int]:
    """Open-loop load: request i is due at i / rate seconds, sent by client i % clients (each
    on its own connection, one request at a time). Latency runs from the due time, so a
    request sent late because its client was still waiting counts its delay too."""
    latencies: list[float] = []
    errors = 0
    conns = [httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1))
             for _ in range(clients)]

    async def client(ci: int, c: httpx.AsyncClient, t0: float) -> None:
        nonlocal errors
        for i in range(ci, total, clients):
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            r = await c.post(path, json=body)
            latencies.append(time.perf_counter() - due)
            errors += r.status_code != 200

    try:
        await asyncio.gather(*(c.post(path, json=body) for c in conns))  # warm the connections
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, c, t0) for i, c in enumerate(conns)))
        wall = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.aclose() for c in conns))
    return wall, latencies, errors


def added_latency(url: str, enc, jpeg: bytes, rounds: int, per_round: int = 20) -> dict:
    """Server vs in-process at 1 client, interleaved in rounds so both see the same background load.

    The server is called with the standard library's blocking ``http.client`` on one keep-alive
    connection (the least client CPU); the peer does the same work in this process:
    ``load_image`` + ``Encoder.preprocess`` + ``encode_image``.
    """
    from vqclip.preprocess import load_image

    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"images": [base64.b64encode(jpeg).decode()]})
    srv: list[float] = []
    peer: list[float] = []
    for r in range(rounds + 1):
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for i in range(per_round):
            t = time.perf_counter()
            conn.request("POST", "/v1/embed/image", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            if r:  # round 0 warms both up
                srv.append(time.perf_counter() - t)
        conn.close()
        for i in range(per_round):
            t = time.perf_counter()
            enc.encode_image(enc.preprocess([load_image(jpeg)]))
            if r:
                peer.append(time.perf_counter() - t)
    return {"requests": len(srv), "server_p50_ms": _pct(srv, 50), "server_p99_ms": _pct(srv, 99),
            "peer_p50_ms": _pct(peer, 50), "peer_p99_ms": _pct(peer, 99),
            "added_p50_ms": _pct(srv, 50) - _pct(peer, 50)}


def encoder_ceiling(enc, jpeg: bytes, batch: int = 32, reps: int = 3) -> dict:
    """In-process images/s of ``encode_image`` at batch 1 and at ``batch`` (pixels ready): the
    most any batching can gain on this machine, before HTTP and decoding."""
    from vqclip.preprocess import load_image

    px = enc.preprocess([load_image(jpeg)])
    out = {}
    for b in (1, batch):
        x = np.repeat(px, b, axis=0)
        enc.encode_image(x)
        n = max(reps, batch * reps // b)
        t = time.perf_counter()
        for _ in range(n):
            enc.encode_image(x)
        out[f"b{b}_img_s"] = n * b / (time.perf_counter() - t)
    out["gain"] = out[f"b{batch}_img_s"] / out["b1_img_s"]
    return out


def peer_search(idx, n: int, threads: int) -> dict:
    """``Index.search(text=...)`` in-process from ``threads`` threads (no server-side batching)."""
    lat: list[float] = []

    def one(i: int) -> None:
        t = time.perf_counter()
        idx.search(text=f"a red circle {i}", k=10)
        lat.append(time.perf_counter() - t)

    for i in range(3):
        one(i)
    lat.clear()
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - t
    return {"clients": threads, "requests": n, "req_s": n / wall, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'what':<46} {'clients':>7} {'req/s':>8} {'items/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'err':>4}")
    for r in rows:
        batch = f"{r['mean_batch']:.1f}" if r.get("mean_batch") else "-"
        print(f"{r['what']:<46} {r['clients']:>7} {r.get('req_s', r.get('items_s', 0)):>8.1f} "
              f"{r.get('items_s', 0):>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {batch:>6} {r.get('errors', 0):>4}")


def bench_images(label: str, model_args: list[str], enc, jpeg: bytes, requests: int) -> dict:
    body = {"images": [base64.b64encode(jpeg).decode()]}
    out: dict = {"ceiling": encoder_ceiling(enc, jpeg), "rows": []}
    print(f"  {label} in-process encode_image: {out['ceiling']['b1_img_s']:.1f} img/s at batch 1, "
          f"{out['ceiling']['b32_img_s']:.1f} at batch 32 ({out['ceiling']['gain']:.2f}x)", flush=True)
    for mode, extra in (("batching on", ["--max-batch", "32", "--max-wait-ms", "2"]), ("batching off", ["--max-batch", "1"])):
        with server([*model_args, *extra]) as url:
            if mode == "batching on":
                out["added_latency"] = added_latency(url, enc, jpeg, rounds=max(3, requests // 40))
                a = out["added_latency"]
                print(f"  {label} 1 client: server p50 {a['server_p50_ms']:.2f} ms, in-process "
                      f"{a['peer_p50_ms']:.2f} ms: +{a['added_p50_ms']:.2f} ms", flush=True)
            for c in LEVELS:
                row = load_level(url, "/v1/embed/image", body, c, max(requests, 4 * c), "image:")
                out["rows"].append({"what": f"{label} server, {mode}", **row})
                print(f"  {out['rows'][-1]['what']}, {c} clients: {row['items_s']:.1f} img/s, p50 {row['p50_ms']:.1f} "
                      f"ms, p99 {row['p99_ms']:.1f} ms", flush=True)
    return out


def bench_search(vit_args: list[str], index: Path, enc, requests: int, rate: float) -> list[dict]:
    from vqclip.index import Index

    rows = []
    with Index.open(index, encoder=enc) as idx:
        for threads in (1, 16):
            rows.append({"what": "Index.search in-process (peer)", **peer_search(idx, max(32, requests // 4), threads)})
    body = {"index": "big", "text": "a red circle on a blue background", "k": 10}
    for mode, extra in (("batching on", ["--max-batch", "32", "--max-wait-ms", "2"]), ("batching off", ["--max-batch", "1"])):
        with server([*vit_args, *extra, "--index", f"big={index}"]) as url:
            for c in (1, 16):
                row = load_level(url, "/v1/search", body, c, max(requests, 8 * c), "search:")
                rows.append({"what": f"search server, {mode}", **row})
                print(f"  {rows[-1]['what']}, {c} clients: {row['req_s']:.1f} q/s, p50 {row['p50_ms']:.1f} ms, "
                      f"p99 {row['p99_ms']:.1f} ms", flush=True)
            total = max(int(rate * 20), 16)  # 20 s of offered load
            wall, lat, errors = asyncio.run(_paced(url, "/v1/search", body, 16, rate, total))
            rows.append({"what": f"search server, {mode}, paced {rate:g}/s", "clients": 16, "requests": len(lat),
                         "errors": errors, "req_s": len(lat) / wall, "items_s": len(lat) / wall,
                         "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)})
            print(f"  {rows[-1]['what']}: {rows[-1]['req_s']:.1f} q/s, p50 {rows[-1]['p50_ms']:.1f} ms, "
                  f"p99 {rows[-1]['p99_ms']:.1f} ms", flush=True)
    return rows


def targets(images: dict[str, dict], search: list[dict], rate: float) -> dict:
    def find(rows, what, clients):
        return next((r for r in rows if r["what"] == what and r["clients"] == clients), None)

    out: dict = {}
    vit = images.get("ViT-B/32 int8")
    if vit:
        on = find(vit["rows"], "ViT-B/32 int8 server, batching on", 32)
        off = find(vit["rows"], "ViT-B/32 int8 server, batching off", 32)
        out["vit_b32_32_clients_batching_2x"] = {
            "on_img_s": on["items_s"], "off_img_s": off["items_s"], "ratio": on["items_s"] / off["items_s"],
            "on_p99_ms": on["p99_ms"], "off_p99_ms": off["p99_ms"],
            "in_process_batch_gain": vit["ceiling"]["gain"],
            "met": on["items_s"] >= 2 * off["items_s"] and on["p99_ms"] <= off["p99_ms"]}
    for label, res in images.items():
        a = res["added_latency"]
        out[f"{label}: server adds <= 2 ms p50 at 1 client"] = {**a, "met": a["added_p50_ms"] <= 2.0}
    paced = find(search, f"search server, batching on, paced {rate:g}/s", 16)
    if paced:
        out[f"search_1m_16_clients_{rate:g}_per_s"] = {"req_s": paced["req_s"], "p99_ms": paced["p99_ms"],
                                                      "met": rate >= 10 and paced["req_s"] >= 0.95 * rate and
                                                      paced["p99_ms"] < 250 and not paced["errors"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=192, help="requests per level (at least 4 per client)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="search index rows (default 1,000,000)")
    ap.add_argument("--rate", type=float, default=10.0, help="offered search load of the paced run, queries/s")
    ap.add_argument("--quick", action="store_true", help="48 requests per level, a 100k-row index")
    ap.add_argument("--skip-shapes", action="store_true")
    ap.add_argument("--skip-vit", action="store_true", help="also skips the search part (its query encoder)")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    a = ap.parse_args()
    if a.quick:
        a.requests, a.rows = 48, 100_000
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vqclip serve` sets it, for the in-process peers

    import torch
    from safetensors.torch import save_file

    from vqclip.encoder import open_encoder
    from vqclip.models.clip import CLIP
    from vqclip.zoo import get

    load_before = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores ({simd_class()}), load average {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f}")
    jpeg = render_jpeg()
    images: dict[str, dict] = {}
    search: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vqclip-bench-server-") as tmp:
        work = Path(tmp)
        if not a.skip_shapes:
            enc = open_encoder("shapes-clip")
            images["shapes-clip torch"] = bench_images("shapes-clip torch", ["--model", "shapes-clip"], enc, jpeg,
                                                       a.requests)
            print_rows("shapes-clip, torch fp32: single-image /v1/embed/image", images["shapes-clip torch"]["rows"])
        if not a.skip_vit:
            torch.manual_seed(0)
            vit = CLIP(get("ViT-B/32").config).eval()
            vit_file = work / VIT_FILE
            save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(vit_file))
            vit_args = ["--model", str(vit_file), "--backend", "onnxruntime", "--precision", "int8"]
            enc = open_encoder(vit_file, "onnxruntime", precision="int8")  # exports once, cached for the servers
            images["ViT-B/32 int8"] = bench_images("ViT-B/32 int8", vit_args, enc, jpeg, a.requests)
            print_rows("ViT-B/32 (random weights), ONNX Runtime int8: single-image /v1/embed/image",
                       images["ViT-B/32 int8"]["rows"])
            if not a.skip_search:
                index = work / "big.vqindex"
                t = time.perf_counter()
                make_big_index(index, enc, a.rows, 512, "fp16")
                print(f"\n{a.rows:,}-row fp16 index written in {time.perf_counter() - t:.0f} s")
                search = bench_search(vit_args, index, enc, a.requests, a.rate)
                print_rows(f"text search, {a.rows:,} x 512 fp16, ViT-B/32 int8 query encoder, k=10", search)
    load_after = os.getloadavg()
    met = targets(images, search, a.rate)
    print("\ntargets:")
    for name, t in met.items():
        print(f"  {name}: {'met' if t['met'] else 'NOT met'} "
              f"({', '.join(f'{k}={v:.2f}' for k, v in t.items() if isinstance(v, float))})")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if a.json:
        doc = {"machine": {"cpus": os.cpu_count(), "cpu_class": simd_class(), "load_before": load_before,
                           "load_after": load_after, "command": " ".join(sys.argv)},
               "images": images, "search": search, "targets": met}
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
