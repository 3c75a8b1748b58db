"""Per-sample seeds (scoresde.noise): the draws are standard normal and independent, and a
sample's draws, hence its samples and Hutchinson probes, do not depend on the batch it is in."""

import math

import pytest
import torch
from scipy import stats

import scoresde as sd
from scoresde.noise import SampleNoise
from tests.conftest import overlapping_mixture_2d

Z_CRIT = 4.5  # standard errors allowed (two-sided p ~ 7e-6 per check)


def test_draws_are_standard_normal_and_independent():
    """Over 400k values: mean 0 and variance 1 within Z_CRIT standard errors, a KS test against
    N(0, 1), and no correlation between draws, samples or neighbouring elements (each estimate
    has standard error 1/sqrt(n))."""
    noise = SampleNoise(7)
    z1 = noise.randn_like(torch.empty(4000, 50, dtype=torch.float64))
    z2 = noise.randn_like(torch.empty(4000, 50, dtype=torch.float64))
    n = z1.numel()
    assert abs(z1.mean().item()) < Z_CRIT / math.sqrt(n)
    assert abs(z1.var().item() - 1) < Z_CRIT * math.sqrt(2 / n)
    assert stats.kstest(z1.flatten().numpy(), "norm").pvalue > 1e-4
    for a, b in ((z1, z2), (z1[1:], z1[:-1]), (z1[:, 1:], z1[:, :-1])):
        assert abs((a * b).mean().item()) < Z_CRIT / math.sqrt(a.numel())


def test_a_sample_gets_the_same_draws_in_any_batch():
    whole = SampleNoise(3)
    first, second = whole.randn_like(torch.empty(64, 3, 4)), whole.randn_like(torch.empty(64, 3, 4))
    part = SampleNoise(3, indices=[40, 5, 63])
    assert torch.equal(part.randn_like(torch.empty(3, 3, 4)), first[[40, 5, 63]])
    assert torch.equal(part.randn_like(torch.empty(3, 3, 4)), second[[40, 5, 63]])
    assert not torch.equal(SampleNoise(4).randn_like(torch.empty(64, 3, 4)), first)  # the seed matters


SAMPLERS = {
    # Song et al.'s Langevin step size uses batch-mean norms, which couples a batch's samples
    "pc": lambda score, sde, **kw: sd.sample_pc(
        score, sde, num_steps=20, t_end=1e-3, corrector_norm="per_sample", **kw
    ),
    "euler_maruyama": lambda score, sde, **kw: sd.sample_sde(score, sde, num_steps=20, t_end=1e-3, **kw),
    "ancestral": lambda score, sde, **kw: sd.sample_sde(score, sde, method="ancestral", num_steps=20, **kw),
    "dpmpp_2m": lambda score, sde, **kw: sd.sample_ode(score, sde, method="dpmpp_2m", num_steps=10, t_end=1e-3, **kw),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sample_i_is_the_same_for_batch_sizes_1_7_and_64(sampler):
    sde, score = sd.VPSDE(), overlapping_mixture_2d().score_fn(sd.VPSDE())
    run = SAMPLERS[sampler]
    whole = run(score, sde, shape=(64, 2), seed=11).x
    for indices in ([33], list(range(20, 27))):
        part = run(score, sde, shape=(len(indices), 2), seed=11, sample_indices=indices).x
        assert torch.equal(part, whole[indices])


def test_batch_norm_langevin_couples_the_batch():
    """The one exception, documented: with the default batch-mean norms a sample moves with its batch."""
    sde, score = sd.VPSDE(), overlapping_mixture_2d().score_fn(sd.VPSDE())
    whole = sd.sample_pc(score, sde, (64, 2), num_steps=20, t_end=1e-3, seed=11).x
    part = sd.sample_pc(score, sde, (1, 2), num_steps=20, t_end=1e-3, seed=11, sample_indices=[33]).x
    assert not torch.equal(part, whole[[33]])


def test_per_sample_hutchinson_probes_do_not_depend_on_the_batch():
    """The probes are the sample's own; on a fixed grid (rk4) the whole solve is then per sample."""
    sde, gmm = sd.VPSDE(), overlapping_mixture_2d()
    x = gmm.sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = {"divergence": "hutchinson", "method": "rk4", "num_steps": 20, "seed": 5}
    whole = sd.log_likelihood(gmm.score_fn(sde), sde, x, **kw).log_prob
    part = sd.log_likelihood(gmm.score_fn(sde), sde, x[[3, 9]], sample_indices=[3, 9], **kw).log_prob
    torch.testing.assert_close(part, whole[[3, 9]], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: SampleNoise(-1), ValueError, r"seed must be an int in \[0, 2\^63\), got -1"),
        (lambda: SampleNoise(1, indices=[0.5]), ValueError, "indices must be a 1-D integer tensor"),
        (lambda: SampleNoise(1, indices=[-2]), ValueError, r"indices must be >= 0, got \[-2\]"),
        (lambda: SampleNoise(1, indices=[0, 1]).randn_like(torch.empty(3, 2)), ValueError,
         "2 sample indices for a batch of 3"),
        (lambda: sd.sample_pc(lambda x, t: -x, sd.VPSDE(), (4, 2), num_steps=2, seed=1,
                              generator=torch.Generator()), ValueError, "give generator or seed"),
        (lambda: sd.sample_pc(lambda x, t: -x, sd.VPSDE(), (4, 2), num_steps=2, sample_indices=[0, 1, 2, 3]),
         ValueError, "sample_indices need a seed"),
        (lambda: sd.sample_sde(lambda x, t: -x, sd.VPSDE(), (4, 2), method="srk", num_steps=2, seed=1), ValueError,
         "torchsde's Brownian motion is one for the batch"),
    ],
)  # fmt: skip
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
