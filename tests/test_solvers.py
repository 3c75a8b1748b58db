"""Convergence orders and exact answers for the solvers (all float64, exact mixture scores).

Orders: the fixed-step ODE solvers run from the same ``x_init`` as a dopri5 solution at
rtol = atol = 1e-10 (its error is below 1e-8, far under the smallest error measured), on a
grid uniform in log-SNR. The fitted slope of log RMSE against log N is compared with the
declared order over N = 20..160: below ~20 steps the error is not yet asymptotic (slopes
1.7 for 2M at 10 -> 20), and the mixture's components overlap, so no sample switches basin
between step counts, which would make the error jump rather than scale.

UniPC-2 and UniPC-3 (declared orders 3 and 4) are fitted over N = 20..160 like the others:
measured slopes per doubling 2.99/3.00/3.00 and 3.43/3.84/3.94 on VP (UniPC-3's first step,
corrected to local order 3, only shows below ~20 steps).

iPNDM is declared order 2: its interior steps are AB4 but its DDIM start-up step's O(h^2)
local error sets the global order (measured 2.05/2.02 per doubling over 40..160 on VP and VE).

DPM-Solver++(3M) and DEIS-tAB(3) are fitted over N = 10..80 instead: its first step is DDIM and its second
2M (as in Lu et al.), whose O(h^2) local errors make the scheme's true asymptotic order 2.
While the interior O(h^3) error dominates (up to ~80 steps here) the slope is 3; beyond it
the start-up shows (measured on VE: 2.52 at 80 -> 160, 2.31 at 160 -> 320; VP stays ~3.0;
DEIS-tAB(3) on VE: 3.81/2.87/2.69 over 10..80, 2.52 at 80 -> 160; on VP 3.0 throughout).
"""

import math

import pytest
import torch

import scoresde as sd
from scoresde.sample import sample_ode, sample_sde
from scoresde.solvers import METHODS, FirstNonFinite, NonFiniteError
from tests.conftest import SDE_FACTORIES, overlapping_mixture_2d

ORDERS = {name: m.target.order for name, m in METHODS.items() if m.integrates == "ode" and m.runner == "scoresde"}
STEPS = {method: [20, 40, 80, 160] for method in ORDERS} | {"dpmpp_3m": [10, 20, 40, 80], "deis_3": [10, 20, 40, 80]}
T_END = 1e-3
MEASURED_SLOPES: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", params=["vp", "ve"])
def ode_problem(request):
    sde = SDE_FACTORIES[request.param]()
    score = overlapping_mixture_2d().score_fn(sde)
    x_init = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = sample_ode(score, sde, x_init=x_init, method="dopri5", rtol=1e-10, atol=1e-10, t_end=T_END)
    return request.param, sde, score, x_init, ref.x


def fitted_slope(steps, errors):
    log_n = torch.tensor(steps, dtype=torch.float64).log()
    log_e = torch.tensor(errors, dtype=torch.float64).log()
    log_n = log_n - log_n.mean()
    return -(log_n * (log_e - log_e.mean())).sum().item() / log_n.square().sum().item()


@pytest.mark.parametrize("method", list(ORDERS))
def test_ode_solver_convergence_order(ode_problem, method):
    name, sde, score, x_init, ref = ode_problem
    errors = []
    for n in STEPS[method]:
        x = sample_ode(score, sde, x_init=x_init, method=method, num_steps=n, t_end=T_END).x
        errors.append((x - ref).square().sum(1).mean().sqrt().item())
    slope = fitted_slope(STEPS[method], errors)
    MEASURED_SLOPES[(name, method)] = slope
    print(f"{name} {method}: errors {errors} slope {slope:.3f}")
    assert abs(slope - ORDERS[method]) < 0.3, (errors, slope)


def single_gaussian_solution(sde, mu, s0, x_init, t_end):
    """Closed-form PF-ODE solution for data N(mu, s0^2 I): the standardized coordinates
    (x_t - alpha_t mu) / sqrt(alpha_t^2 s0^2 + sigma_t^2) do not change along the flow."""

    def spread(t):
        t = torch.tensor(t, dtype=torch.float64)
        return sde.alpha(t), (sde.alpha(t) ** 2 * s0**2 + sde.sigma(t) ** 2).sqrt()

    (a_start, std_start), (a_end, std_end) = spread(sde.T), spread(t_end)
    return a_end * mu + std_end * (x_init - a_start * mu) / std_start


