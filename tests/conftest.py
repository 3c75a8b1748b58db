import pytest
import torch

import scoresde as sd

# One intra-op thread: on a CPU shared with other jobs, torch's thread pool made these small
# problems ~80x slower (0.4 ms -> 31 ms per mixture-score call on 256 points) while waiting.
torch.set_num_threads(1)


def overlapping_mixture_2d() -> sd.GaussianMixture:
    """Two overlapping correlated components: no sharp basin boundary, so ODE errors are
    smooth in the step size (no sample flips mode)."""
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.5]])
    covs = torch.tensor([[[0.6, 0.2], [0.2, 0.5]], [[0.5, -0.1], [-0.1, 0.4]]])
    return sd.GaussianMixture(means, covs, torch.tensor([0.4, 0.6]))


def separated_mixture_2d() -> sd.GaussianMixture:
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    covs = torch.tensor([[0.3, 0.2], [0.2, 0.5]])
    return sd.GaussianMixture(means, covs)


def mixture_16d() -> sd.GaussianMixture:
    g = torch.Generator().manual_seed(7)
    means = 1.5 * torch.randn(3, 16, generator=g, dtype=torch.float64)
    covs = 0.2 + 0.4 * torch.rand(3, 16, generator=g, dtype=torch.float64)
    return sd.GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


SDE_FACTORIES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=20.0),
}


@pytest.fixture(params=list(SDE_FACTORIES), ids=list(SDE_FACTORIES))
def any_sde(request):
    return SDE_FACTORIES[request.param]()


class PlainOU(sd.SDE):
    """A user's SDE with only drift and diffusion: dx = -x/2 dt + dw, the VP SDE with
    beta = 1 (so ``sd.VPSDE(beta_min=1, beta_max=1)`` gives its exact score)."""

    def drift(self, x, t):
        return -0.5 * x

    def diffusion(self, t):
        return torch.ones_like(t)


def all_sdes():
    return [
        sd.VPSDE(),
        sd.VPSDE(schedule="cosine"),
        sd.SubVPSDE(),
        sd.VESDE(),
        sd.VESDE(sigma_min=0.05, sigma_max=5.0),
    ]


SDE_IDS = ["vp", "vp-cosine", "subvp", "ve", "ve-small"]


@pytest.fixture(params=all_sdes(), ids=SDE_IDS)
def sde(request):
    return request.param


def mixture(dim: int, num_components: int = 3, seed: int = 0) -> sd.GaussianMixture:
    """A mixture with unequal weights and anisotropic full covariances."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(num_components, dim, generator=g, dtype=torch.float64)
    a = torch.randn(num_components, dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    covs = 0.3 * a @ a.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=torch.float64)
    weights = torch.arange(1, num_components + 1, dtype=torch.float64)
    return sd.GaussianMixture(means, covs, weights)
