"""Samplers end to end with exact mixture scores: distributions, reproducibility, dtypes and
event shapes, trajectories, NFE counts, a user's plain SDE, and one test per error message."""

import math

import pytest
import torch

import scoresde as sd
from scoresde.sample import sample_ode, sample_pc, sample_sde
from scoresde.solvers import METHODS, FirstNonFinite, NonFiniteError
from tests.conftest import SDE_FACTORIES, PlainOU, mixture_16d, separated_mixture_2d

T_END = 1e-3
N = 2000
Z = 4.5  # Bonferroni over the ~150 mean and covariance entries of a 16-D check at 1e-3 family-wise


# ---------------------------------------------------------------------------------------------
# distributions


MIXTURES = {"2d": separated_mixture_2d, "16d": mixture_16d}


@pytest.fixture(scope="module", params=list(MIXTURES))
def mixture_stats(request):
    """The mixture, an exact data sample, the standard errors of the sample mean and
    covariance entries at n = N, and the sliced-Wasserstein noise floor between two exact
    samples of size N (mean and sd over 8 independent pairs)."""
    gmm = MIXTURES[request.param]()
    g = torch.Generator().manual_seed(11)
    big = gmm.sample(20 * N, generator=g, dtype=torch.float64)
    centered = big - gmm.mean
    products = centered[:, :, None] * centered[:, None, :]
    cov_se = products.std(0) / math.sqrt(N)
    mean_se = (gmm.covariance.diagonal() / N).sqrt()
    floors = torch.stack([
        sd.sliced_wasserstein(gmm.sample(N, generator=g, dtype=torch.float64),
                              gmm.sample(N, generator=g, dtype=torch.float64), 64, torch.Generator().manual_seed(0))
        for _ in range(8)
    ])  # fmt: skip
    reference = gmm.sample(N, generator=g, dtype=torch.float64)
    # an exact sampler's SW to the reference is distributed as the floor: mean + 4 sd
    return request.param, gmm, reference, mean_se, cov_se, (floors.mean() + 4 * floors.std()).item()


def recommended(name, dim):
    """Each sampler at its recommended setting (kept short for the test's time budget)."""
    return {
        # Song et al.'s setting (batch-mean norms; per-sample norms are biased, see
        # test_per_sample_langevin_norms_inflate_the_variance)
        "pc": (sample_pc, {"num_steps": 200}),
        "pc_annealed": (sample_pc, {"num_steps": 200, "predictor": "euler_maruyama", "corrector": "annealed_langevin"}),
        "pc_ancestral": (sample_pc, {"num_steps": 200, "predictor": "ancestral", "corrector": None}),
        "sde_euler": (sample_sde, {"num_steps": 200}),
        "ode_dopri5": (sample_ode, {"rtol": 1e-5, "atol": 1e-5}),
        "ode_heun": (sample_ode, {"method": "heun", "num_steps": 30}),
        "ode_dpmpp_3m": (sample_ode, {"method": "dpmpp_3m", "num_steps": 20}),
    }[name]


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize(
    "sampler", ["pc", "pc_annealed", "pc_ancestral", "sde_euler", "ode_dopri5", "ode_heun", "ode_dpmpp_3m"]
)
def test_samples_match_the_data_distribution(mixture_stats, sde_name, sampler):
    name, gmm, reference, mean_se, cov_se, sw_bound = mixture_stats
    sde = SDE_FACTORIES[sde_name]()
    # start from exact draws of p_T, so that what is measured is the sampler, not the
    # prior's mismatch with p_T (VE with sigma_max = 20 does not quite cover the 16-D data)
    g = torch.Generator().manual_seed(5)
    x_init = gmm.marginal(sde, sde.T).sample(N, generator=g, dtype=torch.float64)
    fn, kwargs = recommended(sampler, gmm.dim)
    x = fn(gmm.score_fn(sde), sde, x_init=x_init, t_end=T_END, generator=g, **kwargs).x
    mean_z = ((x.mean(0) - gmm.mean) / mean_se).abs().max().item()
    cov_z = ((torch.cov(x.T) - gmm.covariance) / cov_se).abs().max().item()
    sw = sd.sliced_wasserstein(x, reference, 64, torch.Generator().manual_seed(0)).item()
    print(f"{name} {sde_name} {sampler}: mean z {mean_z:.2f}, cov z {cov_z:.2f}, SW {sw:.4f} (bound {sw_bound:.4f})")
    assert mean_z < Z and cov_z < Z and sw < sw_bound


