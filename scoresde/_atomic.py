"""Atomic file writes: the content goes to a temporary file in the target's folder, which is
flushed, fsynced and renamed over the target with ``os.replace`` (atomic on POSIX and Windows).
A crash mid-write leaves the previous file whole and no partial file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: a fresh file gets the mode open() would give it


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a binary file object whose content replaces ``path`` at once.
    The folder is created if needed; a file that is replaced keeps its permission bits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    # make the rename itself durable (POSIX; a no-op where folders cannot be opened)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
