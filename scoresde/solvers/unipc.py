r"""UniPC: a unified predictor–corrector for the probability-flow ODE (Zhao et al. 2023,
"UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models").

In the half log-SNR :math:`\ell = \log(\alpha/\sigma)` on the data prediction, each step

1. evaluates :math:`m_t = \hat x_0(\tilde x_t, t)` at the *predicted* state (the one NFE of the step);
2. **UniC** corrects the previous step with it: the previous step recomputed from the corrected
   state :math:`x_{t'}` with the polynomial through :math:`m_t` (node :math:`u = 1`) and the
   predictions the predictor used, which raises that step's order by one;
3. **UniP** predicts :math:`\tilde x_s` from the corrected :math:`x_t` with the polynomial through
   :math:`m_t` and up to ``p - 1`` earlier predictions (an exponential Adams–Bashforth step).

Both use the exact quadrature of :mod:`scoresde.solvers.exponential`, the solution of UniPC's
order conditions :math:`R_p a_p = g_p(h)/B(h)` (with an exact solve, :math:`B(h)` cancels).
Zhao et al. instead fix :math:`a_1 = 1/2` for the one-difference corrector and expose the choice
of :math:`B(h)`: ``variant="bh1"`` (:math:`B = h`) or ``"bh2"`` (:math:`B = 1 - e^{-h}`), both
order-preserving; ``"exact"`` (the default) keeps the exact weight there too.

The corrector reuses the evaluation the next predictor needs, so the cost stays one NFE per
step; the last step is not corrected (it would need one more evaluation at ``t_end``; the
optional final Tweedie step of ``sample_ode`` evaluates there instead). Start-up steps use the
predictions available, the corrector lifting them by one order. Order ``p + 1`` with a
``p``-point predictor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoresde.sde.base import SDE, ScoreFn
from scoresde.solvers._common import StepContext, coef, predict_x0
from scoresde.solvers.exponential import exponential_weights
from scoresde.solvers.ode import LogSNRStepper

UNIPC_VARIANTS = ("exact", "bh1", "bh2")


class UniPC(LogSNRStepper):
    r"""UniPC with a ``predictor_order``-point UniP and the UniC corrector; global order
    ``predictor_order + 1``, one NFE per step. ``ctx.history`` holds
    ``(t, ell, m, x_corrected)`` for the last ``predictor_order`` evaluations."""

    predictor_order: int

    def __init__(self, sde: SDE, score_fn: ScoreFn, *, variant: str = "exact") -> None:
        super().__init__(sde, score_fn)
        if variant not in UNIPC_VARIANTS:
            raise ValueError(f"variant must be one of {UNIPC_VARIANTS}, got {variant!r}")
        self.variant = variant

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.order = cls.predictor_order + 1  # the corrector lifts the predictor's order by one
        cls.history_steps = cls.predictor_order  # the predictor's nodes and the corrected step

    def step(self, x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        ell_t, ell_s = self.half_log_snr(t), self.half_log_snr(s)
        m_t = predict_x0(self.sde, self.score_fn, x, t)
        if ctx.history:
            x = self._correct(t, ell_t, m_t, ctx.history)
        ctx.history.append((t, ell_t, m_t, x))
        del ctx.history[: -self.predictor_order]
        ells = torch.stack([e for _, e, _, _ in reversed(ctx.history)])  # newest first: ell_t, then older
        preds = [m for _, _, m, _ in reversed(ctx.history)]
        h = ell_s - ell_t
        weights = exponential_weights(h, (ells - ell_t) / h)
        return self._advance(x, t, s, weights, preds)

    def _correct(self, t: Tensor, ell_t: Tensor, m_t: Tensor, history: list) -> Tensor:
        """UniC: redo the step from the last corrected state ``x_prev`` at ``t_prev`` to ``t``
        with ``m_t`` added as the node ``u = 1``."""
        t_prev, ell_prev, _, x_prev = history[-1]
        ells = torch.stack([ell_t, *(e for _, e, _, _ in reversed(history))])
        preds = [m_t, *(m for _, _, m, _ in reversed(history))]
        h = ell_t - ell_prev
        weights = exponential_weights(h, (ells - ell_prev) / h)
        if len(preds) == 2 and self.variant != "exact":
            weights = self._b_h_weights(h)
        return self._advance(x_prev, t_prev, t, weights, preds)

    def _b_h_weights(self, h: Tensor) -> Tensor:
        r"""Zhao et al.'s one-difference corrector :math:`(1 - e^{-h}) m_{prev} + \tfrac12 B(h)(m_t - m_{prev})`
        as weights on ``(m_t, m_prev)``."""
        phi = -torch.expm1(-h)
        b_h = h if self.variant == "bh1" else phi
        return torch.stack([0.5 * b_h, phi - 0.5 * b_h])

    def _advance(self, x: Tensor, t: Tensor, s: Tensor, weights: Tensor, preds: list[Tensor]) -> Tensor:
        sde = self.sde
        sigma_ratio = (sde.sigma(s).log() - sde.sigma(t).log()).exp()
        data = sum(coef(w, x) * m for w, m in zip(weights.unbind(), preds, strict=True))
        return coef(sigma_ratio, x) * x + coef(sde.alpha(s), x) * data


class UniPC2(UniPC):
    """UniPC-2 (Zhao et al. 2023): 2-point predictor (DPM-Solver++(2M)-like) + UniC. Order 3."""

    predictor_order = 2


class UniPC3(UniPC):
    """UniPC-3 (Zhao et al. 2023): 3-point predictor + UniC. Order 4."""

    predictor_order = 3