@pytest.mark.xfail(strict=True, reason="per-sample Langevin step sizes are state-dependent: biased (documented, "
                   "hence not the default)")
def test_per_sample_langevin_norms_inflate_the_variance():
    # 16-D, VP, 200 steps: the sample variances come out ~3.4 standard errors (about 10%)
    # too large on average over coordinates, at 200 or 600 steps alike; batch norms: ~0.4 SE
    gmm = mixture_16d()
    sde = sd.VPSDE()
    g = torch.Generator().manual_seed(0)
    x_init = gmm.marginal(sde, sde.T).sample(N, generator=g, dtype=torch.float64)
    x = sample_pc(gmm.score_fn(sde), sde, x_init=x_init, num_steps=200, t_end=T_END, generator=g,
                  corrector_norm="per_sample").x
    variance_se = gmm.covariance.diagonal() * math.sqrt(2 / N)
    mean_variance_z = ((x.var(0) - gmm.covariance.diagonal()) / variance_se).mean().item()
    assert abs(mean_variance_z) < 1.5, mean_variance_z


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize("predictor", ["reverse_diffusion", "euler_maruyama", "ancestral"])
@pytest.mark.parametrize("corrector", ["langevin", "annealed_langevin", None])
@pytest.mark.parametrize("num_steps", [10, 20])
def test_pc_at_low_step_counts_stays_finite(sde_name, predictor, corrector, num_steps):
    sde = SDE_FACTORIES[sde_name]()
    gmm = separated_mixture_2d()
    def run(**kwargs):
        return sample_pc(gmm.score_fn(sde), sde, (500, 2), num_steps=num_steps, predictor=predictor,
                         corrector=corrector, t_end=T_END, generator=torch.Generator().manual_seed(0), **kwargs).x

    assert torch.isfinite(run(corrector_norm="per_sample") if corrector == "langevin" else run()).all()
    res = run()
    # coarse, but far from a blow-up: the sample spread is within 2x of the data's
    ratio = res.var(0) / gmm.covariance.diagonal().float()
    assert ((ratio > 0.5) & (ratio < 2)).all(), ratio


# ---------------------------------------------------------------------------------------------
# reproducibility, dtypes, shapes, x_init, trajectories, NFE


RUNS = {
    "pc": lambda s, sde, shape, **kw: sample_pc(s, sde, shape, num_steps=8, predictor="ancestral", **kw),
    "sde_euler": lambda s, sde, shape, **kw: sample_sde(s, sde, shape, num_steps=8, **kw),
    "torchsde_euler": lambda s, sde, shape, **kw: sample_sde(s, sde, shape, method="torchsde_euler", num_steps=8, **kw),
    "srk": lambda s, sde, shape, **kw: sample_sde(s, sde, shape, method="srk", num_steps=4, **kw),
    "ddim": lambda s, sde, shape, **kw: sample_ode(s, sde, shape, method="ddim", num_steps=8, **kw),
    "dopri5": lambda s, sde, shape, **kw: sample_ode(s, sde, shape, rtol=1e-3, atol=1e-3, **kw),
}


def gaussian_with_event(event_shape):
    d = math.prod(event_shape)
    return sd.GaussianMixture(torch.zeros(1, d), torch.full((1, d), 0.5), event_shape=event_shape)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("run", list(RUNS))
