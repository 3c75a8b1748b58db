import math

import pytest
import torch

from scoresde.metrics import energy_distance, mmd, pathwise_rmse, sliced_wasserstein


def test_sliced_wasserstein_zero_on_identical_and_sees_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(x, x, 16, torch.Generator().manual_seed(1)) == 0
    floor = sliced_wasserstein(x, y, 64, torch.Generator().manual_seed(1))
    # a shift c along a random unit direction gives SW^2 ~ c^2 E[theta_1^2] = c^2 / d
    shifted = sliced_wasserstein(x, y + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64), 64,
                                 torch.Generator().manual_seed(1))  # fmt: skip
    assert floor < 0.05 < shifted
    assert abs(shifted.item() - (0.25 / 3) ** 0.5) < 0.06


def test_sliced_wasserstein_errors():
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein(torch.zeros(4, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="num_projections must be a positive int"):
        sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 2), num_projections=0)


def test_pathwise_rmse_is_the_root_mean_squared_per_sample_distance():
    reference = torch.zeros(3, 2, 2)
    x = reference.clone()
    x[0, 0, 0], x[1] = 3.0, 1.0  # per-sample distances 3, 2, 0
    assert pathwise_rmse(x, reference).item() == pytest.approx((13 / 3) ** 0.5)
    with pytest.raises(ValueError, match="same shape"):
        pathwise_rmse(x, reference[:2])


def _replicates(metric, shift, dim, reps=100, n=300):
    """``reps`` independent estimates between N(0, I) and N(shift e_1, I) samples of size ``n``."""
    g = torch.Generator().manual_seed(7)
    offset = torch.zeros(dim, dtype=torch.float64)
    offset[0] = shift
    return torch.stack([
        metric(torch.randn(n, dim, generator=g, dtype=torch.float64),
               torch.randn(n, dim, generator=g, dtype=torch.float64) + offset)
        for _ in range(reps)
    ])  # fmt: skip


def _mean_abs_normal(mu, var):
    """E|Z| for Z ~ N(mu, var) (the folded normal mean)."""
    s = math.sqrt(var)
    return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * var)) + mu * math.erf(mu / (s * math.sqrt(2)))


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_energy_distance_is_unbiased_for_the_closed_form(shift):
    # 1-D, X ~ N(0, 1), Y ~ N(shift, 1): X - Y ~ N(-shift, 2), X - X' ~ N(0, 2), so
    # E = 2 E|N(shift, 2)| - 2 E|N(0, 2)|; the mean of 100 unbiased estimates is within 4 standard errors
    estimates = _replicates(energy_distance, shift, dim=1)
    truth = 2 * _mean_abs_normal(shift, 2.0) - 2 * _mean_abs_normal(0.0, 2.0)
    standard_error = estimates.std() / len(estimates) ** 0.5
    assert abs(estimates.mean().item() - truth) < 4 * standard_error
    if shift:
        assert truth > 20 * standard_error  # the shift is seen


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_mmd_is_unbiased_for_the_closed_form(shift):
    # Gaussian kernel of bandwidth l between N(0, I_d) and N(mu, I_d):
    # E k(X, X') = E k(Y, Y') = (l^2 / (l^2 + 2))^(d/2), E k(X, Y) = that * exp(-|mu|^2 / (2 (l^2 + 2)))
    dim, bandwidth = 3, 1.5
    estimates = _replicates(lambda x, y: mmd(x, y, bandwidth), shift, dim=dim)
    c = (bandwidth**2 / (bandwidth**2 + 2)) ** (dim / 2)
    truth = 2 * c * (1 - math.exp(-(shift**2) / (2 * (bandwidth**2 + 2))))
    standard_error = estimates.std() / len(estimates) ** 0.5
    assert abs(estimates.mean().item() - truth) < 4 * standard_error
    if shift:
        assert truth > 20 * standard_error


def test_sample_distances_errors():
    with pytest.raises(ValueError, match="one event shape"):
        energy_distance(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="n >= 2"):
        mmd(torch.zeros(1, 2), torch.zeros(4, 2), 1.0)
    with pytest.raises(ValueError, match="bandwidth must be a positive number, got 0"):
        mmd(torch.zeros(4, 2), torch.zeros(4, 2), 0)
