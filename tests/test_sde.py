import math

import pytest
import torch
import torchsde

import scoresde as sd
from scoresde._tensor import append_dims

from .conftest import PlainOU, mixture


def interior_times(sde, n=7, dtype=torch.float64):
    return torch.linspace(0.02, 1.0, n, dtype=dtype) * sde.T


def d_dt(fn, t):
    t = t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(t).sum(), t)
    return grad


# --- the linear-SDE invariants -----------------------------------------------------------


def test_moment_odes(sde):
    """m = alpha x0 and v = sigma^2 solve dm/dt = f m and dv/dt = 2 f v + g^2."""
    t = interior_times(sde)
    f, g = sde.drift_coef(t), sde.diffusion(t)
    torch.testing.assert_close(d_dt(sde.log_alpha, t), f, rtol=1e-9, atol=1e-12)
    dvar = d_dt(lambda s: sde.sigma(s).square(), t)
    torch.testing.assert_close(dvar, 2 * f * sde.sigma(t).square() + g.square(), rtol=1e-9, atol=1e-12)


def test_log_snr_is_consistent_and_decreasing(sde):
    t = interior_times(sde, 50)
    lam = sde.log_snr(t)
    torch.testing.assert_close(lam, 2 * (sde.log_alpha(t) - sde.sigma(t).log()), rtol=1e-10, atol=1e-10)
    assert (lam.diff() < 0).all()


def test_inverse_log_snr_closed_form_matches_bisection(sde):
    t = interior_times(sde, 20)
    lam = sde.log_snr(t)
    torch.testing.assert_close(sde.inverse_log_snr(lam), t, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sd.LinearSDE.inverse_log_snr(sde, lam), t, rtol=1e-9, atol=1e-12)


def test_closed_form_coefficients_match_autodiff_defaults(sde):
    t = interior_times(sde)
    torch.testing.assert_close(sd.LinearSDE.drift_coef(sde, t), sde.drift_coef(t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sd.LinearSDE.diffusion(sde, t), sde.diffusion(t), rtol=1e-8, atol=1e-12)


def test_transitions_compose(sde):
    """Chaining the kernels s -> u -> t gives the kernel s -> t (mean scale and variance)."""
    s, u, t = (torch.tensor([v], dtype=torch.float64) * sde.T for v in (0.1, 0.35, 0.8))
    a_su, v_su = sde.transition_coefs(s, u)
    a_ut, v_ut = sde.transition_coefs(u, t)
    a_st, v_st = sde.transition_coefs(s, t)
    torch.testing.assert_close(a_su * a_ut, a_st, rtol=1e-12, atol=0)
    torch.testing.assert_close((a_ut * v_su).square() + v_ut.square(), v_st.square(), rtol=1e-10, atol=0)


def test_transition_from_zero_is_the_marginal(sde):
    x0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = interior_times(sde, 5)
    torch.testing.assert_close(sde.transition(x0, 0.0, t), sde.marginal(x0, t))


def test_discretize_is_the_exact_kernel(sde):
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t, dt = 0.3 * sde.T, 0.01
    f, g = sde.discretize(x, t, dt)
    mean, std = sde.transition(x, t, t + dt)
    torch.testing.assert_close(x + f, mean)
    torch.testing.assert_close(g, std)


def test_marginal_at_T_matches_prior(sde):
    """KL(p_T || prior) per dimension is small for standardised data."""
    gmm = mixture(4)
    cov0 = gmm.covariance
    scale = cov0.diagonal().sqrt()
    mean0 = (gmm.mean - gmm.mean) / scale
    cov0 = cov0 / torch.outer(scale, scale)
    t = torch.tensor(sde.T, dtype=torch.float64)
    a, s = sde.alpha(t), sde.sigma(t)
    cov_t = a**2 * cov0 + s**2 * torch.eye(4, dtype=torch.float64)
    p = sde.prior_std**2
    kl = 0.5 * (torch.trace(cov_t) / p + (a * mean0).square().sum() / p - 4 + 4 * math.log(p) - torch.logdet(cov_t))
    assert kl / 4 < 1e-3


def test_sigma_vanishes_smoothly_in_float32(sde):
    """Stable forms: float32 sigma(t) tracks the float64 value down to t = 1e-7."""
    t64 = torch.logspace(-7, 0, 30, dtype=torch.float64) * sde.T
    ref = sde.sigma(t64)
    got = sde.sigma(t64.float())
    assert (got > 0).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=0)
    assert sde.sigma(torch.zeros(1)).item() == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(sigma_max=5.0)], ids=["vp", "subvp", "ve"])