def test_same_generator_seed_same_samples(run):
    sde = sd.VPSDE()
    score = separated_mixture_2d().score_fn(sde)
    a, b, c = (RUNS[run](score, sde, (32, 2), t_end=T_END, generator=torch.Generator().manual_seed(seed)).x
               for seed in (1, 1, 2))  # fmt: skip
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("event_shape", [(2,), (16,), (1, 8, 8)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("run", list(RUNS))
def test_shape_and_dtype_follow_the_input(event_shape, dtype, run):
    sde = sd.VESDE(sigma_max=20.0)
    x_init = sde.prior_sample((8, *event_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
    before = x_init.clone()
    res = RUNS[run](gaussian_with_event(event_shape).score_fn(sde), sde, None, x_init=x_init, t_end=T_END,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert res.x.shape == x_init.shape and res.x.dtype == dtype and torch.isfinite(res.x).all()
    assert torch.equal(x_init, before)  # the caller's tensor is never modified


@pytest.mark.parametrize("noise", [{"generator": 4}, {"seed": 4}])
def test_corrector_only_pc_is_ncsn_annealed_langevin(noise):
    """sample_pc(predictor=None) on VE is Song & Ermon's Alg. 1 (sample_annealed_langevin) from the same x_init
    and noise, to round-off: levels at the grid's times, the NCSN step alpha_i / 2 = eps sigma_i^2 / (2 sigma_L^2)
    being the corrector's 2 (r sigma_i)^2 with r = sqrt(eps) / (2 sigma_L); the same final Tweedie step."""
    gmm, ve = separated_mixture_2d(), sd.VESDE(0.01, 50.0)
    sigmas, eps, steps = sd.ncsn_sigmas(20.0, 0.05, 6), 3e-5, 4
    times = ve.inverse_log_snr(-2 * sigmas.log())
    x_init = 20.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def kw():
        return {"generator": torch.Generator().manual_seed(noise["generator"])} if "generator" in noise else noise

    ncsn = sd.sample_annealed_langevin(gmm.score_fn(ve), ve, x_init=x_init, sigmas=sigmas, steps_per_level=steps,
                                       step_size=eps, denoise=True, **kw())  # fmt: skip
    pc = sample_pc(gmm.score_fn(ve), ve, x_init=x_init, num_steps=None, timesteps=times, predictor=None,
                   corrector="annealed_langevin", snr=math.sqrt(eps) / (2 * sigmas[-1].item()),
                   corrector_steps=steps, save_at="grid", **kw())  # fmt: skip
    assert pc.nfe == ncsn.nfe == 6 * 4 + 1
    torch.testing.assert_close(pc.x, ncsn.x, rtol=0, atol=1e-9)
    assert (pc.x - x_init).abs().min() > 1e-3  # it moved: the levels ran
    assert pc.trajectory.x.shape == (6, 64, 2) and torch.equal(pc.trajectory.t, times)


def test_corrector_only_pc_on_vp_is_ncsn_without_the_frame_change():
    """Why a VP corrector-only run is not sample_annealed_langevin, exactly: it runs in the SDE's frame
    x = alpha y (y = x_0 + sigma/alpha eps, NCSN's) and keeps x between levels, so in NCSN's terms the state
    is multiplied by alpha(t_0)/alpha(t_1) at the change of level (NCSN keeps y), and the second level's step
    has the factor a^2 = (alpha(t_0)/alpha(t_1))^2. Two one-level NCSN runs with those two changes give the
    same samples, to round-off, from the same generator."""
    gmm, vp = separated_mixture_2d(), sd.VPSDE()
    times = torch.tensor([0.5, 0.3], dtype=torch.float64)
    alpha, sigma = vp.alpha(times), vp.sigma(times)
    levels, a2 = sigma / alpha, (alpha[0] / alpha[1]).square()
    r = 0.1
    x_init = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pc = sample_pc(gmm.score_fn(vp), vp, x_init=x_init, num_steps=None, timesteps=times, predictor=None,
                   corrector="annealed_langevin", snr=r, corrector_steps=5, denoise=False,
                   generator=torch.Generator().manual_seed(3))  # fmt: skip
    g = torch.Generator().manual_seed(3)
    # NCSN's step alpha_i = eps_ncsn of one level; the corrector's 2 a^2 (r sigma)^2 is alpha^2 alpha_i / 2
    first = sd.sample_annealed_langevin(gmm.score_fn(vp), vp, x_init=x_init / alpha[0], sigmas=levels[:1],
                                        steps_per_level=5, step_size=(4 * r**2 * levels[0] ** 2).item(),
                                        generator=g)  # fmt: skip
    second = sd.sample_annealed_langevin(gmm.score_fn(vp), vp, x_init=first.x * alpha[0] / alpha[1],
                                         sigmas=levels[1:], steps_per_level=5,
                                         step_size=(4 * a2 * r**2 * levels[1] ** 2).item(), generator=g)  # fmt: skip
    torch.testing.assert_close(pc.x, second.x * alpha[1], rtol=0, atol=1e-9)
    assert a2 < 0.95 and (first.x * alpha[0] / alpha[1] - first.x).abs().max() > 0.05  # the two differences matter


def test_prior_draw_follows_dtype_argument():
    sde = sd.VPSDE()
    res = sample_ode(separated_mixture_2d().score_fn(sde), sde, (4, 2), method="ddim", num_steps=3, t_end=T_END,
                     dtype=torch.float64)  # fmt: skip
    assert res.x.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "nfe"),
    [
        ({"fn": sample_pc, "num_steps": 7, "corrector_steps": 2}, 7 * 3 + 1),  # + the denoising step
        ({"fn": sample_pc, "num_steps": 7, "corrector": None, "denoise": False}, 7),
        ({"fn": sample_pc, "num_steps": 7, "predictor": None, "corrector_steps": 2}, 8 * 2 + 1),  # a level at t_0
        ({"fn": sample_sde, "num_steps": 7}, 7),
        ({"fn": sample_ode, "method": "heun", "num_steps": 7}, 2 * 7 - 1),  # the last step is Euler
        ({"fn": sample_ode, "method": "dpmpp_3m", "num_steps": 7, "denoise": True}, 8),
        ({"fn": sample_ode, "method": "rk4", "num_steps": 7}, 4 * 7),
    ],
)
def test_nfe_is_exact(kwargs, nfe):
    sde = sd.VPSDE()
    calls = []
    score = separated_mixture_2d().score_fn(sde)

    def counted(x, t):
        calls.append(1)
        return score(x, t)

    fn = kwargs.pop("fn")
    res = fn(counted, sde, (16, 2), t_end=T_END, **kwargs)
    assert res.nfe == len(calls) == nfe


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_adaptive_dense_output_follows_the_closed_form_flow(method):
    # single Gaussian under VP: x_t = a_t mu + std_t (x_T - a_T mu) / std_T exactly; the outputs
    # between steps come from torchdiffeq's interpolant (errors ~1e-6 at tol 1e-7; a wrong
    # midpoint in the interpolant gives ~1e-2)
    sde = sd.VPSDE()
    mu, s0 = torch.tensor([0.5, -0.5], dtype=torch.float64), 0.7
    gauss = sd.GaussianMixture(mu[None], torch.full((1, 2), s0**2))
    x_init = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = [0.9, 0.7, 0.5, 0.3, 0.1]
    res = sample_ode(gauss.score_fn(sde), sde, x_init=x_init, method=method, rtol=1e-7, atol=1e-7, t_end=T_END,
                     save_at=times)  # fmt: skip
    assert res.trajectory.t.tolist() == times

    def spread(t):
        return sde.alpha(t), (sde.alpha(t) ** 2 * s0**2 + sde.sigma(t) ** 2).sqrt()

    a_start, std_start = spread(torch.tensor(1.0, dtype=torch.float64))
    for t, x in zip(res.trajectory.t, res.trajectory.x, strict=True):
        a, std = spread(t)
        torch.testing.assert_close(x, a * mu + std * (x_init - a_start * mu) / std_start, rtol=0, atol=1e-5)


def test_trajectory_on_the_grid_and_at_given_times():
    sde = sd.VPSDE()
    mu, s0 = torch.tensor([0.5, -0.5], dtype=torch.float64), 0.7
    gauss = sd.GaussianMixture(mu[None], torch.full((1, 2), s0**2))
    x_init = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sample_ode(gauss.score_fn(sde), sde, x_init=x_init, method="dpmpp_2m", num_steps=6, t_end=T_END,
                     save_at="grid")  # fmt: skip
    assert res.trajectory.x.shape == (7, 16, 2) and res.trajectory.t[0] == 1.0
    assert torch.equal(res.trajectory.x[0], x_init) and torch.equal(res.trajectory.x[-1], res.x)
    # a fixed-step loop adds the requested times to its grid
    res = sample_pc(gauss.score_fn(sde), sde, (16, 2), num_steps=4, t_end=T_END, save_at=[0.33])
    assert res.trajectory.t.tolist() == [0.33] and res.nfe == 5 * 2 + 1
    res = sample_sde(gauss.score_fn(sde), sde, (16, 2), method="torchsde_euler", num_steps=4, t_end=T_END,
                     save_at=[1.0, 0.5])  # fmt: skip
    assert res.trajectory.x.shape == (2, 16, 2)


def test_explicit_timesteps_are_used():
    sde = sd.VESDE()
    score = separated_mixture_2d().score_fn(sde)
    grid = sd.time_grid(sde, 5, "karras", t_end=T_END)
    x_init = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0))
    a = sample_ode(score, sde, x_init=x_init, method="heun", timesteps=grid).x
    b = sample_ode(score, sde, x_init=x_init, method="heun", num_steps=5, grid="karras", t_end=T_END).x
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# a user's SDE with only drift and diffusion


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "run",
    [
        lambda s, sde, **kw: sample_sde(s, sde, method="euler_maruyama", num_steps=100, grid="quadratic", **kw),
        # torchsde takes equal steps: more of them for the stiff end near t_min
        lambda s, sde, **kw: sample_sde(s, sde, method="torchsde_euler", num_steps=400, **kw),
        lambda s, sde, **kw: sample_sde(s, sde, method="reversible_heun", num_steps=400, **kw),
        lambda s, sde, **kw: sample_pc(s, sde, num_steps=100, grid="quadratic", denoise=False, corrector_norm="batch",
                                       **kw),
        lambda s, sde, **kw: sample_ode(s, sde, **kw),
        lambda s, sde, **kw: sample_ode(s, sde, method="heun", num_steps=30, grid="quadratic", **kw),
    ],
    ids=["euler", "torchsde_euler", "reversible_heun", "pc", "dopri5", "heun"],
)
def test_plain_sde_works_with_drift_and_diffusion_solvers(run):
    plain = PlainOU(T=8.0, t_min=1e-3)
    twin = sd.VPSDE(beta_min=1.0, beta_max=1.0, T=8.0)  # the same SDE, for the exact score
    gauss = sd.GaussianMixture(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.25, 0.5]]))
    x_init = gauss.marginal(twin, twin.T).sample(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = run(gauss.score_fn(twin), plain, x_init=x_init, generator=torch.Generator().manual_seed(1)).x
    target_var = torch.tensor([0.25, 0.5], dtype=torch.float64) + 1e-3  # sigma^2(t_min) ~ t_min
    # mean within 4.5 standard errors; variance within 4.5 SE (sqrt(2/N) var) plus 5% for the
    # discretisation at 100 steps (Euler-Maruyama's variance bias is ~1/N of the data variance)
    assert ((x.mean(0) - gauss.mean).abs() < Z * (target_var / N).sqrt()).all()
    assert ((x.var(0) - target_var).abs() < Z * math.sqrt(2 / N) * target_var + 0.05 * target_var).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s, sde: sample_pc(s, sde, (4, 2), predictor="ancestral", denoise=False), "AncestralSampling needs"),
        (lambda s, sde: sample_pc(s, sde, (4, 2), corrector="annealed_langevin", denoise=False),
         "AnnealedLangevin needs"),
        (lambda s, sde: sample_pc(s, sde, (4, 2)), r"denoise=True \(Tweedie's formula\) needs"),
        (lambda s, sde: sample_ode(s, sde, (4, 2), method="ddim", num_steps=4), "DDIM needs"),
        (lambda s, sde: sample_ode(s, sde, (4, 2), method="dpmpp_2m", num_steps=4), "DPMSolverPP2M needs"),
        (lambda s, sde: sample_ode(s, sde, (4, 2), method="dpmpp_3m", num_steps=4), "DPMSolverPP3M needs"),
        (lambda s, sde: sample_ode(s, sde, (4, 2), method="heun", num_steps=4, grid="log_snr"), "needs a LinearSDE"),
    ],
)
def test_gaussian_kernel_solvers_refuse_a_plain_sde(call, match):
    with pytest.raises(TypeError, match=match):
        call(lambda x, t: -x, PlainOU())


