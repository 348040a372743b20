"""Shared and read-only use: files made with the user's umask (a web or Triton server running
as another user can read them), and an index on a folder this process cannot write is
searched, its info read, and an update refused in one line."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

from vqclip._files import atomic_write_bytes, make_temp_dir
from vqclip.index import build_index


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_and_folders_follow_the_umask(tmp_path, umask_022, tiny, images):
    atomic_write_bytes(tmp_path / "f.json", b"{}")
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(make_temp_dir(".x.tmp-", tmp_path).stat().st_mode) == 0o755
    src = tmp_path / "src"
    src.mkdir()
    images.png(src / "a.png", 1)
    build_index(src, tmp_path / "idx", tiny.encoder(), progress=False)
    assert stat.S_IMODE((tmp_path / "idx" / "header.json").stat().st_mode) == 0o644


CLI = [sys.executable, "-m", "vqclip.cli"]
needs_capsh = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("capsh"),
                                 reason="needs root and capsh to drop CAP_DAC_OVERRIDE, so that a folder's mode binds")


def _unprivileged(env, *args):
    """``vqclip ARGS`` as root without the capabilities that override file modes."""
    cmd = " ".join(f"'{a}'" for a in [*CLI, *args])
    return subprocess.run(["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", cmd],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def photos(tmp_path, images):
    src = tmp_path / "photos"
    src.mkdir()
    images.png(src / "a.png", 1)
    return src


@pytest.mark.slow
@needs_capsh
def test_an_index_on_a_read_only_folder_is_searched_not_written(tmp_path, photos):
    env = {**os.environ, "VQCLIP_CACHE": str(tmp_path / "cache")}
    idx = tmp_path / "idx"
    subprocess.run([*CLI, "index", "build", str(photos), "--out", str(idx), "--no-progress"], env=env,
                   check=True, capture_output=True, timeout=300)
    for p in idx.iterdir():
        p.chmod(0o444)
    idx.chmod(0o555)
    try:
        r = _unprivileged(env, "search", str(idx), "a red square", "--k", "1")
        assert r.returncode == 0 and "a.png" in r.stdout, r.stderr
        assert _unprivileged(env, "index", "info", str(idx)).returncode == 0
        r = _unprivileged(env, "index", "update", str(idx), "--no-progress")
        assert r.returncode == 2 and "read-only" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert sorted(p.name for p in idx.iterdir()) == sorted(["entries.sqlite", "header.json", "norms.bin",
                                                                 "vectors.bin", "write.lock"])
    finally:
        idx.chmod(0o755)


@pytest.mark.slow
@needs_capsh
def test_an_output_or_cache_folder_that_cannot_be_written_is_one_line(tmp_path, photos):
    ro, cache = tmp_path / "ro", tmp_path / "cache"
    for d in (ro, cache):
        d.mkdir()
        d.chmod(0o555)
    env = {**os.environ, "VQCLIP_CACHE": str(cache)}
    try:
        for args in (["export", "shapes-clip", "--out", str(ro / "exp")],
                     ["index", "build", str(photos), "--out", str(ro / "idx"), "--no-progress"],
                     ["classify", str(photos / "a.png"), "--labels", "a", "b", "--backend", "onnxruntime"]):
            r = _unprivileged(env, *args)
            assert r.returncode == 2 and "Permission denied" in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    finally:
        for d in (ro, cache):
            d.chmod(0o755)
