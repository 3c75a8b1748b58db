"""Atomic file writes: the content goes to a temporary file ``.{name}.{12 hex}.tmp`` in the
target's folder, which is flushed, fsynced and renamed over the target with ``os.replace``
(atomic on POSIX and Windows). A crash mid-write leaves the previous file whole; the temporary
file a killed process leaves behind is removed when the target is next written (or a run is
resumed from it), once it is :data:`STALE_SECONDS` old: a younger one may belong to another
process writing the same target now, whose ``os.replace`` would fail without it."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

STALE_SECONDS = 60.0
"""Age (since last modification) after which a target's temporary file counts as left behind."""


def remove_stale_temporaries(path: str | Path, older_than: float = STALE_SECONDS) -> list[Path]:
    """Delete the temporary files ``.{name}.{12 hex}.tmp`` of the target ``path`` (exactly
    that pattern, in its folder, regular files only) last modified more than ``older_than``
    seconds ago; return them. Files that vanish or cannot be removed are skipped."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{12}}\.tmp")
    removed = []
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and time.time() - info.st_mtime > older_than:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a binary file object whose content replaces ``path`` at once.
    The folder is created if needed; a replaced file keeps its permission bits, a new one gets
    what ``open`` would give it (0o666 less the umask). Stale temporary files of ``path`` are
    removed first (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp_name = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp_name, path.stat().st_mode & 0o7777)
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
