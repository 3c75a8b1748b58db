"""The peer libraries, loaded softly, and adapters that drive them with our exact score.

k-diffusion (Crowson) works in the "sigma" parametrisation :math:`x_\\sigma = x_0 + \\sigma\\epsilon`
with a denoiser :math:`D(x_\\sigma, \\sigma) = E[x_0 \\mid x_\\sigma]`. A linear SDE's state is
:math:`x_t = \\alpha_t x_\\sigma` with :math:`\\sigma = \\sigma_t / \\alpha_t = e^{-\\lambda_t/2}`, so
:class:`KarrasDenoiser` maps :math:`\\sigma \\mapsto t = \\lambda^{-1}(-2\\log\\sigma)`, scales the
state by :math:`\\alpha_t` and returns our exact posterior mean. A sampler starts from
``x_init / alpha_T`` at :math:`\\sigma_{max} = \\sigma_T/\\alpha_T` and its output at
:math:`\\sigma = 0` is already in data space.

Only k-diffusion's ``sampling`` module is loaded: its package ``__init__`` imports clip, kornia,
wandb and torchvision, and ``sampling`` itself does ``from . import utils`` (PIL, safetensors,
torchvision) for one helper, ``append_dims``. :func:`load_k_diffusion_sampling` therefore
executes the installed ``k_diffusion/sampling.py`` file under a private package name whose
``utils`` is a stub holding :func:`append_dims`; it needs torch, torchdiffeq, torchsde,
scipy and tqdm. flow_matching (Meta) imports cleanly; its ``ODESolver.compute_likelihood``
integrates a velocity field from data at ``t = 1`` to noise at ``t = 0``, which
:class:`FlowMatchingVelocity` provides by a linear change of time.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from scoresde import LinearSDE

_KDIFF_PACKAGE = "_scoresde_peer_k_diffusion"
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def append_dims(x: Tensor, target_dims: int) -> Tensor:
    """``x`` with trailing singleton dimensions up to ``target_dims`` (k-diffusion's helper)."""
    if x.ndim > target_dims:
        raise ValueError(f"x has {x.ndim} dims, more than target_dims={target_dims}")
    return x[(...,) + (None,) * (target_dims - x.ndim)]


@cache
def load_k_diffusion_sampling() -> types.ModuleType | None:
    """k-diffusion's ``sampling`` module alone, or ``None`` when k-diffusion is not installed."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = next(iter(spec.submodule_search_locations))
    package = types.ModuleType(_KDIFF_PACKAGE)
    package.__path__ = [folder]
    utils = types.ModuleType(f"{_KDIFF_PACKAGE}.utils")
    utils.append_dims = append_dims  # the one helper sampling.py takes from k_diffusion.utils
    sys.modules[_KDIFF_PACKAGE] = package
    sys.modules[f"{_KDIFF_PACKAGE}.utils"] = utils
    sampling_spec = importlib.util.spec_from_file_location(f"{_KDIFF_PACKAGE}.sampling", f"{folder}/sampling.py")
    assert sampling_spec is not None and sampling_spec.loader is not None
    module = importlib.util.module_from_spec(sampling_spec)
    sys.modules[sampling_spec.name] = module
    sampling_spec.loader.exec_module(module)
    return module


@cache
def load_flow_matching_solver() -> type | None:
    """flow_matching's ``ODESolver`` class, or ``None`` when flow_matching is not installed."""
    if importlib.util.find_spec("flow_matching") is None:
        return None
    from flow_matching.solver import ODESolver

    return ODESolver


def karras_sigma(sde: LinearSDE, t: Tensor) -> Tensor:
    r""":math:`\sigma_t/\alpha_t = e^{-\lambda_t/2}`, k-diffusion's noise level at time ``t``."""
    return (-0.5 * sde.log_snr(t)).exp()


class KarrasDenoiser(nn.Module):
    r"""k-diffusion's ``model(x_sigma, sigma)`` from our ``denoiser_fn(x_t, t)`` (an exact
    :math:`E[x_0 \mid x_t]`). Counts its calls in ``calls``. The time of a noise level is solved
    once per call from the first sample's sigma (k-diffusion passes one sigma for the batch)."""

    def __init__(self, sde: LinearSDE, denoiser_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.sde = sde
        self.denoiser_fn = denoiser_fn
        self.calls = 0

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        sigma0 = sigma.reshape(-1)[:1].to(torch.float64)
        t = self.sde.inverse_log_snr(-2 * sigma0.log())
        alpha = self.sde.alpha(t).to(x.dtype)
        return self.denoiser_fn(alpha * x, t.expand(x.shape[0]))


class FlowMatchingVelocity(nn.Module):
    r"""flow_matching's ``velocity_model(x, t)`` with data at ``t = 1`` and noise at ``t = 0``:
    :math:`u(x, \tau) = -(T - t_{min})\,v(x, t)` at :math:`t = T - \tau (T - t_{min})`, ``v`` the
    probability-flow velocity of ``sde`` and ``score_fn``, or ``velocity_fn(x, t)`` itself when given
    (a trained flow's raw velocity, e.g. :meth:`scoresde.FlowVelocity.velocity`). Counts its calls."""

    def __init__(self, sde: LinearSDE, score_fn: ScoreFn | None, t_min: float,
                 velocity_fn: ScoreFn | None = None) -> None:  # fmt: skip
        super().__init__()
        if (score_fn is None) == (velocity_fn is None):
            raise ValueError("pass one of score_fn (its probability flow is integrated) and velocity_fn")
        self.velocity_fn = velocity_fn or sde.probability_flow(score_fn).velocity
        self.T = sde.T
        self.span = sde.T - t_min
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
        self.calls += 1
        time = (self.T - t.to(torch.float64) * self.span).expand(x.shape[0])
        return -self.span * self.velocity_fn(x, time)


def seeded_noise_sampler(like: Tensor, seed: int) -> Callable[[Tensor, Tensor], Tensor]:
    """k-diffusion's ``noise_sampler(sigma, sigma_next)`` drawing fresh N(0, I) from one
    seeded generator, so its stochastic samplers are reproducible."""
    generator = torch.Generator(device=like.device).manual_seed(seed)

    def noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)

    return noise