# ---------------------------------------------------------------------------------------------
# non-finite states


def nan_below(sde, t_bad):
    score = separated_mixture_2d().score_fn(sde)

    def broken(x, t):
        return torch.where((t < t_bad)[:, None], torch.nan, score(x, t))

    return broken


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("run", "match"),
    [
        (lambda s, sde: sample_ode(s, sde, (8, 2), method="euler", num_steps=10, grid="uniform"),
         r"sample_ode\(euler\).* at step 6 \(t=0.4"),
        (lambda s, sde: sample_pc(s, sde, (8, 2), num_steps=10),
         r"sample_pc\(reverse_diffusion, langevin\).* at step 5 \(t=0.5"),
        (lambda s, sde: sample_ode(s, sde, (8, 2)),
         r"velocity .*\(dopri5\) became non-finite .* at evaluation \d+"),
        (lambda s, sde: sample_sde(s, sde, (8, 2), method="torchsde_euler", num_steps=10),
         r"drift \(torchsde euler\) became non-finite .* at drift evaluation \d+"),
    ],
)  # fmt: skip
def test_non_finite_state_names_the_step(run, match):
    sde = sd.VPSDE(t_min=1e-3)
    with pytest.raises(NonFiniteError, match=match):
        run(nan_below(sde, 0.55), sde)


