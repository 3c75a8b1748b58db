"""Quality measures that need no downloads."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def relative_score_error(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    reference_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: Tensor,
) -> Tensor:
    r""":math:`\mathbb E\|s - s^*\|^2 / \mathbb E\|s^*\|^2` over the batch ``x`` at times ``t`` ``(batch,)``:
    the relative squared L2 error of ``score_fn`` against ``reference_fn`` (a scalar tensor)."""
    with torch.no_grad():
        ref = reference_fn(x, t)
        err = (score_fn(x, t) - ref).flatten(1).square().sum(1)
        return err.mean() / ref.flatten(1).square().sum(1).mean()
