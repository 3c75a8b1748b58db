import pytest
import torch

import scoresde as sd


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


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: small networks on a shared 2-core machine are
    many times slower when OpenMP threads oversubscribe it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
