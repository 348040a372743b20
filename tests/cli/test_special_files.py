"""Special files given as images or met in a folder: never a hang, never unbounded reading;
one line and a non-zero exit for a file named on the command line, a counted skip in a build.
Each command runs in a subprocess under a timeout, so a regression fails instead of hanging."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from PIL import Image

from vqclip.errors import ImageDecodeError, InvalidInputError
from vqclip.preprocess import read_image_file

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and sockets")


@pytest.fixture
def specials(tmp_path):
    """A folder with one real image and a FIFO, a socket, a /dev/zero link, a dangling link and
    a folder, each named like an image."""
    d = tmp_path / "photos"
    d.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(d / "real.png")
    os.mkfifo(d / "fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "socket.png"))
    (d / "zero.png").symlink_to("/dev/zero")
    (d / "dangling.png").symlink_to(d / "nowhere.png")
    (d / "folder.png").mkdir()
    yield d
    sock.close()


def _vqclip(tmp_path, *args, timeout=90):
    env = {**os.environ, "VQCLIP_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "vqclip.cli", *args], capture_output=True, text=True, timeout=timeout,
                       env=env)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.mark.parametrize("name, kind", [("fifo.png", "FIFO"), ("socket.png", "socket"),
                                        ("zero.png", "character device"), ("folder.png", "folder"),
                                        ("dangling.png", "does not exist")])
def test_reading_a_special_file_says_what_it_is_at_once(specials, name, kind):
    with pytest.raises(ImageDecodeError, match=kind):
        read_image_file(specials / name)


def test_the_byte_limit_stops_a_big_file_before_reading_it(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(ImageDecodeError, match="over the limit of 1024"):
        read_image_file(big, max_bytes=1024)
    monkeypatch.setenv("VQCLIP_MAX_IMAGE_BYTES", "1000")
    with pytest.raises(ImageDecodeError, match="VQCLIP_MAX_IMAGE_BYTES"):
        read_image_file(big)
    monkeypatch.setenv("VQCLIP_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(InvalidInputError, match="whole number"):
        read_image_file(big)


@pytest.mark.slow
def test_cli_commands_on_special_files_answer_in_one_line(specials, tmp_path):
    for name in ("fifo.png", "socket.png", "zero.png", "folder.png"):
        r = _vqclip(tmp_path, "classify", str(specials / name), "--labels", "a red square", "a blue star")
        assert r.returncode != 0 and name in r.stderr, r.stderr
        assert ("is a folder" if name == "folder.png" else "not a regular file") in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
    r = _vqclip(tmp_path, "index", "build", str(specials), "--out", str(tmp_path / "idx"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "1 added" in r.stdout and "4 unreadable" in r.stdout, r.stdout  # fifo, socket, zero, dangling
    for name in ("fifo.png", "zero.png"):
        r = _vqclip(tmp_path, "search", str(tmp_path / "idx"), "--image", str(specials / name))
        assert r.returncode != 0 and "not a regular file" in r.stderr, r.stderr
    r = _vqclip(tmp_path, "index", "update", str(tmp_path / "idx"), "--no-progress")
    assert r.returncode == 0 and "4 unreadable" in r.stdout, r.stdout
    fifo, real = str(specials / "fifo.png"), str(specials / "real.png")
    for args in (["classify", real, "--labels-file", fifo], ["classify", real, "--labels", "a", "--templates", fifo],
                 ["generate", "x", "--init-image", fifo, "--steps", "1", "--out", str(tmp_path / "g")],
                 ["generate", "x", "--image-prompts", f"{fifo}:1", "--steps", "1", "--out", str(tmp_path / "g")],
                 ["generate", "--resume", fifo], ["serve", "--config", fifo], ["serve", "--api-key-file", fifo]):
        r = _vqclip(tmp_path, *args)
        assert r.returncode == 2 and "FIFO" in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)


def test_a_file_error_is_one_line_not_a_traceback(specials, tmp_path, capsys):
    from vqclip.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    rc = main(["index", "build", str(specials), "--out", str(afile / "idx"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("vqclip: error: NotADirectoryError") and err.count("\n") == 1, err
