"""Checkpoint files: atomic writes, safe loads, clear errors.

A checkpoint is a dict of plain values (tensors, ints, floats, strings, bools, ``None``, and
lists/dicts of them), so it loads with ``torch.load(weights_only=True)``: loading never runs
code from the file. :func:`save_checkpoint` writes atomically (a temporary file in the target's
folder, renamed over it): a crash mid-write leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from scoresde._atomic import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointError", "check_plain", "checkpoint_mismatch", "load_checkpoint", "save_checkpoint",
]  # fmt: skip

CHECKPOINT_FORMAT = "scoresde-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (corrupted, truncated, unsafe to load, not a scoresde checkpoint)."""


_PLAIN = (bool, int, float, str, type(None))


def check_plain(value: Any, name: str = "config") -> None:
    """Raise ``TypeError`` naming the first entry of ``value`` that is not a plain value
    (tensor, number, string, bool, None, or a list/tuple/dict of them with string or int keys),
    i.e. that ``torch.load(weights_only=True)`` would refuse (numpy arrays, Paths, dataclasses...)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{name} has a key of type {type(key).__name__} ({key!r}); use strings")
            check_plain(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{name}[{i}]")
    elif not (type(value) in _PLAIN or isinstance(value, torch.Tensor)):  # exact: numpy.float64 is a float
        raise TypeError(
            f"{name} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint holds only tensors, "
            "numbers, strings, bools, None, lists and dicts (convert it, e.g. str(path), float(x))"
        )


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (plain values, see :func:`check_plain`) to ``path`` atomically; the
    format tag :data:`CHECKPOINT_FORMAT` is added. Returns the path."""
    check_plain(state, "checkpoint")
    return atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is corrupted, truncated, holds objects a weights-only load
            refuses, or is not a scoresde checkpoint (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip, unpickling and EOF errors of many kinds
        message = str(err).strip()
        # torch names the global its weights-only unpickler refused; its other failures (unknown
        # opcodes, a bad zip, an early end) come from damaged files
        refused = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", message)
        if refused:
            raise CheckpointError(
                f"cannot read checkpoint {path}: it holds objects that a safe (weights-only) load refuses "
                f"({refused.group(1)}); a scoresde checkpoint holds only tensors, numbers, strings, lists and dicts, "
                "and nothing in the file was run"
            ) from err
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", message)
        reason = detail.group(1) if detail else message.splitlines()[0] if message else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: corrupted or truncated ({reason})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a scoresde checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
    return state


def checkpoint_mismatch(path: str | Path, err: Exception, target: str = "this model") -> ValueError:
    """The one-line error for a checkpoint at ``path`` whose entries do not fit ``target``,
    from the ``KeyError`` or ``RuntimeError`` that reading them raised: the first difference
    ``load_state_dict`` reports (and how many more), not its whole list."""
    if isinstance(err, KeyError):
        return ValueError(f"checkpoint {path} does not fit {target}: it has no {err} entry")
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1:
        lines = lines[1:]  # a heading, then one line per difference
    reason = lines[0] if len(lines[0]) <= 200 else lines[0][:200] + "..."
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return ValueError(f"checkpoint {path} does not fit {target}: {reason}{more}")
