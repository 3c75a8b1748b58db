"""The benchmark problems: Gaussian mixtures with exact scores and densities under linear SDEs,
and the reference solution every deterministic sampler is measured against."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from scoresde.analytic import GaussianMixture
from scoresde.sample import sample_ode
from scoresde.sde import VESDE, VPSDE, LinearSDE, SubVPSDE
from scoresde.solvers._common import predict_x0

T_END = 1e-3
"""Samplers run from ``T`` down to ``t_end = 1e-3`` (Song et al.'s VP sampling end time), then
take a final Tweedie denoising step to the data (counted as one NFE)."""

REFERENCE_TOL = 1e-10


def _rotation(angle: float) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def mixture_2d() -> GaussianMixture:
    """Three well-separated components with unequal weights (0.5/0.3/0.2) and anisotropic,
    rotated covariances (axis ratios 3-6)."""
    means = torch.tensor([[-2.5, 0.0], [2.0, 1.5], [0.5, -2.5]], dtype=torch.float64)
    eig = torch.tensor([[0.30, 0.05], [0.20, 0.04], [0.25, 0.07]], dtype=torch.float64)
    rot = torch.stack([_rotation(a) for a in (0.4, -0.9, 1.6)])
    covs = rot @ torch.diag_embed(eig) @ rot.transpose(1, 2)
    return GaussianMixture(means, 0.5 * (covs + covs.transpose(1, 2)), torch.tensor([0.5, 0.3, 0.2]))


def mixture_16d(seed: int = 0) -> GaussianMixture:
    """Four components in 16-D, means of norm 3, random full covariances (eigenvalues 0.05-0.5),
    weights 0.4/0.3/0.2/0.1."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 16, generator=g, dtype=torch.float64)
    means = 3.0 * means / means.norm(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(torch.randn(4, 16, 16, generator=g, dtype=torch.float64))
    eig = 0.05 + 0.45 * torch.rand(4, 16, generator=g, dtype=torch.float64)
    covs = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    return GaussianMixture(means, 0.5 * (covs + covs.transpose(1, 2)), torch.tensor([0.4, 0.3, 0.2, 0.1]))


MIXTURES = {"2d": mixture_2d, "16d": mixture_16d}
SDES = {
    "vp": lambda: VPSDE(),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(sigma_min=0.01, sigma_max=50.0),
}


@dataclass
class Problem:
    """One mixture under one SDE, with ``num_samples`` initial states drawn from the prior
    (float64) and lazily computed reference and true samples."""

    mixture_name: str
    sde_name: str
    num_samples: int
    seed: int = 0
    gmm: GaussianMixture = field(init=False)
    sde: LinearSDE = field(init=False)

    def __post_init__(self) -> None:
        self.gmm = MIXTURES[self.mixture_name]()
        self.sde = SDES[self.sde_name]()
        self.score_fn = self.gmm.score_fn(self.sde)
        self.denoiser_fn = self.gmm.denoiser_fn(self.sde)
        self.log_prob_0 = self.gmm.log_prob

    @property
    def name(self) -> str:
        return f"{self.mixture_name}-{self.sde_name}"

    @property
    def dim(self) -> int:
        return self.gmm.dim

    @cached_property
    def x_init(self) -> Tensor:
        g = torch.Generator().manual_seed(self.seed + 1)
        return self.sde.prior_sample((self.num_samples, self.dim), generator=g, dtype=torch.float64)

    @cached_property
    def reference(self) -> Tensor:
        """The PF-ODE from ``x_init`` at ``T`` to ``t_end`` by dopri5 at rtol = atol = 1e-10
        (float64), then the exact Tweedie step: what every deterministic sampler approximates."""
        x = sample_ode(
            self.score_fn, self.sde, x_init=self.x_init, method="dopri5", rtol=REFERENCE_TOL, atol=REFERENCE_TOL,
            t_end=T_END,
        ).x  # fmt: skip
        return predict_x0(self.sde, self.score_fn, x, torch.tensor(T_END, dtype=torch.float64))

    def true_samples(self, copy: int) -> Tensor:
        """Exact data samples (``copy`` picks an independent draw, for noise floors)."""
        g = torch.Generator().manual_seed(self.seed + 100 + copy)
        return self.gmm.sample(self.num_samples, generator=g, dtype=torch.float64)

    def mode(self, x: Tensor) -> Tensor:
        """Most responsible mixture component of each sample, ``(batch,)``."""
        return self.gmm.component(x)
