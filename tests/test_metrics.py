import math

import pytest
import torch

from scoresde.data import load_digits
from scoresde.metrics import (
    digits_frechet_distance,
    energy_distance,
    frechet_distance,
    mmd,
    pathwise_rmse,
    sliced_wasserstein,
)
from scoresde.nn.digits_features import pretrained


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


def _with_moments(mean, cov, n=500, seed=0):
    """n points whose sample mean and covariance are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # sample covariance I
    return z @ torch.linalg.cholesky(cov).T + mean


def test_frechet_distance_matches_the_closed_form_of_two_gaussians():
    # 2x2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S1^1/2 S2 S1^1/2, with tr M = tr(S1 S2)
    # and det M = det S1 det S2; the two covariances do not commute
    mean_1, mean_2 = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([2.0, -1.0], dtype=torch.float64)
    cov_1 = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    cov_2 = torch.tensor([[0.3, -0.2], [-0.2, 1.5]], dtype=torch.float64)
    cross = math.sqrt((cov_1 @ cov_2).trace() + 2 * math.sqrt(cov_1.det() * cov_2.det()))
    truth = (mean_1 - mean_2).square().sum() + cov_1.trace() + cov_2.trace() - 2 * cross
    x, y = _with_moments(mean_1, cov_1), _with_moments(mean_2, cov_2, n=300, seed=1)
    assert frechet_distance(x, y).item() == pytest.approx(truth.item(), rel=1e-10)
    assert frechet_distance(y, x).item() == pytest.approx(truth.item(), rel=1e-10)
    assert abs(frechet_distance(x, x).item()) < 1e-10
    with pytest.raises(ValueError, match=r"\(n, d\) features"):
        frechet_distance(x, y[:, :1])


def test_digits_features_classify_held_out_digits_and_separate_distributions():
    test, train = load_digits("test"), load_digits("train")
    net = pretrained()
    assert (net(test.levels).argmax(1) == test.labels).double().mean() > 0.95
    floor = digits_frechet_distance(train.levels[: len(test)], test.levels)  # one law, two samples
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 17, test.levels.shape, generator=g, dtype=torch.uint8)
    low_digits = train.levels[train.labels < 5][: len(test)]
    # measured: 33 (the two-sample floor), 187 (digits 0-4 only), 546 (uniform noise)
    low, noisy = digits_frechet_distance(low_digits, test.levels), digits_frechet_distance(noise, test.levels)
    assert 3 * floor < low < noisy
    with pytest.raises(ValueError, match=r"\(batch, 1, 8, 8\) digit images"):
        net.features(torch.zeros(4, 64, dtype=torch.uint8))
