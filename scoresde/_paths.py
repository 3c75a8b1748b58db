"""Checks of output paths, made before a command does its work: a bad ``--out`` then fails at
once, in one line, instead of in a traceback after the work is done. Nothing is created."""

from __future__ import annotations

import tempfile
from pathlib import Path


def check_output_folder(path: str | Path, flag: str) -> Path:
    """``path`` if it is a folder this process can write in, or can be created as one; else a
    ``ValueError`` naming ``flag``, the path and the part of it at fault."""
    path = Path(path)
    _check_creatable(path, f"{flag} {path}")
    return path


def check_output_file(path: str | Path, flag: str) -> Path:
    """``path`` if a file can be written (or replaced) there; else a ``ValueError`` as
    :func:`check_output_folder` gives."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder, not a file")
    _check_creatable(path.parent, f"{flag} {path}")
    return path


def _check_creatable(folder: Path, what: str) -> None:
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what}: {existing} is a file, not a folder")
    try:  # a real write, not os.access: that says yes to root on a read-only mount
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise ValueError(f"{what}: cannot write in {existing} ({err.strerror or err})") from None
