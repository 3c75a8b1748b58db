"""The reference VP coordinates of the adaptive probability-flow solves: the clock inverts, the
reference VP SDE is left as it is, the field is the chain rule of dx/dt, and a solve in these
coordinates lands where the solve in the SDE's own time does."""

import pytest
import torch

import scoresde as sd
from scoresde.solvers import METHODS, CountingScore, FlowField, odeint
from scoresde.solvers.flow import (
    FlowCoordinates,
    ReferenceVPCoordinates,
    clock_of_log_snr,
    flow_coordinates,
    log_snr_of_clock,
)
from tests.conftest import PlainOU, all_sdes, mixture

LINEAR_SDES = [*all_sdes(), sd.VPSDE(beta_min=1.0, beta_max=1.0, T=8.0)]
LINEAR_IDS = ["vp", "vp-cosine", "subvp", "ve", "ve-small", "vp-constant"]


def coordinates(sde: sd.SDE) -> FlowCoordinates:
    span = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    return flow_coordinates(sde, CountingScore(mixture(2).score_fn(sde)), span)


def test_clock_and_log_snr_invert_each_other():
    lam = torch.linspace(-15.0, 25.0, 81, dtype=torch.float64)
    u = clock_of_log_snr(lam)
    assert (u[1:] < u[:-1]).all() and (u > 0).all()  # time runs against the log-SNR
    torch.testing.assert_close(log_snr_of_clock(u), lam, rtol=1e-12, atol=1e-10)


def test_reference_vp_sde_keeps_its_time_state_and_velocity():
    sde = sd.VPSDE()
    coords = coordinates(sde)
    t = torch.linspace(1e-5, 1.0, 11, dtype=torch.float64)
    torch.testing.assert_close(coords.clock(t), t, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(coords.scale(t), torch.ones_like(t), rtol=1e-12, atol=0.0)
    x = mixture(2).sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    velocity = FlowField(sde, CountingScore(mixture(2).score_fn(sde)))
    for u in (1e-3, 0.3, 0.9):
        time = torch.tensor(u, dtype=torch.float64)
        torch.testing.assert_close(coords.field(time, x), velocity(time, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", LINEAR_SDES, ids=LINEAR_IDS)
def test_field_is_the_chain_rule_of_the_sde_velocity(sde):
    # dw/du = (v(x, t) - s'(t) w) / s(t) * dt/du with x = s w, derivatives by autodiff
    coords = coordinates(sde)
    assert isinstance(coords, ReferenceVPCoordinates)
    velocity = FlowField(sde, CountingScore(mixture(2).score_fn(sde)))
    w = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u_end = coords.clock(torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
    for frac in (0.1, 0.5, 0.9):
        u = u_end[0] + frac * (u_end[1] - u_end[0])

        def time_of(u):
            return sde.inverse_log_snr(log_snr_of_clock(u))

        t, dt_du = torch.func.jvp(time_of, (u,), (torch.ones_like(u),))
        s, ds_dt = torch.func.jvp(coords.scale, (t,), (torch.ones_like(t),))
        expected = (velocity(t, s * w) - ds_dt * w) / s * dt_du
        torch.testing.assert_close(coords.field(u, w), expected, rtol=1e-8, atol=1e-10)


class ConstantRateLinear(sd.LinearSDE):
    """A user's linear SDE from log_alpha and sigma alone (t(lambda) by bisection)."""

    def log_alpha(self, t):
        return -0.5 * t

    def sigma(self, t):
        return (-torch.expm1(-t)).sqrt()


@pytest.mark.parametrize("sde", [PlainOU(), ConstantRateLinear()], ids=["no-marginals", "no-inverse-log-snr"])
def test_sdes_without_a_closed_form_clock_keep_their_own_time(sde):
    span = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    coords = flow_coordinates(sde, CountingScore(lambda x, t: -x), span)  # no mixture score without marginals
    assert type(coords) is FlowCoordinates
    t = torch.tensor([0.1, 0.7], dtype=torch.float64)
    assert torch.equal(coords.clock(t), t) and torch.equal(coords.scale(t), torch.ones_like(t))


@pytest.mark.parametrize("sde", [sd.VESDE(), sd.SubVPSDE(), sd.VPSDE(schedule="cosine")], ids=["ve", "subvp", "cosine"])
def test_solve_lands_where_the_solve_in_sde_time_does(sde):
    # the same ODE in other coordinates: both converged solutions agree to the tolerance
    gmm = mixture(2)
    x = gmm.sample(32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tol = 1e-9
    z = sd.encode(gmm.score_fn(sde), sde, x, rtol=tol, atol=tol).z
    span = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    velocity = FlowField(sde, CountingScore(gmm.score_fn(sde)))
    z_own_time = odeint(velocity, x, span, method=METHODS["dopri5"], rtol=tol, atol=tol)[-1]
    assert ((z - z_own_time).abs() / (1 + z_own_time.abs())).max() < 1e-6
    back = sd.sample_ode(gmm.score_fn(sde), sde, x_init=z, rtol=tol, atol=tol, t_end=sde.t_min).x
    assert (back - x).abs().max() < 1e-6
