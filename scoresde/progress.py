"""Progress bars: tqdm when installed and asked for, a silent stand-in otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def progress_bar(*, total: int, enabled: bool, desc: str = "") -> Iterator[Any]:
    """A tqdm bar over ``total`` steps if ``enabled`` (and tqdm imports), else a no-op object."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            enabled = False
    if not enabled:
        yield _Silent()
        return
    with tqdm(total=total, desc=desc, dynamic_ncols=True) as bar:
        yield bar