def single_gaussian(sde_name, s0):
    sde = SDE_FACTORIES[sde_name]()
    mu = torch.tensor([0.7, -1.2, 0.3], dtype=torch.float64)
    gauss = sd.GaussianMixture(mu[None], torch.full((1, 3), s0**2))
    x_init = sde.prior_sample((64, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return sde, gauss.score_fn(sde), x_init, single_gaussian_solution(sde, mu, s0, x_init, T_END)


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3", "ipndm", "deis_3"])
def test_exponential_integrators_exact_for_a_point_mass(sde_name, method):
    # data N(mu, 0): x0_hat = mu at every (x, t), so the exponential integrator's integral of
    # e^ell x0_hat is exact (and the multistep differences vanish): exact at any step count.
    # iPNDM: eps_hat = (x - alpha mu) / sigma is constant along each path, and its
    # Adams-Bashforth weights sum to 1; DEIS-tAB: its Lagrange basis sums to 1.
    sde, score, x_init, exact = single_gaussian(sde_name, s0=0.0)
    x = sample_ode(score, sde, x_init=x_init, method=method, num_steps=3, t_end=T_END).x
    torch.testing.assert_close(x, exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
def test_ode_solvers_converge_to_the_closed_form_single_gaussian_solution(sde_name):
    # For s0 > 0, x0_hat varies along the path (x0_hat - mu = alpha s0^2 / std_t * c), so DDIM
    # is *not* exact there; it converges to the closed form at its order, and dopri5 at tight
    # tolerance matches the closed form (which validates the reference of the order tests).
    sde, score, x_init, exact = single_gaussian(sde_name, s0=0.6)
    dopri = sample_ode(score, sde, x_init=x_init, rtol=1e-10, atol=1e-10, t_end=T_END).x
    torch.testing.assert_close(dopri, exact, rtol=0, atol=1e-7)
    steps = [20, 40, 80]
    for method in ["ddim", "dpmpp_2m"]:
        solutions = [sample_ode(score, sde, x_init=x_init, method=method, num_steps=n, t_end=T_END).x for n in steps]
        errors = [(x - exact).abs().max().item() for x in solutions]
        assert abs(fitted_slope(steps, errors) - ORDERS[method]) < 0.3, (method, errors)


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize("method", ["ipndm", "deis_3"])
def test_zhang_chen_solvers_converge_to_the_closed_form_single_gaussian_solution(sde_name, method):
    # iPNDM at exactly its order 2 (its DDIM start-up step sets it); DEIS-tAB(3) at least at
    # order 3 (measured 2.9-3.0 on VP and sub-VP over 40..160 steps; on VE the single Gaussian's
    # x0_hat is smooth enough in t for ~4 before the 1e-6 floor of the float64 solve)
    sde, score, x_init, exact = single_gaussian(sde_name, s0=0.6)
    steps = [40, 80, 160]
    errors = [
        (sample_ode(score, sde, x_init=x_init, method=method, num_steps=n, t_end=T_END).x - exact).abs().max().item()
        for n in steps
    ]
    slope = fitted_slope(steps, errors)
    assert slope > ORDERS[method] - 0.3, errors
    if method == "ipndm":
        assert slope < ORDERS[method] + 0.3, errors
    assert errors[-1] < 1e-3


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_probability_flow_is_invertible(sde_name):
    sde = SDE_FACTORIES[sde_name]()
    gmm = overlapping_mixture_2d()
    score = gmm.score_fn(sde)
    x0 = gmm.sample(128, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z = sd.encode(score, sde, x0, rtol=1e-9, atol=1e-9, t_end=T_END)
    back = sample_ode(score, sde, x_init=z.z, rtol=1e-9, atol=1e-9, t_end=T_END)
    assert z.nfe > 0 and back.nfe > 0
    # tolerance 1e-9 per step, over a few hundred steps, amplified by the flow's Lipschitz
    # constant (~1/sigma(t_end) on the way back): 1e-5 is comfortably above what is reached
    torch.testing.assert_close(back.x, x0, rtol=0, atol=1e-5)
    # and the latents are distributed as the prior: unit variance for VP
    if sde_name == "vp":
        assert abs(z.z.std().item() - 1) < 0.15


@pytest.mark.timeout(120)
def test_euler_maruyama_weak_error_falls():
    # 1-D Gaussian data under VP: the sample variance's bias shrinks like 1/N (weak order 1).
    # n = 100k: the variance's Monte-Carlo standard error is s^2 sqrt(2/n) ~ 0.0045 s^2, while
    # the bias at 4 steps is ~10x that; errors are compared on the same noise stream per N.
    sde = sd.VPSDE()
    s0 = 0.5
    gauss = sd.GaussianMixture(torch.tensor([[1.0]]), torch.tensor([[s0**2]]))
    score = gauss.score_fn(sde)
    target_var = s0**2 + sde.sigma(torch.tensor(T_END, dtype=torch.float64)).item() ** 2
    errors = []
    for n in [4, 8, 16, 32]:
        x = sample_sde(score, sde, (100_000, 1), method="euler_maruyama", num_steps=n, t_end=T_END,
                       generator=torch.Generator().manual_seed(3), dtype=torch.float64).x  # fmt: skip
        errors.append(abs(x.var().item() - target_var))
    standard_error = target_var * math.sqrt(2 / 100_000)
    print("EM variance errors", errors, "standard error", standard_error)
    assert errors[0] > errors[1] > errors[2]
    assert errors[0] > 10 * standard_error
    assert errors[-1] < errors[0] / 4


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_b_h_variants_keep_the_order(ode_problem, variant):
    # Zhao et al.'s fixed a_1 = 1/2 with B(h) = h or 1 - e^-h in the one-difference corrector:
    # a different error constant, the same order (3 for UniPC-2)
    _, sde, score, x_init, ref = ode_problem
    steps, errors = [20, 40, 80, 160], []
    for n in steps:
        stepper = sd.solvers.UniPC2(sde, score, variant=variant)
        ctx = sd.solvers.StepContext()
        grid = sd.time_grid(sde, n, "log_snr", t_end=T_END)
        x = x_init
        for i in range(n):
            x = stepper.step(x, grid[i], grid[i + 1], ctx)
        errors.append((x - ref).square().sum(1).mean().sqrt().item())
    assert abs(fitted_slope(steps, errors) - 3) < 0.3, errors


def test_unipc_rejects_an_unknown_variant():
    with pytest.raises(ValueError, match="variant must be one of"):
        sd.solvers.UniPC3(sd.VPSDE(), lambda x, t: x, variant="bh3")


@pytest.mark.parametrize("h", [1e-3, 0.3, 1.9, 2.1, 6.0])
@pytest.mark.parametrize("num_nodes", [1, 2, 3, 4])
def test_exponential_weights_integrate_polynomials_exactly(h, num_nodes):
    # sum_k w_k p(u_k) = h int_0^1 e^{-(1-u)h} p(u) du for every p of degree < num_nodes
    h = torch.tensor(h, dtype=torch.float64)
    nodes = torch.tensor([1.0, 0.0, -0.7, -1.9][:num_nodes], dtype=torch.float64)
    weights = sd.solvers.exponential_weights(h, nodes)
    u = torch.linspace(0, 1, 400_001, dtype=torch.float64)
    kernel = h * torch.exp(-(1 - u) * h)
    for degree in range(num_nodes):
        exact = torch.trapezoid(kernel * u**degree, u)
        torch.testing.assert_close((weights * nodes**degree).sum(), exact, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("first_bad", [0, 255, 256, 513, 599])
def test_first_non_finite_is_found_across_chunks(first_bad):
    # records are stacked every CHUNK (256) evaluations; the report must name the first bad one
    watch = FirstNonFinite()
    for i in range(600):
        value = torch.full((3, 2), math.nan if i in (first_bad, 599) else 1.0)
        watch.record(value, i + 1, torch.tensor(i / 1000, dtype=torch.float64))
    with pytest.raises(NonFiniteError, match=rf"at step {first_bad + 1} \(t={first_bad / 1000:.6g}\)"):
        watch.raise_if_any("x")
    clean = FirstNonFinite()
    for i in range(300):
        clean.record(torch.ones(2), i, torch.tensor(0.0))
    clean.raise_if_any("x")  # all finite: no error
    FirstNonFinite().raise_if_any("x")  # nothing recorded: no error


# ---------------------------------------------------------------------------------------------
# Tsitouras' 5(4) tableau (run by torchdiffeq's adaptive solver)


def _order_conditions(weights, a, c):
    """Residuals of the order conditions up to order 5 (1 + 1 + 2 + 4 + 9 = 17, one per rooted
    tree) for an explicit tableau: weights ``(s,)``, ``a`` ``(s, s)``, nodes ``c`` ``(s,)``."""
    b, ac = weights, a @ c
    return torch.stack([
        b.sum() - 1, b @ c - 1 / 2,
        b @ c**2 - 1 / 3, b @ ac - 1 / 6,
        b @ c**3 - 1 / 4, b @ (c * ac) - 1 / 8, b @ (a @ c**2) - 1 / 12, b @ (a @ ac) - 1 / 24,
        b @ c**4 - 1 / 5, b @ (c**2 * ac) - 1 / 10, b @ (c * (a @ c**2)) - 1 / 15, b @ (c * (a @ ac)) - 1 / 30,
        b @ ac**2 - 1 / 20, b @ (a @ c**3) - 1 / 20, b @ (a @ (c * ac)) - 1 / 40, b @ (a @ a @ c**2) - 1 / 60,
        b @ (a @ a @ ac) - 1 / 120,
    ])  # fmt: skip


def test_tsit5_tableau_has_order_5_with_an_embedded_order_4():
    from scoresde.solvers import tsit5

    a = torch.zeros(7, 7, dtype=torch.float64)
    for i, row in enumerate(tsit5.A):
        a[i + 1, : len(row)] = torch.tensor(row, dtype=torch.float64)
    c = torch.tensor((0.0, *tsit5.C), dtype=torch.float64)
    torch.testing.assert_close(a.sum(1), c, rtol=0, atol=1e-14)  # nodes are the row sums
    b, b_hat = torch.tensor(tsit5.B, dtype=torch.float64), torch.tensor(tsit5.B_HAT, dtype=torch.float64)
    assert _order_conditions(b, a, c).abs().max() < 1e-14
    assert _order_conditions(b_hat, a, c)[:8].abs().max() < 1e-14  # order 4 ...
    assert _order_conditions(b_hat, a, c)[8:].abs().max() > 1e-4  # ... and not 5: a real error estimate
    # the interpolant is the solution at theta = 1 and consistent (its weights sum to theta)
    for theta in (0.5, 1.0):
        weights = torch.tensor([sum(w * theta ** (j + 1) for j, w in enumerate(row)) for row in tsit5.INTERPOLANT],
                               dtype=torch.float64)
        assert weights.sum().item() == pytest.approx(theta, abs=1e-12)  # coefficients up to ~90, 16 digits
    torch.testing.assert_close(weights, b, rtol=0, atol=1e-12)


def test_method_tsit5_runs_our_tableau_whatever_torchdiffeq_calls_tsit5(monkeypatch):
    """torchdiffeq's main branch ships a 'tsit5' of its own: ours is registered under a name it
    does not use, so method='tsit5' keeps running our tableau even when torchdiffeq has one."""
    from torchdiffeq._impl.odeint import SOLVERS

    from scoresde.solvers import tsit5

    gmm, sde = overlapping_mixture_2d(), sd.VPSDE()
    x = gmm.sample(16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    before = sd.encode(gmm.score_fn(sde), sde, x, method="tsit5")
    solver = SOLVERS[tsit5.TORCHDIFFEQ_NAME]
    torch.testing.assert_close(solver.tableau.c_sol, torch.tensor(tsit5.B, dtype=torch.float64), rtol=0, atol=0)

    class TheirTsit5:  # a stand-in for a torchdiffeq release with its own method of that name
        def __init__(self, *args, **kwargs):
            raise AssertionError("torchdiffeq's tsit5 ran instead of ours")

    monkeypatch.setitem(SOLVERS, "tsit5", TheirTsit5)
    after = sd.encode(gmm.score_fn(sde), sde, x, method="tsit5")
    assert torch.equal(before.z, after.z) and before.nfe == after.nfe
    assert not torch.equal(before.z, sd.encode(gmm.score_fn(sde), sde, x, method="dopri5").z)