def nan_from_call(n):
    """A score that returns NaN from its ``n``-th call on, with its call count."""
    score = separated_mixture_2d().score_fn(sd.VPSDE(t_min=1e-3))
    calls = []

    def broken(x, t):
        calls.append(1)
        return score(x, t) * (math.nan if len(calls) >= n else 1.0)

    return broken, calls


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("run", "calls_per_step", "match"),
    [
        (lambda s, sde: sample_pc(s, sde, (8, 2), num_steps=1000), 2,
         r"sample_pc\(reverse_diffusion, langevin\) .*of 1000\) became non-finite .* at step 2 \(t=0.998"),
        (lambda s, sde: sample_ode(s, sde, (8, 2), method="euler", num_steps=1000, grid="uniform"), 1,
         r"sample_ode\(euler\) .* at step 3 \(t=0.997"),
        (lambda s, sde: sample_ode(s, sde, (8, 2), method="dpmpp_2m", num_steps=1000), 1,
         r"sample_ode\(dpmpp_2m\) .* at step 3 "),
        (lambda s, sde: sample_sde(s, sde, (8, 2), method="euler_maruyama", num_steps=1000), 1,
         r"sample_sde\(euler_maruyama\) .* at step 3 \(t=0.997"),
        (lambda s, sde: sample_sde(s, sde, (8, 2), method="torchsde_euler", num_steps=1000), 1,
         r"drift \(torchsde euler\) became non-finite .* at drift evaluation 3 "),
    ],
)  # fmt: skip
def test_non_finite_run_stops_within_a_bounded_number_of_steps(run, calls_per_step, match):
    """NaN from the 3rd score call on: the run stops within CHECK_EVERY steps of it (not after
    all 1000) and still names the first bad step exactly."""
    sde = sd.VPSDE(t_min=1e-3)
    broken, calls = nan_from_call(3)
    with pytest.raises(NonFiniteError, match=match):
        run(broken, sde)
    assert len(calls) <= calls_per_step * FirstNonFinite.CHECK_EVERY


