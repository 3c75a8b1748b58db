r"""Tsitouras' 5(4) Runge–Kutta pair (Tsitouras 2011), run by torchdiffeq's adaptive solver.

torchdiffeq's fifth-order adaptive method is Dormand–Prince 5(4) (``dopri5``). Tsitouras' pair
costs the same (seven stages, the last one reused as the next step's first: six evaluations per
step) and has the same embedded order 4, but its coefficients minimise the fifth-order principal
truncation error instead of satisfying the usual simplifying assumptions. On the likelihood
benchmark it reaches 1e-3 nats/dim in fewer evaluations than dopri5 (``benchmarks/README.md``).
Its embedded error estimate is more cautious than dopri5's: at the same ``rtol``/``atol`` it takes
15-40 % more evaluations and returns a 7-20x smaller error, which is why it is an option
(``method="tsit5"``) and not the default. For the end state of a sampling run it is no better
than dopri5 on the same mixtures.

Only the tableau is ours: step-size control, dense output and the adjoint are torchdiffeq's
``RKAdaptiveStepsizeODESolver``, with the tableau registered in torchdiffeq's method table as
:data:`TORCHDIFFEQ_NAME`, a name torchdiffeq does not use: its main branch ships a ``"tsit5"`` of
its own since 2025, which must never run in place of this one (``method="tsit5"`` in this library
maps to :data:`TORCHDIFFEQ_NAME`, :mod:`scoresde.solvers.methods`).

Coefficients from Tsitouras (2011), Table 1, to 16 digits. The paper lists the error weights
:math:`e = b - \hat b`; the last one has the opposite sign (:math:`\hat b_7 = -1/66`, which makes
:math:`\sum\hat b = 1`). ``tests/test_solvers.py`` checks all 17 order conditions of order 5 for
:math:`b` and the 8 of order 4 for :math:`\hat b`. The dense-output weights at the midpoint come
from the paper's interpolant; torchdiffeq fits its quartic through them.
"""

from __future__ import annotations

import torch

C = (0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
"""Nodes of stages 2-7 (stage 1 is at 0)."""

A = (
    (0.161,),
    (-0.008480655492356992, 0.3354806554923570),
    (2.897153057105495, -6.359448489975075, 4.362295432869581),
    (5.32586482843926, -11.74888356406283, 7.495539342889836, -0.09249506636175525),
    (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.07158497328140100, -0.02826905039406838),
    (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774),
)
"""Stage coefficients of stages 2-7; the last row is :data:`B` (first same as last)."""

B = (*A[-1], 0.0)
"""Weights of the fifth-order solution."""

B_HAT = (
    0.09824077787029123, 0.010816434459657, 0.4720087724042376, 1.5237195812770048, -3.872426680888636,
    2.7827926300289607, -1.0 / 66.0,
)  # fmt: skip
"""Weights of the embedded fourth-order solution."""

INTERPOLANT = (
    (1.0, -2.763706197274826, 2.9132554618219126, -1.0530884977290216),
    (0.0, 0.1317, -0.2234, 0.1017),
    (0.0, 3.930296236894751, -5.941033872131505, 2.490627285651253),
    (0.0, -12.411077166933676, 30.33818863028232, -16.548102889244903),
    (0.0, 37.50931341651104, -88.1789048947664, 47.37952196281928),
    (0.0, -27.89652628919729, 65.09189467479368, -34.8706578614966),
    (0.0, 1.5, -4.0, 2.5),
)
r"""Dense output: stage :math:`i`'s weight at :math:`\theta\in[0, 1]` of the step is
:math:`\sum_j` ``INTERPOLANT[i][j]`` :math:`\theta^{j+1}` (it is :data:`B` at :math:`\theta = 1`)."""


def _solver_class() -> type:
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _ButcherTableau

    f64 = torch.float64

    class Tsit5Solver(RKAdaptiveStepsizeODESolver):
        order = 5
        tableau = _ButcherTableau(
            alpha=torch.tensor(C, dtype=f64),
            beta=[torch.tensor(row, dtype=f64) for row in A],
            c_sol=torch.tensor(B, dtype=f64),
            c_error=torch.tensor(B, dtype=f64) - torch.tensor(B_HAT, dtype=f64),
        )
        mid = torch.tensor([sum(w * 0.5 ** (j + 1) for j, w in enumerate(row)) for row in INTERPOLANT], dtype=f64)

    return Tsit5Solver


TORCHDIFFEQ_NAME = "scoresde_tsit5"
"""The name of this tableau in torchdiffeq's method table."""


def register() -> None:
    """Make :data:`TORCHDIFFEQ_NAME` a torchdiffeq method (idempotent), so ``torchdiffeq.odeint``
    and its adjoint accept it."""
    from torchdiffeq._impl.odeint import SOLVERS

    if TORCHDIFFEQ_NAME not in SOLVERS:
        SOLVERS[TORCHDIFFEQ_NAME] = _solver_class()