def test_forward_simulation_matches_closed_form(sde):
    """torchsde Euler-Maruyama paths from a fixed x0 reproduce the marginal mean and std
    (each within 4 Monte-Carlo standard errors)."""
    n, x0 = 4000, torch.tensor([1.5, -0.5], dtype=torch.float64)

    class Forward(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return sde.drift(y, t)

        def g(self, t, y):
            return sde.diffusion(t).expand_as(y)

    ts = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    y0 = x0.expand(n, 2).contiguous()
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(n, 2), dtype=torch.float64, entropy=123)
    with torch.no_grad():
        ys = torchsde.sdeint(Forward(), y0, ts, bm=bm, method="euler", dt=1e-3 * (1 + 1e-9))
    for k in (1, 2):
        mean, std = sde.marginal(x0[None], ts[k].item())
        sample = ys[k]
        se_mean = std / math.sqrt(n)
        assert ((sample.mean(0) - mean[0]).abs() < 4 * se_mean).all()
        var, se_var = std.square(), std.square() * math.sqrt(2 / (n - 1))
        assert ((sample.var(0) - var).abs() < 4 * se_var).all()


def test_fokker_planck_holds_for_the_exact_mixture(sde):
    r"""The oracle's p_t solves the Fokker-Planck equation of the SDE:
    d/dt log p = -d f - f x . grad log p + g^2/2 (lap log p + |grad log p|^2)."""
    gmm = mixture(2)
    log_p, score_fn = gmm.log_prob_fn(sde), gmm.score_fn(sde)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64) * sde.T
    dlogp_dt = d_dt(lambda s: log_p(x, s), t)
    xg = x.clone().requires_grad_(True)
    s = score_fn(xg, t)
    lap = sum(torch.autograd.grad(s[:, i].sum(), xg, retain_graph=True)[0][:, i] for i in range(2))
    f, g2 = sde.drift_coef(t), sde.diffusion(t).square()
    rhs = -2 * f - f * (x * s).sum(1) + 0.5 * g2 * (lap + s.square().sum(1))
    torch.testing.assert_close(dlogp_dt, rhs.detach(), rtol=1e-7, atol=1e-8)


# --- reverse-time objects ------------------------------------------------------------------


def test_reverse_and_probability_flow_drifts(sde):
    gmm = mixture(2)
    score = gmm.score_fn(sde)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((5,), 0.4 * sde.T, dtype=torch.float64)
    g2 = append_dims(sde.diffusion(t).square(), 2)
    rev, flow = sde.reverse(score), sde.probability_flow(score)
    torch.testing.assert_close(rev.drift(x, t), sde.drift(x, t) - g2 * score(x, t))
    torch.testing.assert_close(flow.velocity(x, t), sde.drift(x, t) - 0.5 * g2 * score(x, t))
    drift_term, g = rev.discretize(x, t, 0.01)
    f, g_fwd = sde.discretize(x, t - 0.01, 0.01)
    torch.testing.assert_close(g, g_fwd)
    torch.testing.assert_close(drift_term, -f + append_dims(g.square(), 2) * score(x, t))


def test_score_fn_must_be_callable():
    with pytest.raises(TypeError, match="score_fn must be callable"):
        sd.VPSDE().reverse(3.0)
    with pytest.raises(TypeError, match="score_fn must be callable"):
        sd.VPSDE().probability_flow(None)


# --- user-defined SDEs ---------------------------------------------------------------------


class OrnsteinUhlenbeck(sd.SDE):
    """dx = -x dt + sqrt(2) dw: stationary N(0, I); only drift and diffusion given."""

    def drift(self, x, t):
        return -x

    def diffusion(self, t):
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), math.sqrt(2.0))