def test_non_finite_denoising_step_is_reported():
    sde = sd.VPSDE(t_min=1e-3)
    with pytest.raises(ValueError, match="the denoised sample"):
        sample_ode(nan_below(sde, 2e-3), sde, (8, 2), method="ddim", num_steps=4, denoise=True)


# ---------------------------------------------------------------------------------------------
# one test per error message


def score_2d(x, t):
    return -x


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda sde: sample_pc(score_2d, sde), ValueError, r"give shape=\(batch, \*event\) or x_init"),
        (lambda sde: sample_pc(score_2d, sde, (4,)), ValueError, r"shape must be \(batch, \*event\) of positive ints"),
        (lambda sde: sample_pc(score_2d, sde, x_init=[[0.0, 1.0]]), TypeError,
         "x_init must be a floating-point tensor"),
        (lambda sde: sample_pc(score_2d, sde, x_init=torch.zeros(3)), ValueError, r"x_init must be \(batch, \*event\)"),
        (lambda sde: sample_pc(score_2d, sde, (4, 3), x_init=torch.zeros(4, 2)), ValueError, "does not match x_init"),
        (lambda sde: sample_pc(score_2d, sde, x_init=torch.full((4, 2), math.nan)), ValueError,
         "x_init has 8 non-finite"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), num_steps=3, timesteps=[1.0, 0.5]), ValueError,
         "num_steps=3 does not match timesteps with 1 steps"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), num_steps=None, timesteps=[1.0, 0.5], t_end=0.1), ValueError,
         "give t_end or timesteps, not both"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), num_steps=None), ValueError, "give num_steps or timesteps"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), num_steps=3, save_at="all"), ValueError,
         "save_at must be times, 'grid' or None"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), num_steps=3, t_end=0.1, save_at=[0.05]), ValueError,
         r"save_at times must lie in \[0.1, 1.0\]"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), denoise=1), TypeError, "denoise must be True or False"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), predictor="heun"), ValueError,
         "sample_pc cannot run predictor='heun' .scoresde's ode solver"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), corrector="hmc"), ValueError, "corrector must be one of"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), predictor=None, corrector=None), ValueError,
         "needs a predictor, a corrector or both, got predictor=None and corrector=None"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), snr=0.0), ValueError, "snr must be a number > 0"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), corrector_steps=0), ValueError,
         "corrector num_steps must be an int >= 1"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), corrector_norm="max"), ValueError, "norm must be one of"),
        (lambda sde: sample_pc("score", sde, (4, 2)), TypeError, "score_fn must be callable"),
        (lambda sde: sample_pc(score_2d, "vp", (4, 2)), TypeError, "sde must be a scoresde.SDE"),
        (lambda sde: sample_sde(score_2d, sde, (4, 2), method="rk4"), ValueError, "sample_sde cannot run method='rk4'"),
        (lambda sde: sample_sde(score_2d, sde, (4, 2), method="srk", num_steps=None, timesteps=[1.0, 0.9, 0.1]),
         ValueError, "needs a uniform grid"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), method="rk45"), ValueError, "method must be one of"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), rtol=0), ValueError, "rtol must be a finite number > 0"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), num_steps=10), ValueError,
         "method='dopri5' chooses its own steps"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), method="ddim", num_steps=None, timesteps=[1.0, 0.0]),
         ValueError, "end the grid at t_end > 0"),
        (lambda sde: sd.encode(score_2d, sde, torch.zeros(4, 2), method="ddim"), ValueError,
         r"encode cannot run method='ddim' \(scoresde's ode solver\)"),
        (lambda sde: sd.decode(score_2d, sde, torch.zeros(4, 2), method="euler"), ValueError,
         r"decode cannot run method='euler' \(scoresde's ode solver\); torchdiffeq's is 'torchdiffeq_euler'"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), method="srk"), ValueError,
         r"sample_ode cannot run method='srk' \(torchsde's sde solver\)"),
        # a fixed-step method would ignore tolerances, and this library's ignore torchdiffeq options
        (lambda sde: sample_ode(score_2d, sde, (4, 2), method="dpmpp_2m", num_steps=5, rtol=-1), ValueError,
         r"method='dpmpp_2m' takes fixed steps and uses no tolerance: drop rtol=-1"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), method="euler", num_steps=5, rtol=1e-3, atol=1e-3), ValueError,
         r"method='euler' takes fixed steps .* drop rtol=0.001, atol=0.001"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), method="rk4", num_steps=5, atol=1e-5), ValueError,
         r"method='rk4' takes fixed steps .* drop atol=1e-05"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), method="ddim", num_steps=5, options={"step_size": 0.1}),
         ValueError, r"method='ddim' does not take the options \{'step_size': 0.1\}"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), method="unipc_2", num_steps=5, options={"variant": "b"}),
         ValueError, r"variant must be one of"),
        # dtypes, generators and devices, named
        (lambda sde: sample_pc(score_2d, sde, (4, 2), num_steps=3, dtype=torch.long), TypeError,
         r"dtype must be a real floating-point torch.dtype .* got torch.int64"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), dtype=torch.complex64), TypeError,
         r"dtype must be a real floating-point torch.dtype .* got torch.complex64"),
        (lambda sde: sample_sde(score_2d, sde, (4, 2), num_steps=3, dtype=torch.int32), TypeError,
         r"dtype must be a real floating-point torch.dtype .* got torch.int32"),
        (lambda sde: sample_ode(score_2d, sde, x_init=torch.zeros(4, 2, dtype=torch.long)), TypeError,
         r"x_init must be a floating-point tensor, got dtype torch.int64"),
        (lambda sde: sample_pc(score_2d, sde, x_init=torch.zeros(4, 2), num_steps=3, dtype=torch.long), TypeError,
         r"dtype must be a real floating-point torch.dtype .* got torch.int64"),
        (lambda sde: sample_pc(score_2d, sde, (4, 2), num_steps=3, generator=42), TypeError,
         r"generator must be a torch.Generator .* got int 42"),
        (lambda sde: sample_ode(score_2d, sde, (4, 2), generator=42), TypeError,
         r"generator must be a torch.Generator .* got int 42"),
        (lambda sde: sample_sde(score_2d, sde, (4, 2), num_steps=3, device="gpu0"), ValueError,
         r"device must name a torch device .* got 'gpu0'"),
    ],
)  # fmt: skip
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(sd.VPSDE())


