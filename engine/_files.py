"""File plumbing shared by the jobs: the cache folder, atomic writes (temp + rename) with the
user's umask, and reading a named file without blocking on a FIFO or reading a device."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["cache_root", "atomic_write_bytes", "fsync_dir", "read_regular", "NotRegularFileError", "make_temp_dir",
           "user_mode", "prepare_folder"]


def cache_root() -> Path:
    """Where vqclip caches derived data: ``$VQCLIP_CACHE``, else ``$XDG_CACHE_HOME/vqclip``,
    else ``~/.cache/vqclip``. Not created here."""
    if os.environ.get("VQCLIP_CACHE"):
        root, what = Path(os.environ["VQCLIP_CACHE"]), "VQCLIP_CACHE"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root, what = Path(base) / "vqclip", "the cache folder"
    if root.exists() and not root.is_dir():
        from vqclip.errors import InvalidInputError

        raise InvalidInputError(f"{what} {str(root)!r} is a file, not a folder; point VQCLIP_CACHE at a folder")
    return root


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


class NotRegularFileError(OSError):
    """A path that names a FIFO, socket, device or folder where a file's bytes are wanted."""


def _check_regular(path: str | Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise NotRegularFileError(errno.EINVAL, f"is {kind}, not a regular file", os.fspath(path))


def read_regular(path: str | Path, max_bytes: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file ``path``: never blocking on a FIFO, never reading a
    device, never more than ``max_bytes`` (an ``OSError`` with EFBIG past it). With
    ``follow_symlinks=False`` a symlink at ``path`` itself is an ``OSError`` (ELOOP), so a
    path checked before the call cannot be swapped for a link.

    Raises ``NotRegularFileError`` for a FIFO, socket, device or folder and ``OSError`` for
    a missing or unreadable file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:  # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one
        fd = os.open(path, flags)
    except OSError:
        try:  # a socket cannot be opened at all: say what it is
            _check_regular(path, os.stat(path).st_mode)
        except NotRegularFileError:
            raise
        except OSError:
            pass
        raise
    try:
        st = os.fstat(fd)
        _check_regular(path, st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        if st.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"{st.st_size} bytes, over the limit of {max_bytes}", os.fspath(path))
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise OSError(errno.EFBIG, f"over the limit of {max_bytes} bytes", os.fspath(path))
    return data


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def user_mode(path: str | Path, directory: bool = False) -> None:
    """Give a temp file or folder the mode a plain create would (0644 / 0755 under the usual
    umask): mkstemp and mkdtemp make them private, and the renamed result would stay so."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def make_temp_dir(prefix: str, parent: str | Path) -> Path:
    """A new folder in ``parent`` to build an output in before renaming it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    user_mode(tmp, directory=True)
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    Writes a temp file in the same folder, fsyncs it, renames it over ``path`` and fsyncs
    the folder. A crash leaves at worst a stray ``.tmp`` file, never a torn ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        user_mode(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def prepare_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents) and prove a file can be written there (a permission
    check would pass for root on a read-only mount); ``OutputPathError`` in one line."""
    from vqclip.errors import OutputPathError

    path = Path(os.path.expanduser(os.fspath(folder)))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputPathError(f"{str(path)!r} exists and is not a folder; give another output folder") from None
    except OSError as e:
        raise OutputPathError(f"cannot create the output folder {str(path)!r} ({e.strerror}); give another one") \
            from e
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise OutputPathError(f"the output folder {str(path)!r} is not writable ({e.strerror}); give another one") \
            from e
    return path
