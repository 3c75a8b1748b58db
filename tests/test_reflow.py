"""Reflow (scoresde/reflow.py): straightness against exact cases, and one rectification of a flow
trained on a 2-D mixture straightening it and cutting its 1- and 2-step error."""

import copy

import pytest
import torch

import scoresde as sd
from scoresde.reflow import Coupling, draw_coupling, reflow, straightness
from tests.conftest import separated_mixture_2d


def test_straightness_is_zero_for_straight_flows_and_positive_otherwise():
    path = sd.LinearPath()
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    point = sd.GaussianMixture(torch.tensor([[1.0, -0.5]]), torch.zeros(1, 2))  # straight paths
    s = straightness(point.score_fn(path), path, z, num_steps=20)
    assert s.value < 1e-20 and s.nfe == 3 * 20
    # a Gaussian of variance 0.1 on the VP SDE: x_t = r(t) x_T, r = s_t/s_T, s_t^2 = 0.1 alpha^2 + sigma^2,
    # straight lines through 0 at varying speed: S = ||x_T||^2 mean((r' - c)^2), c the chord's speed
    vp = sd.VPSDE()
    narrow = sd.GaussianMixture(torch.zeros(1, 2), 0.1 * torch.ones(1, 2))
    got = straightness(narrow.score_fn(vp), vp, z, num_steps=400)
    t = torch.linspace(vp.t_min, vp.T, 200_001, dtype=torch.float64)

    def r(t):
        s_T = (0.1 * vp.alpha(vp.T) ** 2 + vp.sigma(vp.T) ** 2).sqrt()
        return (0.1 * vp.alpha(t).square() + vp.sigma(t).square()).sqrt() / s_T

    dr = torch.func.jvp(r, (t,), (torch.ones_like(t),))[1]
    chord = (r(t[-1]) - r(t[0])) / (vp.T - vp.t_min)
    exact = torch.trapezoid((dr - chord).square(), t) / (vp.T - vp.t_min) * z.square().sum(1)
    torch.testing.assert_close(got.per_sample, exact, rtol=2e-3, atol=0)
    assert got.value > 0.5


def test_coupling_noise_puts_the_start_on_the_path():
    path, gmm = sd.LinearPath(), separated_mixture_2d()
    z = path.prior_sample((16, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = draw_coupling(gmm.score_fn(path), path, z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(path.alpha(path.T) * c.data + path.sigma(path.T) * c.noise, z)
    assert len(c) == 16 and c.nfe > 0


def test_reflow_straightens_the_flow_and_cuts_the_few_step_error():
    """Measured (separated 2-D mixture, MLP 64x2, 1500 + 800 steps, ~7 s): straightness 1.25 ± 0.02 ->
    0.003; RMSE against each flow's own dopri5 solution from the same noise, 1 Euler step 2.08 -> 0.16,
    2 steps 0.82 -> 0.10."""
    path, gmm = sd.LinearPath(), separated_mixture_2d()
    torch.manual_seed(0)
    flow = sd.FlowVelocity(sd.nn.MLP(2, hidden=64, depth=2), path)
    g = torch.Generator().manual_seed(0)
    sd.fit(flow, path, lambda n, g: gmm.sample(n, generator=g), steps=1500, batch_size=256, lr=3e-3,
           objective="flow_matching", generator=g)  # fmt: skip
    noise = torch.randn(2500, 2, generator=g)
    coupling = draw_coupling(flow, path, noise[:2000])
    rectified = copy.deepcopy(flow)
    reflow(rectified, path, coupling, steps=800, batch_size=256, lr=1e-3, generator=g)

    test_noise = noise[2000:]
    before, after = (straightness(m, path, test_noise) for m in (flow, rectified))
    assert after.value < 0.05 * before.value and before.value - after.value > 10 * before.standard_error

    def rmse(model, k):
        ref = sd.sample_ode(model, path, x_init=test_noise, method="dopri5", rtol=1e-6, atol=1e-6).x
        x = sd.sample_ode(model, path, x_init=test_noise, method="euler", num_steps=k, grid="uniform").x
        return (x - ref).square().sum(1).mean().sqrt().item()

    for k in (1, 2):
        assert rmse(rectified, k) < 0.3 * rmse(flow, k), k
    # the rectified flow still draws the mixture: most of its samples sit in the modes
    samples = sd.sample_ode(rectified, path, x_init=test_noise, method="euler", num_steps=2, grid="uniform").x
    assert gmm.log_prob(samples).median() > gmm.log_prob(gmm.sample(500, generator=g)).quantile(0.2)


def test_reflow_refuses_too_few_pairs():
    path = sd.LinearPath()
    model = sd.FlowVelocity(sd.nn.MLP(2, hidden=8, depth=1), path)
    few = Coupling(torch.randn(100, 2), torch.randn(100, 2), nfe=0)
    with pytest.raises(ValueError, match="reflow needs at least batch_size=256 pairs, got 100"):
        reflow(model, path, few, batch_size=256)
    with pytest.raises(TypeError, match="reflow trains a FlowVelocity, got EpsilonScore"):
        reflow(sd.EpsilonScore(sd.nn.MLP(2), path), path, few, batch_size=8)
    with pytest.raises(ValueError, match="num_steps must be an int >= 2, got 1"):
        straightness(model, path, torch.randn(4, 2), num_steps=1)
