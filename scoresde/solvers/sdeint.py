r"""Adapter onto torchsde's ``sdeint`` for the reverse-time SDE (Li et al. 2020).

torchsde integrates forward in time on a 2-D state, so the reverse SDE from ``t_start`` down
to ``t_end`` is integrated in :math:`u = t_{start} - t` on ``x`` flattened to
``(batch, d)``:

.. math:: dy = -[f(y, t) - g(t)^2 s(y, t)]\,du + g(t)\,dW_u, \qquad t = t_{start} - u,

with diagonal noise ``g(t) 1``. The noise is additive (``g`` does not depend on ``x``), so the
Itô and Stratonovich forms coincide and every method below applies. The Brownian motion is an
explicit :class:`torchsde.BrownianInterval` whose entropy is drawn from the caller's torch
generator (torchsde would otherwise draw it from numpy), so a seeded generator reproduces the
samples.

=================  ==============  =====================================================
method             strong order    notes
=================  ==============  =====================================================
``euler``          1.0             additive noise (0.5 in general)
``milstein``       1.0             equals Euler–Maruyama for additive noise
``srk``            1.5             Rößler's SRK; needs space-time Lévy area (set here)
``reversible_heun`` 1.0            Kidger et al. 2021; Stratonovich, algebraically reversible
=================  ==============  =====================================================
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoresde._tensor import append_dims, as_time
from scoresde.sde.base import SDE, ScoreFn
from scoresde.solvers._common import FirstNonFinite

# a hair added to dt: torchsde 0.2.6 was seen to hang on dt = (1 - 1e-5) / 100 in float64
_DT_STRETCH = 1 + 1e-9


class _ReverseTimeSDE(torch.nn.Module):
    """torchsde's ``f(u, y)``, ``g(u, y)`` for the reverse SDE in ``u = t_start - t``."""

    noise_type = "diagonal"

    def __init__(
        self, sde: SDE, score_fn: ScoreFn, t_start: float, x: Tensor, sde_type: str, what: str
    ) -> None:
        super().__init__()
        self.sde = sde
        self.reverse = sde.reverse(score_fn)
        self.t_start = t_start
        self.event_shape = tuple(x.shape[1:])
        self.sde_type = sde_type
        self.drift_calls = 0
        self.first_bad = FirstNonFinite()
        self.what = what

    def _time(self, u: Tensor, y: Tensor) -> Tensor:
        return as_time(self.t_start - u, y)

    def f(self, u: Tensor, y: Tensor) -> Tensor:
        self.drift_calls += 1
        x = y.reshape(y.shape[0], *self.event_shape)
        t = self._time(u, y)
        out = -self.reverse.drift(x, t).reshape(y.shape)
        self.first_bad.record(out, self.drift_calls, t[0])
        if self.drift_calls % self.first_bad.CHECK_EVERY == 0:  # stop a NaN run soon, one sync per check
            self.first_bad.raise_if_any(self.what, unit="drift evaluation")
        return out

    def g(self, u: Tensor, y: Tensor) -> Tensor:
        # expand_as would share memory across the batch; torchsde may write into g for milstein
        return append_dims(self.sde.diffusion(self._time(u, y)), 2).to(y.dtype) * torch.ones_like(y)


def sdeint_reverse_sde(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    times: Tensor,
    *,
    method: str,
    num_steps: int,
    generator: torch.Generator | None,
) -> Tensor:
    """Integrate the reverse SDE from ``times[0]`` down to ``times[-1]`` in ``num_steps`` equal
    steps and return the states at the descending float64 ``times``, ``(len(times), *x.shape)``
    (torchsde interpolates linearly between its steps for times between them)."""
    import torchsde

    batch, event_shape = x.shape[0], tuple(x.shape[1:])
    t_start = float(times[0])
    what = f"the reverse-SDE drift (torchsde {method})"
    func = _ReverseTimeSDE(sde, score_fn, t_start, x, "stratonovich" if method == "reversible_heun" else "ito", what)
    # in the state's dtype, with the Brownian interval's end read back from it: a float64 end
    # next to float32 times makes torchsde warn that it queries past the interval
    u = (t_start - times).to(device=x.device, dtype=x.dtype)
    y0 = x.reshape(batch, -1)
    entropy = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device if generator else "cpu"))
    brownian = torchsde.BrownianInterval(
        t0=0.0,
        t1=float(u[-1]),
        size=y0.shape,
        dtype=x.dtype,
        device=x.device,
        entropy=entropy,
        levy_area_approximation="space-time" if method == "srk" else "none",
    )
    dt = float(u[-1]) / num_steps * _DT_STRETCH
    ys = torchsde.sdeint(func, y0, u, bm=brownian, method=method, dt=dt)
    func.first_bad.raise_if_any(what, unit="drift evaluation")
    return ys.reshape(len(times), batch, *event_shape)
