"""Fixtures of the server tests: in-process apps on the tiny CLIP, an index it built, and one
real ``vqclip serve`` process (the bundled shapes-clip and a shapes index) on loopback."""
from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

# The server's packages (the 'server' extra) and httpx are imported inside the fixtures, so
# that test modules can skip with the reason (pytest.importorskip) where they are missing.


class Gate:
    """Holds a backend call until ``open()``: a worker kept busy on purpose."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()

    def wait(self) -> None:
        self.entered.set()
        assert self._open.wait(30), "a test left the backend gate closed"

    def open(self) -> None:
        self._open.set()


class GatedBackend:
    """Wraps a backend so that a test can block its calls (``hold``) and count them."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.gate: Gate | None = None
        self.calls: list[tuple[str, int]] = []

    def hold(self) -> Gate:
        """Block every later call until the returned gate is opened."""
        self.gate = Gate()
        return self.gate

    def describe(self) -> str:
        return self._backend.describe()

    def _call(self, kind: str, x):
        if self.gate is not None:
            self.gate.wait()
        self.calls.append((kind, len(x)))
        return getattr(self._backend, f"encode_{kind}")(x)

    def encode_image(self, pixels):
        return self._call("image", pixels)

    def encode_text(self, ids):
        return self._call("text", ids)


def wait_ready(client, timeout: float = 30.0) -> None:
    t = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < t, "the app did not become ready"
        time.sleep(0.02)


@pytest.fixture(scope="session")
def shapes_images(tmp_path_factory) -> Path:
    """A folder of 12 rendered shapes scenes (PNG) and the scenes' captions in ``captions.txt``."""
    from PIL import Image

    from vqclip.zoo import shapes

    folder = tmp_path_factory.mktemp("shapes") / "images"
    folder.mkdir()
    lines = []
    for i, scene in enumerate(shapes.sample_scenes("test", 0, 12)):
        Image.fromarray(shapes.render(scene, size=96, supersample=2)).save(folder / f"{i:02d}.png")
        lines.append(f"{i:02d}.png\t{shapes.caption(scene, 0).text}")
    (folder.parent / "captions.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, tiny, images):
    """An index of 8 random PNGs (and one symlink to a PNG outside its root), built by the tiny
    CLIP of seed 0; ``.path``, ``.root``, ``.outside`` (the symlink's target)."""
    from vqclip.index import build_index

    base = tmp_path_factory.mktemp("tiny-index")
    root = base / "pics"
    for i in range(8):
        images.png(root / f"{i}.png", seed=i)
    outside = images.png(base / "outside.png", seed=99)
    (root / "link.png").symlink_to(outside)
    build_index(root, base / "pics.vqindex", tiny.encoder(0), storage="fp32", progress=False)
    return SimpleNamespace(path=base / "pics.vqindex", root=root, outside=outside)


@pytest.fixture
def make_client(tiny):
    """``make_client(indexes=..., encoder=..., **config)`` -> a ready TestClient on the tiny CLIP;
    ``client.backend`` is the encoder's ``GatedBackend``. Closed at the end of the test."""
    from fastapi.testclient import TestClient

    from vqclip.index.reader import open_index
    from vqclip.serving.app import create_app
    from vqclip.serving.config import ServerConfig
    from vqclip.serving.metrics import Metrics
    from vqclip.serving.runtime import Runtime

    stack = contextlib.ExitStack()

    def make(indexes: dict | None = None, **settings) -> TestClient:
        enc = tiny.encoder(0)
        enc.session = GatedBackend(enc.session)
        settings.setdefault("generation_jobs", 0)  # generation loads its own models: only where a test asks
        cfg = ServerConfig(indexes={n: str(p) for n, p in (indexes or {}).items()}, **settings)
        opened = {n: open_index(p, encoder=enc) for n, p in (indexes or {}).items()}  # a folder or milvus://
        client = stack.enter_context(TestClient(create_app(cfg, Runtime(cfg, enc, opened, Metrics()))))
        wait_ready(client)
        client.backend = enc.session
        client.encoder = enc
        return client

    with stack:
        yield make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(args: list[str], timeout: float = 120.0) -> SimpleNamespace:
    """``vqclip serve ARGS`` on a free loopback port, once /readyz answers 200."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "vqclip.cli", "serve", "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"vqclip serve exited with {proc.returncode}: {proc.stdout.read()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return SimpleNamespace(url=url, proc=proc, port=port)
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"vqclip serve was not ready in {timeout:.0f} s: {proc.stdout.read()}")
        time.sleep(0.1)


def _stop_server(server: SimpleNamespace, timeout: float = 30.0) -> tuple[int, str]:
    """SIGTERM, then the exit code and output (killed, and a failure, if it does not exit).

    A graceful stop ends with uvicorn re-raising the signal it caught, so the status of a
    clean exit is -SIGTERM (as for any process that a supervisor stops), not 0."""
    server.proc.send_signal(signal.SIGTERM)
    try:
        out, _ = server.proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        out, _ = server.proc.communicate()
        raise AssertionError(f"vqclip serve did not exit {timeout:.0f} s after SIGTERM: {out}")
    return server.proc.returncode, out


@pytest.fixture(scope="session")
def shapes_index(shapes_images) -> Path:
    """The shapes folder indexed by the bundled shapes-clip (fp16 storage)."""
    from vqclip.encoder import open_encoder
    from vqclip.index import build_index

    out = shapes_images.parent / "shapes.vqindex"
    build_index(shapes_images, out, open_encoder("shapes-clip"), progress=False)
    return out


@pytest.fixture
def server_process():
    """``start(args)`` -> a ready ``vqclip serve ARGS`` process (``.url``, ``.proc``, ``.stop()`` ->
    (status, output)); any still running at the end of the test is killed."""
    started: list[SimpleNamespace] = []

    def start(args: list[str]) -> SimpleNamespace:
        server = _start_server(args)
        server.stop = lambda: _stop_server(server)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()


@pytest.fixture(scope="session")
def live_server(shapes_index):
    """One real ``vqclip serve`` (shapes-clip on torch, the shapes index as ``shapes``)."""
    server = _start_server(["--model", "shapes-clip", "--index", f"shapes={shapes_index}"])
    yield server
    code, out = _stop_server(server)
    assert code == -signal.SIGTERM, out
