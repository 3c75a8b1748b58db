"""Velocity models (scoresde/velocity.py) and the oracle's marginal velocity: exact conversions, the ODE a
flow model makes every solver integrate, its likelihood and samples, and rectified flow = DDIM."""

import math

import pytest
import torch

import scoresde as sd
from scoresde import velocity as vel
from tests.conftest import mixture_16d, overlapping_mixture_2d

SDES = {
    "linear": sd.LinearPath,
    "cosine": sd.CosinePath,
    "vp": sd.VPSDE,
    "subvp": sd.SubVPSDE,
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=20.0),
}


@pytest.fixture(params=list(SDES), ids=list(SDES))
def path(request):
    return SDES[request.param]()


def _point(path, shape=(6, 2), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    out = torch.randn(shape, generator=g, dtype=dtype)
    t = path.t_min + (path.T - path.t_min) * torch.rand(shape[0], generator=g, dtype=dtype)
    return x, out, t


def test_conversions_are_exact_inverses(path):
    x, v, t = _point(path)
    s = vel.velocity_to_score(v, x, t, path)
    eps, x0 = vel.velocity_to_eps(v, x, t, path), vel.velocity_to_x0(v, x, t, path)
    a, sig, da, ds = (fn(t)[:, None] for fn in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
    # (x0, eps) reproduce the state and the velocity: x = a x0 + s eps, v = a' x0 + s' eps; eps = -sigma s
    torch.testing.assert_close(a * x0 + sig * eps, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(da * x0 + ds * eps, v, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps, -sig * s, rtol=1e-10, atol=1e-10)
    for back in (vel.score_to_velocity(s, x, t, path), vel.eps_to_velocity(eps, x, t, path),
                 vel.x0_to_velocity(x0, x, t, path)):  # fmt: skip
        torch.testing.assert_close(back, v, rtol=1e-9, atol=1e-9)


def test_oracle_velocity_is_the_probability_flow_of_the_exact_score(path):
    gmm = overlapping_mixture_2d()
    x, _, t = _point(path, (64, 2))
    v = gmm.velocity_fn(path)(x, t)
    flow = path.probability_flow(gmm.score_fn(path)).velocity(x, t)
    torch.testing.assert_close(v, flow, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(vel.velocity_to_x0(v, x, t, path), gmm.denoiser_fn(path)(x, t), rtol=1e-9, atol=1e-9)


def test_oracle_velocity_variance_is_the_posterior_variance_by_tweedie(path):
    """tr Cov[x0 | x_t] = (sigma^2/alpha^2)(d + sigma^2 tr Hess log p_t) (second-order Tweedie)."""
    gmm = overlapping_mixture_2d()
    x, _, t = _point(path, (8, 2))
    log_p = gmm.log_prob_fn(path)
    hess = torch.autograd.functional.hessian
    hess_tr = torch.stack([hess(lambda y, i=i: log_p(y[None], t[i : i + 1])[0], x[i]).trace() for i in range(len(x))])
    a, s, da, ds = path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)
    trace = (s / a).square() * (2 + s.square() * hess_tr)
    expected = ((a * ds - s * da) / s).square() * trace
    torch.testing.assert_close(gmm.velocity_variance_fn(path)(x, t), expected, rtol=1e-7, atol=1e-10)


def test_velocity_is_finite_at_the_singular_end():
    """At alpha = 0 (t = 1) the oracle's velocity is E[eps | x] - E[x0] = x - mean, and a velocity
    converts to a finite score (no division by alpha)."""
    gmm = overlapping_mixture_2d()
    p = sd.LinearPath()
    x = torch.randn(5, 2, dtype=torch.float64)
    mean, cov = gmm._posterior(x, torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(mean, gmm.mean.expand(5, 2))
    torch.testing.assert_close(cov, gmm.covariance.trace().expand(5))
    s = vel.velocity_to_score(x - gmm.mean, x, torch.tensor(p.T, dtype=torch.float64), p)
    assert torch.isfinite(s).all()


def _net(fn):
    class Net(torch.nn.Module):
        def forward(self, x, t):
            return fn(x, t)

    return Net()


@pytest.mark.parametrize("shape", [(4, 2), (3, 1, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_ode_every_solver_integrates_is_dx_dt_equals_v(path, shape, dtype):
    """A FlowVelocity as score_fn: the probability-flow velocity f x - g^2 s / 2 is the network's v
    (round-off only, also next to the singular end), shapes and dtypes kept."""
    x, _, t = _point(path, shape, dtype)
    net = _net(lambda x, t: torch.sin(3 * x) * (1 + t.to(x.dtype)).reshape(-1, *[1] * (x.ndim - 1)))
    model = sd.FlowVelocity(net, path)
    for tt in (t, torch.full_like(t, path.T), torch.full_like(t, path.t_min)):
        ode = path.probability_flow(model).velocity(x, tt)
        assert ode.shape == x.shape and ode.dtype == dtype
        tol = 1e-9 if dtype == torch.float64 else 5e-3  # float32: f x and g^2 s / 2 cancel near T
        torch.testing.assert_close(ode, net(x, tt), rtol=tol, atol=tol)
        torch.testing.assert_close(model.velocity(x, tt), net(x, tt), rtol=0, atol=0)


def test_one_euler_step_of_sample_ode_is_x_plus_dt_v():
    path = sd.LinearPath()
    net = _net(lambda x, t: x.flip(1) - t[:, None] * x)
    model = sd.FlowVelocity(net, path)
    z = torch.randn(5, 2, dtype=torch.float64)
    one = sd.sample_ode(model, path, x_init=z, method="euler", num_steps=1)
    T = torch.full((5,), path.T, dtype=torch.float64)
    torch.testing.assert_close(one.x, z + (path.t_min - path.T) * net(z, T), rtol=1e-12, atol=1e-12)


def test_exact_velocity_likelihood_matches_the_exact_density():
    """The ODE likelihood of a flow model holding the exact velocity, through log_likelihood's own
    solve and divergence of v, against log p_{t_min}; the prior replaced by the exact p_T so the
    solver alone is measured."""
    for path in (sd.LinearPath(), sd.CosinePath()):
        for gmm in (overlapping_mixture_2d(), mixture_16d()):
            model = sd.FlowVelocity(_net(gmm.velocity_fn(path)), path)
            x = gmm.sample(24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            p_T = gmm.marginal(path, path.T).log_prob
            ll = sd.log_likelihood(model, path, x, divergence="exact", rtol=1e-7, atol=1e-7, prior_log_prob_fn=p_T)
            exact = gmm.log_prob_fn(path)(x, path.t_min)
            err = (ll.log_prob - exact).abs().max().item() / gmm.dim
            assert err < 1e-4, (path, gmm.dim, err)


def test_exact_flow_samples_reproduce_the_mixture():
    """Samples of the exact velocity's flow from the prior: mean and covariance within 4 standard
    errors of the mixture's (the prior's O(1e-3) mismatch is far below them)."""
    path, gmm, n = sd.LinearPath(), overlapping_mixture_2d(), 4000
    model = sd.FlowVelocity(_net(gmm.velocity_fn(path)), path)
    x = sd.sample_ode(model, path, (n, 2), method="dopri5", rtol=1e-5, atol=1e-5, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(4)).x  # fmt: skip
    mean_se = (gmm.covariance.diagonal() / n).sqrt()
    assert ((x.mean(0) - gmm.mean).abs() < 4 * mean_se).all()
    cov = torch.cov(x.T)
    ref = gmm.sample(200_000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    fourth = ((ref - gmm.mean)[:, :, None] * (ref - gmm.mean)[:, None, :]).var(0)  # Var of the products
    assert ((cov - gmm.covariance).abs() < 4 * (fourth / n).sqrt()).all()


def test_rectified_flow_euler_is_ddim_under_the_time_change():
    """DDIM on the VP SDE equals Euler on the linear path with y = x/(alpha + sigma) and
    tau = sigma/(alpha + sigma), step for step, with each SDE's exact score (round-off only)."""
    vp, lin, gmm = sd.VPSDE(), sd.LinearPath(T=1 - 1e-4, t_min=1e-5), overlapping_mixture_2d()
    grid = torch.linspace(1.0, 1e-3, 13, dtype=torch.float64)
    a, s = vp.alpha(grid), vp.sigma(grid)
    tau = s / (a + s)
    z = vp.prior_sample((64, 2), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ddim = sd.sample_ode(gmm.score_fn(vp), vp, x_init=z, method="ddim", timesteps=grid, save_at="grid")
    euler = sd.sample_ode(gmm.score_fn(lin), lin, x_init=z / (a[0] + s[0]), method="euler", timesteps=tau,
                          save_at="grid")  # fmt: skip
    scale = (a + s)[:, None, None]
    torch.testing.assert_close(euler.trajectory.x * scale, ddim.trajectory.x, rtol=1e-10, atol=1e-10)
    assert euler.nfe == ddim.nfe == 12


def test_velocity_network_of_the_wrong_shape_is_named():
    model = sd.FlowVelocity(_net(lambda x, t: x[:, :1]), sd.LinearPath())
    with pytest.raises(ValueError, match=r"velocity network returned shape \(3, 1\) for x of shape \(3, 2\)"):
        model(torch.zeros(3, 2), 0.5)
    with pytest.raises(ValueError, match="output must be one of"):
        sd.FlowVelocity(_net(lambda x, t: x), sd.LinearPath())(torch.zeros(3, 2), 0.5, output="eps")
    with pytest.raises(ValueError, match=r"v has shape \(3, 1\) but x has shape \(3, 2\)"):
        vel.velocity_to_score(torch.zeros(3, 1), torch.zeros(3, 2), 0.5, sd.LinearPath())
    with pytest.raises(TypeError, match="need a LinearSDE"):
        vel.velocity_to_x0(torch.zeros(3, 2), torch.zeros(3, 2), 0.5, object())
    assert math.isfinite(model.sde.T)