def test_user_defined_sde():
    sde = OrnsteinUhlenbeck(T=5.0)
    z = sde.prior_sample((3, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert z.shape == (3, 2) and z.dtype == torch.float64
    torch.testing.assert_close(sde.prior_log_prob(z), -0.5 * z.square().sum(1) - math.log(2 * math.pi))
    f, g = sde.discretize(z, 1.0, 0.1)
    torch.testing.assert_close(f, -0.1 * z)
    torch.testing.assert_close(g, torch.full((3,), math.sqrt(0.2), dtype=torch.float64))


class ConstantRateLinear(sd.LinearSDE):
    """A user's linear SDE from log_alpha and sigma alone: dx = -x/2 dt + dw (a VP SDE with beta = 1)."""

    def log_alpha(self, t):
        return -0.5 * t

    def sigma(self, t):
        return (-torch.expm1(-t)).sqrt()


def test_user_defined_linear_sde_derives_the_rest():
    sde = ConstantRateLinear(T=8.0)
    ref = sd.VPSDE(beta_min=1.0, beta_max=1.0, T=8.0)
    t = torch.linspace(0.1, 8.0, 9, dtype=torch.float64)
    torch.testing.assert_close(sde.drift_coef(t), ref.drift_coef(t))
    torch.testing.assert_close(sde.diffusion(t), ref.diffusion(t))
    torch.testing.assert_close(sde.inverse_log_snr(ref.log_snr(t)), t)
    torch.testing.assert_close(sde.transition_coefs(t[:4], t[4:8]), ref.transition_coefs(t[:4], t[4:8]))
    assert sde.prior_std == pytest.approx(1.0, abs=1e-12)


# --- shapes and dtypes ---------------------------------------------------------------------


@pytest.mark.parametrize("event", [(2,), (16,), (1, 8, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(sde, event, dtype):
    x = torch.randn(4, *event, dtype=dtype)
    t = torch.rand(4, dtype=torch.float64) * sde.T
    mean, std = sde.marginal(x, t)
    assert mean.shape == x.shape and mean.dtype == dtype
    assert std.shape == (4,) and std.dtype == dtype
    assert sde.drift(x, t).shape == x.shape and sde.drift(x, t).dtype == dtype
    mean, std = sde.transition(x, 0.5 * t, t)
    assert mean.shape == x.shape and std.shape == (4,) and mean.dtype == dtype
    z = sde.prior_sample((4, *event), dtype=dtype)
    assert z.shape == x.shape and z.dtype == dtype
    assert sde.prior_log_prob(z).shape == (4,)
    assert sde.marginal(x, 0.5 * sde.T)[1].shape == (4,)


def test_inputs_not_mutated(sde):
    x = torch.randn(4, 3)
    before = x.clone()
    sde.marginal(x, 0.5 * sde.T)
    sde.transition(x, 0.1 * sde.T, 0.5 * sde.T)
    sde.discretize(x, 0.1 * sde.T, 0.01)
    torch.testing.assert_close(x, before, rtol=0, atol=0)


# --- one test per error message ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: sd.VPSDE(beta_min=20.0, beta_max=0.1), r"beta_min <= beta_max, got beta_min=20.0 > beta_max=0.1"),
        (lambda: sd.VPSDE(beta_min=-1.0), r"beta_min must be > 0, got -1.0"),
        (lambda: sd.VPSDE(beta_max=float("nan")), r"beta_max must be a finite number"),
        (lambda: sd.VPSDE(schedule="quadratic"), r"schedule must be 'linear' or 'cosine', got 'quadratic'"),
        (lambda: sd.VPSDE(schedule="cosine", beta_min=0.1), r"the cosine schedule takes no beta_min/beta_max"),
        (lambda: sd.VPSDE(schedule="cosine", T=1.0), r"the cosine schedule needs T < 1 .* got T=1.0"),
        (lambda: sd.VESDE(sigma_min=0.0), r"sigma_min must be > 0, got 0.0"),
        (lambda: sd.VESDE(sigma_min=5.0, sigma_max=1.0), r"sigma_min < sigma_max, got sigma_min=5.0 >= sigma_max=1.0"),
        (lambda: sd.SubVPSDE(t_min=1.0), r"0 <= t_min < T, got t_min=1.0, T=1.0"),
        (lambda: sd.VPSDE(T=-1.0), r"T must be > 0, got -1.0"),
        (lambda: sd.VPSDE(t_min=-1e-3), r"0 <= t_min < T, got t_min=-0.001"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_times_and_shapes():
    sde = sd.VPSDE()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1.0\], got 1.5"):
        sde.marginal(x, 1.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1.0\], got values in \[-0.5, 0.5\]"):
        sde.marginal(x, torch.tensor([-0.5, 0.1, 0.5]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1.0\]"):
        sde.marginal(x, torch.tensor([float("nan"), 0.1, 0.5]))
    with pytest.raises(ValueError, match=r"t must be a number or a \(batch,\) tensor with batch=3, got shape \(2,\)"):
        sde.marginal(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"transition needs s <= t"):
        sde.transition(x, 0.5, 0.2)
    with pytest.raises(ValueError, match=r"s must lie in \[0, T=1.0\], got -0.1"):
        sde.transition(x, -0.1, 0.2)
    with pytest.raises(ValueError, match=r"x must have a batch dimension, got shape \(\)"):
        sde.drift(torch.tensor(1.0), 0.5)
    with pytest.raises(ValueError, match=r"shape must be \(batch, \*event\), got \(3,\)"):
        sde.prior_sample((3,))
    with pytest.raises(ValueError, match=r"z must be \(batch, \*event\), got shape \(3,\)"):
        sde.prior_log_prob(torch.zeros(3))


# --- argument checks at the boundary (issue 14) --------------------------------------------


def test_schedule_functions_take_numbers(sde):
    """A number is a float64 0-d time: the same values as the tensor it stands for."""
    t = 0.4 * sde.T
    tt = torch.tensor(t, dtype=torch.float64)
    for name in ("alpha", "log_alpha", "sigma", "log_snr", "drift_coef", "diffusion"):
        value = getattr(sde, name)(t)
        assert value.dtype == torch.float64 and value.ndim == 0, name
        torch.testing.assert_close(value, getattr(sde, name)(tt), rtol=0, atol=0)
    assert PlainOU().diffusion(0.5) == 1.0  # a user's SDE gets the same


@pytest.mark.parametrize("name", ["alpha", "sigma", "log_snr", "diffusion"])
def test_schedule_functions_check_numbers(name):
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1.0\], got 2.0"):
        getattr(sde, name)(2.0)
    with pytest.raises(TypeError, match=r"t must be a number or a tensor, got str '0.5'"):
        getattr(sde, name)("0.5")


X = torch.zeros(3, 2)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        # times: a number is always checked, in every method
        (lambda sde: sde.drift(X, 2.0), ValueError, r"t must lie in \[0, T=1.0\], got 2.0"),
        (lambda sde: sde.drift(X, float("nan")), ValueError, r"t must lie in \[0, T=1.0\], got nan"),
        (lambda sde: sde.drift(X, -0.1), ValueError, r"t must lie in \[0, T=1.0\], got -0.1"),
        (lambda sde: sde.discretize(X, 1.5, 0.1), ValueError, r"t must lie in \[0, T=1.0\], got 1.5"),
        (lambda sde: sde.reverse(lambda x, t: x).drift(X, 2.0), ValueError, r"t must lie in \[0, T=1.0\], got 2.0"),
        (lambda sde: sde.reverse(lambda x, t: x).discretize(X, 2.0, 0.1), ValueError,
         r"t must lie in \[0, T=1.0\], got 2.0"),
        (lambda sde: sde.probability_flow(lambda x, t: x).velocity(X, float("inf")), ValueError,
         r"t must lie in \[0, T=1.0\], got inf"),
        (lambda sde: sde.marginal(X, "0.5"), TypeError, r"t must be a number or a tensor, got str '0.5'"),
        (lambda sde: sde.marginal(X, True), TypeError, r"t must be a number or a tensor, got bool True"),
        (lambda sde: sde.marginal(X, None), TypeError, r"t must be a number or a tensor, got NoneType None"),
        (lambda sde: sde.marginal(X, torch.full((3,), 0.5j)), TypeError,
         r"t must be a real tensor, got dtype torch.complex64"),
        (lambda sde: sde.drift(X, torch.ones(3, dtype=torch.bool)), TypeError,
         r"t must be a real tensor, got dtype torch.bool"),
        (lambda sde: sde.transition(X, 0.1, "0.5"), TypeError, r"t must be a number or a tensor, got str"),
        # states: real floating point only
        (lambda sde: sde.marginal(torch.ones(3, 2, dtype=torch.long), 0.5), TypeError,
         r"x0 must be a floating-point tensor, got dtype torch.int64"),
        (lambda sde: sde.marginal(torch.ones(3, 2, dtype=torch.complex64), 0.5), TypeError,
         r"x0 must be a floating-point tensor, got dtype torch.complex64"),
        (lambda sde: sde.transition(torch.ones(3, 2, dtype=torch.int32), 0.1, 0.5), TypeError,
         r"x_s must be a floating-point tensor, got dtype torch.int32"),
        (lambda sde: sde.drift(torch.ones(3, 2, dtype=torch.long), 0.5), TypeError,
         r"x must be a floating-point tensor, got dtype torch.int64"),
        (lambda sde: sde.drift([[1.0, 2.0]], 0.5), TypeError, r"x must be a floating-point tensor, got list"),
        (lambda sde: sde.prior_log_prob(torch.zeros(3, 2, dtype=torch.long)), TypeError,
         r"z must be a floating-point tensor, got dtype torch.int64"),
        # the prior draw: dtype, generator, device
        (lambda sde: sde.prior_sample((3, 2), dtype=torch.long), TypeError,
         r"dtype must be a real floating-point torch.dtype .* got torch.int64"),
        (lambda sde: sde.prior_sample((3, 2), dtype=torch.complex128), TypeError,
         r"dtype must be a real floating-point torch.dtype .* got torch.complex128"),
        (lambda sde: sde.prior_sample((3, 2), generator=42), TypeError,
         r"generator must be a torch.Generator \(e.g. torch.Generator\(\).manual_seed\(0\)\) or None, got int 42"),
        (lambda sde: sde.prior_sample((3, 2), device="gpu"), ValueError,
         r"device must name a torch device \(e.g. 'cpu', 'cuda:0'\), got 'gpu'"),
        (lambda sde: sde.prior_sample(3), ValueError, r"shape must be \(batch, \*event\), got 3"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call(sd.VPSDE())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_named():
    with pytest.raises(ValueError, match=r"device 'cuda' is not available here \(.*CUDA"):
        sd.VPSDE().prior_sample((3, 2), device="cuda")


def test_time_zero_and_T_are_valid(sde):
    x0 = torch.ones(3, 2, dtype=torch.float64)
    mean, std = sde.marginal(x0, 0)
    torch.testing.assert_close(mean, x0)
    torch.testing.assert_close(std, torch.zeros(3, dtype=torch.float64))
    mean, std = sde.marginal(x0, sde.T)
    torch.testing.assert_close(std, sde.sigma(torch.full((3,), sde.T, dtype=torch.float64)))
    assert sde.drift(x0, sde.T).shape == x0.shape


def test_per_step_methods_do_not_read_tensor_times_on_the_host(sde, monkeypatch):
    """Solvers call these every step with tensor times: checking their values would be a host
    sync per step, so only their type is checked (a sampler has checked its grid up front)."""
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.5 * sde.T, dtype=torch.float64)
    score = mixture(2).score_fn(sde)

    def no_sync(*args):
        raise AssertionError("a tensor's value was read on the host")

    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    sde.drift(x, t)
    sde.diffusion(t)
    sde.discretize(x, t, 0.01)
    sde.reverse(score).drift(x, t)
    sde.reverse(score).discretize(x, t, 0.01)
    sde.probability_flow(score).velocity(x, t)
