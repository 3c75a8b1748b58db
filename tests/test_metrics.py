import pytest
import torch

from scoresde.metrics import pathwise_rmse, sliced_wasserstein


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
