import math

import pytest
import torch

import scoresde as sd
from scoresde.timesteps import check_time_grid, time_grid

SDES = [sd.VPSDE(), sd.VPSDE(schedule="cosine"), sd.SubVPSDE(), sd.VESDE()]


class PlainSDE(sd.SDE):
    def drift(self, x, t):
        return -0.5 * x

    def diffusion(self, t):
        return torch.ones_like(t)


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("kind", ["uniform", "quadratic", "log_snr", "karras"])
def test_grid_endpoints_and_monotone(sde, kind):
    grid = time_grid(sde, 25, kind, t_end=1e-3)
    assert grid.shape == (26,) and grid.dtype == torch.float64
    assert grid[0] == sde.T and grid[-1] == 1e-3
    assert (grid[1:] < grid[:-1]).all()


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_log_snr_grid_is_uniform_in_log_snr(sde):
    lam = sde.log_snr(time_grid(sde, 10, "log_snr", t_end=1e-3))
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(10), rtol=1e-8)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_karras_grid_is_uniform_in_sigma_over_alpha_to_the_one_over_rho(sde):
    t = time_grid(sde, 10, "karras", t_end=1e-3, rho=7.0)
    root = (sde.sigma(t) / sde.alpha(t)) ** (1 / 7)
    assert torch.allclose(root.diff(), root.diff()[0].expand(10), rtol=1e-8)


def test_quadratic_and_uniform_formulas():
    sde = sd.VPSDE()
    u = torch.linspace(0, 1, 5, dtype=torch.float64)
    assert torch.allclose(time_grid(sde, 4, "uniform", t_end=0.0), 1 - u)
    assert torch.allclose(time_grid(sde, 4, "quadratic", t_end=0.0), (1 - u) ** 2)


def test_grid_device_and_dtype():
    grid = time_grid(sd.VESDE(), 3, dtype=torch.float32, device="cpu")
    assert grid.dtype == torch.float32 and grid.device.type == "cpu"


def test_plain_sde_gets_t_space_grids():
    assert time_grid(PlainSDE(), 4, "quadratic").shape == (5,)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_steps": 0}, ValueError, "num_steps must be an int >= 1"),
        ({"num_steps": 2.0}, ValueError, "num_steps must be an int >= 1"),
        ({"kind": "cosine"}, ValueError, "kind must be one of"),
        ({"t_end": 1.5}, ValueError, "need 0 <= t_end < t_start"),
        ({"t_start": 2.0}, ValueError, "need 0 <= t_end < t_start"),
        ({"kind": "log_snr", "t_end": 0.0}, ValueError, "needs t_end > 0"),
        ({"kind": "karras", "rho": -1.0}, ValueError, "rho must be a finite number > 0"),
    ],
)
def test_time_grid_errors(kwargs, error, match):
    kwargs = {"num_steps": 4, **kwargs}
    with pytest.raises(error, match=match):
        time_grid(sd.VPSDE(), **kwargs)


def test_log_snr_grid_refuses_plain_sde():
    with pytest.raises(TypeError, match="needs a LinearSDE"):
        time_grid(PlainSDE(), 4, "log_snr")


def test_grid_too_fine_for_float64_is_refused():
    with pytest.raises(ValueError, match="not strictly decreasing"):
        time_grid(sd.VPSDE(), 10, "uniform", t_start=1e-3, t_end=1e-3 - 1e-18)


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ([[1.0, 0.5]], "1-D grid of at least 2 times"),
        ([1.0], "1-D grid of at least 2 times"),
        ([1.0, math.nan], "must be finite"),
        ([0.5, 0.5, 0.1], "strictly decreasing"),
        ([0.1, 0.5], "strictly decreasing"),
        ([1.5, 0.1], r"must lie in \[0, T=1.0\]"),
        ([1.0, -0.1], r"must lie in \[0, T=1.0\]"),
    ],
)
def test_check_time_grid_errors(grid, match):
    with pytest.raises(ValueError, match=match):
        check_time_grid(sd.VPSDE(), grid)


def test_check_time_grid_accepts_and_converts():
    grid = check_time_grid(sd.VPSDE(), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float32))
    assert grid.dtype == torch.float64 and grid.tolist() == [1.0, 0.5, 0.0]