def test_one_method_table():
    """Every name means one solver: sample_sde takes ours and torchsde's reverse-SDE methods,
    its old 'euler' is euler_maruyama with a warning (same samples), and sample_ode passes
    options to this library's solvers (UniPC's variant)."""
    sde_methods = [name for name, m in METHODS.items() if m.integrates == "sde"]
    assert sde_methods == ["euler_maruyama", "reverse_diffusion", "ancestral", "torchsde_euler", "milstein", "srk",
                           "reversible_heun"]  # fmt: skip
    sde, g = sd.VPSDE(), lambda: torch.Generator().manual_seed(3)
    new = sample_sde(score_2d, sde, (4, 2), method="euler_maruyama", num_steps=5, generator=g())
    with pytest.warns(DeprecationWarning, match=r"sample_sde\(method='euler'\) is now 'euler_maruyama'"):
        old = sample_sde(score_2d, sde, (4, 2), method="euler", num_steps=5, generator=g())
    assert torch.equal(old.x, new.x)
    bh2 = sample_ode(score_2d, sde, (4, 2), method="unipc_2", num_steps=5, options={"variant": "bh2"}, generator=g())
    exact = sample_ode(score_2d, sde, (4, 2), method="unipc_2", num_steps=5, generator=g())
    assert not torch.equal(bh2.x, exact.x) and bh2.nfe == exact.nfe


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_named():
    with pytest.raises(ValueError, match=r"device 'cuda' is not available here"):
        sample_pc(score_2d, sd.VPSDE(), (4, 2), num_steps=3, device="cuda")


def test_fixed_grid_torchdiffeq_method_takes_options():
    """torchdiffeq's fixed-grid methods use ``options`` (e.g. step_size), unlike tolerances."""
    sde = sd.VPSDE()
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one = sample_ode(score_2d, sde, x_init=x, method="rk4", num_steps=2, t_end=T_END)
    fine = sample_ode(score_2d, sde, x_init=x, method="rk4", num_steps=2, t_end=T_END, options={"step_size": 0.05})
    assert fine.nfe > one.nfe
