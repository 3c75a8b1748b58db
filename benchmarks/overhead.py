"""Solver overhead: the time a sampler spends per NFE outside the network, against one forward
pass of the digits U-Net at batch 256 (8x8, one channel, float32), measured interleaved.

The solver's own time is a full ``sample_ode`` run with a free score (``zeros_like``) divided
by its NFE. When ``scoresde.nn.unet`` is not available (it comes with the images branch), a
stand-in network of residual 3x3 convolutions at the same resolution is timed instead and
the row says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from scoresde import VPSDE, sample_ode
from scoresde.benchmark import interleaved_times

BATCH = 256
SHAPE = (1, 8, 8)
STEPS = 20
SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3")


class _StandIn(nn.Module):
    """Four residual blocks of two 3x3 convolutions, 64 channels, on 8x8 inputs."""

    def __init__(self, channels: int = 64, blocks: int = 4) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                          nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
            for _ in range(blocks)
        )  # fmt: skip
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def digits_network() -> tuple[nn.Module, str]:
    """The digits U-Net (default configuration) if available, else the stand-in; and its name."""
    try:
        from scoresde.nn.unet import UNet
    except ImportError:
        return _StandIn().eval(), "stand-in (4 residual conv blocks, 64 ch; scoresde.nn.unet not in this branch)"
    return UNet(in_channels=1).eval(), "scoresde.nn.unet.UNet(in_channels=1), default configuration"


def run_overhead(repeats: int) -> list[dict]:
    """One row per solver: its own seconds per NFE, the network's seconds per forward, the ratio."""
    net, net_name = digits_network()
    x = torch.randn(BATCH, *SHAPE, generator=torch.Generator().manual_seed(0))
    t = torch.full((BATCH,), 0.5)
    sde = VPSDE()

    def free_score(z: Tensor, s: Tensor) -> Tensor:
        return torch.zeros_like(z)

    def forward() -> int:
        with torch.no_grad():
            net(x, t)
        return 1

    def solve(method: str) -> Callable[[], int]:
        return lambda: sample_ode(free_score, sde, x_init=x, method=method, num_steps=STEPS, t_end=1e-3).nfe

    calls = [forward] + [solve(m) for m in SOLVERS]
    seconds, nfes = interleaved_times(calls, repeats)
    net_seconds = seconds[0]
    return [
        {"solver": m, "network": net_name, "batch": BATCH, "nfe": nfe, "solver_seconds_per_nfe": sec / nfe,
         "network_seconds_per_forward": net_seconds, "ratio": sec / nfe / net_seconds}
        for m, sec, nfe in zip(SOLVERS, seconds[1:], nfes[1:], strict=True)
    ]  # fmt: skip
