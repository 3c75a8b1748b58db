"""Gaussian probability paths (scoresde/sde/paths.py): closed forms against the LinearSDE's generic
derivations, the checks at construction, and the paths running every solver."""

import math

import pytest
import torch

import scoresde as sd
from scoresde.sde.base import LinearSDE, _time_derivative
from scoresde.solvers.flow import ReferenceVPCoordinates, flow_coordinates
from scoresde.solvers.methods import is_ode_solver, names
from tests.conftest import overlapping_mixture_2d

PATHS = {"linear": sd.LinearPath, "cosine": sd.CosinePath}


@pytest.fixture(params=list(PATHS), ids=list(PATHS))
def path(request):
    return PATHS[request.param]()


def _times(path, n=7):
    return torch.linspace(path.t_min, path.T, n, dtype=torch.float64)


def test_closed_forms_match_generic_derivations(path):
    t = _times(path)
    a, s = path.alpha(t), path.sigma(t)
    torch.testing.assert_close(path.log_snr(t), 2 * (a / s).log(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(LinearSDE.inverse_log_snr(path, path.log_snr(t)), t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(path.inverse_log_snr(path.log_snr(t)), t, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(path.drift_coef(t), _time_derivative(path.log_alpha, t), rtol=1e-10, atol=0)
    torch.testing.assert_close(path.d_alpha(t), _time_derivative(path.alpha, t), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(path.d_sigma(t), _time_derivative(path.sigma, t), rtol=1e-12, atol=1e-14)
    # the moment ODE of a linear SDE: g^2 = d sigma^2/dt - 2 f sigma^2
    g2 = 2 * s * path.d_sigma(t) - 2 * path.drift_coef(t) * s.square()
    torch.testing.assert_close(path.diffusion(t).square(), g2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(LinearSDE.diffusion(path, t), path.diffusion(t), rtol=1e-9, atol=1e-12)


def test_end_values_and_prior(path):
    assert abs(path.T - (1 - 1e-3)) < 1e-15 and abs(path.t_min - 1e-3) < 1e-15
    assert path.alpha(0.0).item() == 1 and path.sigma(0.0).item() == 0
    a_T, s_T = path.alpha(path.T).item(), path.sigma(path.T).item()
    assert 0 < a_T < 2e-3 and s_T > 0.998
    assert path.prior_std == pytest.approx(math.hypot(a_T, s_T), rel=1e-12)
    # the log-SNR covers the reference VP SDE's range [-10.05, 13.8] (or nearly, cosine)
    assert path.log_snr(path.T).item() < -12 and path.log_snr(path.t_min).item() > 12.9


def test_generic_velocity_coefficients_of_any_linear_sde(any_sde):
    """Every LinearSDE is a Gaussian path: d_alpha = f alpha and d_sigma by autodiff."""
    t = torch.linspace(0.05, 0.95, 5, dtype=torch.float64)
    h = 1e-6
    for fn, d in ((any_sde.alpha, any_sde.d_alpha), (any_sde.sigma, any_sde.d_sigma)):
        torch.testing.assert_close(d(t), (fn(t + h) - fn(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_cosine_path_is_variance_preserving():
    p = sd.CosinePath()
    t = _times(p)
    torch.testing.assert_close(p.alpha(t).square() + p.sigma(t).square(), torch.ones_like(t))
    torch.testing.assert_close(p.diffusion(t).square(), -2 * p.drift_coef(t))  # beta = -2 f, as for VP


def test_adaptive_solves_run_on_the_reference_vp_clock(path):
    coords = flow_coordinates(path, lambda x, t: x, _times(path))
    assert isinstance(coords, ReferenceVPCoordinates)


def _paused(t):
    """Runs 0 -> 1 but stands still on [0.4, 0.6]: there the log-SNR is flat."""
    return torch.where(t < 0.4, t, torch.where(t < 0.6, torch.full_like(t, 0.4), t - 0.2)) / 0.8


class _User(sd.GaussianPath):
    def __init__(self, alpha, sigma, **kwargs):
        self._a, self._s = alpha, sigma
        super().__init__(**kwargs)

    def alpha(self, t):
        return self._a(t)

    def sigma(self, t):
        return self._s(t)


def test_a_user_path_gets_every_derived_function():
    p = _User(lambda t: (1 - t).square(), lambda t: t * (2 - t))  # alpha = (1-t)^2, sigma = 1 - (1-t)^2
    t = _times(p)
    torch.testing.assert_close(p.d_alpha(t), -2 * (1 - t))
    torch.testing.assert_close(p.d_sigma(t), 2 * (1 - t))
    torch.testing.assert_close(p.inverse_log_snr(p.log_snr(t)), t, rtol=1e-9, atol=1e-12)  # bisection


@pytest.mark.parametrize(
    "alpha, sigma, match",
    [
        (lambda t: 0.5 * (1 - t), lambda t: t, r"alpha\(0\)=0\.5"),
        (lambda t: 1 - t, lambda t: 0.9 * t, r"sigma\(1\)=0\.9"),
        (lambda t: 1 - t + 0.1 * torch.sin(6 * math.pi * t), lambda t: t, "alpha increases between t="),
        (lambda t: 1 - t, lambda t: t - 0.1 * torch.sin(6 * math.pi * t), "sigma decreases between t="),
        (lambda t: 1 - _paused(t), _paused, "alpha/sigma must strictly decrease"),
    ],
)
def test_bad_paths_are_refused_naming_the_value(alpha, sigma, match):
    with pytest.raises(ValueError, match=match):
        _User(alpha, sigma)


def test_a_wrong_closed_form_derivative_is_refused():
    class Wrong(sd.LinearPath):
        def d_sigma(self, t):
            return 2 * torch.ones_like(t)

    with pytest.raises(ValueError, match="d_sigma disagrees with the derivative of sigma"):
        Wrong()


def test_the_singular_end_is_refused():
    with pytest.raises(ValueError, match=r"needs T < 1 .* got T=1"):
        sd.LinearPath(T=1)


def test_point_mass_flows_straight_one_euler_step_is_exact():
    """For data at one point the linear path's marginal velocity is constant along each path (the
    paths are straight lines at constant speed): one Euler step from T lands on the exact flow."""
    path = sd.LinearPath()
    gmm = sd.GaussianMixture(torch.tensor([[0.7, -1.2]]), torch.zeros(1, 2))
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one = sd.sample_ode(gmm.score_fn(path), path, x_init=z, method="euler", num_steps=1)
    # exact: x_t = (1 - t) mu + t eps with eps = (z - alpha_T mu) / sigma_T
    a_T, s_T, t0 = 1 - path.T, path.T, path.t_min
    exact = (1 - t0) * gmm.means + t0 * (z - a_T * gmm.means) / s_T
    torch.testing.assert_close(one.x, exact, rtol=1e-12, atol=1e-12)
    assert one.nfe == 1


def test_every_ode_solver_runs_on_a_path_against_the_exact_flow(path):
    """Each ODE method of the table, on the linear and cosine paths with the exact score, converges
    to the same adaptive reference (tight dopri5), one sample and a batch alike (no step past T)."""
    gmm = overlapping_mixture_2d()
    score = gmm.score_fn(path)
    z = path.prior_sample((32, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sd.sample_ode(score, path, x_init=z, method="dopri5", rtol=1e-9, atol=1e-9).x
    single = sd.sample_ode(score, path, x_init=z[:1], method="dopri5", rtol=1e-7, atol=1e-7).x
    torch.testing.assert_close(single, ref[:1], rtol=0, atol=1e-5)
    for method in names(is_ode_solver):
        if method in ("dopri5", "implicit_adams", "fixed_adams"):  # implicit: functional iteration
            continue
        kwargs = {"rtol": 1e-6, "atol": 1e-6} if sd.solvers.METHODS[method].adaptive else {"num_steps": 200}
        x = sd.sample_ode(score, path, x_init=z, method=method, **kwargs).x
        err = (x - ref).norm(dim=1).median().item()
        assert err < 0.02, (method, err)


def test_a_grid_tuned_on_a_path_beats_the_uniform_grid():
    path = sd.LinearPath()
    gmm = overlapping_mixture_2d()
    score = gmm.score_fn(path)
    g = torch.Generator().manual_seed(2)
    pilot = path.prior_sample((64, 2), generator=g, dtype=torch.float64)
    z = path.prior_sample((256, 2), generator=g, dtype=torch.float64)
    ref = sd.sample_ode(score, path, x_init=z, method="dopri5", rtol=1e-9, atol=1e-9).x
    grid = sd.tune_time_grid(score, path, pilot, 5, method="dpmpp_2m")
    tuned = sd.sample_ode(score, path, x_init=z, method="dpmpp_2m", timesteps=grid).x
    uniform = sd.sample_ode(score, path, x_init=z, method="dpmpp_2m", num_steps=5, grid="uniform").x
    assert (tuned - ref).norm(dim=1).mean() < (uniform - ref).norm(dim=1).mean()
