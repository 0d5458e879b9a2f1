"""Atomic file writes, and the removal of temporary files left by killed processes."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["atomic_write"]

_TEMP_RE = re.compile(r"^\.(?P<base>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _host() -> str:
    """This machine's name as it appears in temporary file names."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _temp_name(path: str) -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync_dir(directory: str) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Write a file through ``write(f)`` so that ``path`` is either the old or the new file.

    ``write`` gets a binary file object of a temporary file in the same
    directory (created if needed); the file is flushed and ``fsync``-ed, renamed
    over ``path`` with ``os.replace``, and the directory is ``fsync``-ed. A
    process killed at any moment leaves ``path`` as it was or complete (and at
    worst a hidden ``.*.tmp`` file, which ``CheckpointManager`` removes). Used by
    checkpoints and exports.

    Args:
        path: the file to write.
        write: a function that writes the contents to the file object it gets.

    Raises:
        OSError: when writing fails (e.g. ``ENOSPC``, disk full): the same error,
            with its type and ``errno``, naming ``path`` (``.filename``), with a
            note that the previous file is unchanged.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "note.txt")
        >>> atomic_write(path, lambda f: f.write(b"hello"))
        >>> open(path, "rb").read(), os.listdir(os.path.dirname(path))
        (b'hello', ['note.txt'])
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    except OSError as err:
        _name_the_file(err, path, tmp)
        raise
    _fsync_dir(directory)


def _name_the_file(err: OSError, path: str, tmp: str) -> None:
    """Make a failed write's error (ENOSPC, EIO, ...) name ``path``, keeping its type and errno.

    The error named the temporary file, or nothing (a failed ``write``); with an errno it
    now reads ``[Errno 28] No space left on device: '<path>'``, and a note tells what
    happened to the previous file.
    """
    if err.errno is not None and err.filename in (None, tmp) and err.filename2 is None:
        err.filename = path  # (a failed rename names both files already: 'tmp' -> 'path')
    if hasattr(err, "add_note"):  # Python >= 3.11
        err.add_note(
            f"atomic_write: writing `{path}` failed; the previous file there, if any, is "
            "unchanged (the new contents go to a temporary file in the same directory, "
            "renamed over it only once complete)."
        )


def _remove_stale_temp_files(directory: str) -> list[str]:
    """Remove temp files and directories left by dead processes on this host.

    Never another live save's: a name holds the host and process id of its writer (for a
    sharded checkpoint, of process 0), and only those of processes gone from this host go.
    """
    if os.name != "posix":  # pragma: no cover
        return []
    host = _host()
    removed = []
    for name in os.listdir(directory):
        m = _TEMP_RE.match(name)
        if not m or m["host"] != host or int(m["pid"]) == os.getpid():
            continue
        try:
            os.kill(int(m["pid"]), 0)  # signal 0 only checks whether the process exists
            continue
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):  # a sharded checkpoint's
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(name)
    return removed
