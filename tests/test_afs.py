"""The analytical first step (scoresde.solvers.afs): one NFE saved, exact for N(0, I) data."""

import pytest
import torch

import scoresde as sd
from scoresde.solvers.afs import gaussian_score
from tests.conftest import SDE_FACTORIES, overlapping_mixture_2d

FIXED_STEP = ["euler", "heun", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3", "ipndm", "deis_3"]


def _standard_normal() -> sd.GaussianMixture:
    return sd.GaussianMixture(torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
def test_gaussian_score_is_the_exact_score_of_standard_normal_data(sde_name):
    sde = SDE_FACTORIES[sde_name]()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([1e-3, 0.1, 0.4, 0.8, sde.T], dtype=torch.float64)
    torch.testing.assert_close(gaussian_score(sde, x, t), _standard_normal().score_fn(sde)(x, t), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize("method", FIXED_STEP)
def test_afs_saves_one_evaluation_and_changes_nothing_for_standard_normal_data(sde_name, method):
    sde = SDE_FACTORIES[sde_name]()
    score = _standard_normal().score_fn(sde)
    x_init = sde.prior_sample((16, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kwargs = {"x_init": x_init, "method": method, "num_steps": 4, "t_end": 1e-3}
    plain = sd.sample_ode(score, sde, **kwargs)
    afs = sd.sample_ode(score, sde, afs=True, **kwargs)
    assert afs.nfe == plain.nfe - 1
    torch.testing.assert_close(afs.x, plain.x, rtol=1e-12, atol=1e-12)


def test_afs_replaces_only_the_first_evaluation_at_the_start_time():
    # on a mixture the first score differs; the rest of the run evaluates the model as usual
    sde = sd.VPSDE()
    exact = overlapping_mixture_2d().score_fn(sde)
    seen = []

    def score(x, t):
        seen.append(t[0].item())
        return exact(x, t)

    x_init = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = torch.tensor([1.0, 0.6, 0.3, 0.1, 1e-3], dtype=torch.float64)
    res = sd.sample_ode(score, sde, x_init=x_init, method="ipndm", timesteps=grid, afs=True)
    assert seen == pytest.approx(grid[1:-1].tolist()) and res.nfe == 3


def test_afs_refuses_what_it_cannot_do():
    sde = sd.VPSDE()
    score = _standard_normal().score_fn(sde)
    with pytest.raises(ValueError, match="torchdiffeq's method='dopri5'"):
        sd.sample_ode(score, sde, (4, 3), afs=True)
    with pytest.raises(TypeError, match="afs must be True or False, got 1"):
        sd.sample_ode(score, sde, (4, 3), method="ipndm", num_steps=3, afs=1)

    class Drifting(sd.SDE):  # an SDE without a Gaussian transition kernel
        T = 1.0

        def drift(self, x, t):
            return -x

        def diffusion(self, t):
            return torch.ones_like(t)

        def prior_sample(self, shape, generator=None, dtype=None, device=None):
            return torch.randn(shape, generator=generator, dtype=dtype, device=device)

        def prior_log_prob(self, z):
            return -0.5 * z.square().sum(-1)

    with pytest.raises(TypeError, match="afs=True"):
        sd.sample_ode(lambda x, t: -x, Drifting(), (4, 3), method="euler", num_steps=3, afs=True)
