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

diffusers' multistep schedulers (UniPC, DPM-Solver++, DEIS) work on a discrete training
schedule :math:`\\bar\\alpha_k`; :func:`diffusers_scheduler` builds one from the SDE
(``trained_betas`` of 1000 steps uniform in ``t`` over ``[t_end, T]``, so its noise levels span
ours) with one of the scheduler's own grids (:data:`DIFFUSERS_GRIDS`), and
:func:`run_diffusers` drives it with the exact :math:`\\epsilon` at each step's own noise level
``scheduler.sigmas[i]``. diffusers needs no torch of its own (a plain ``pip install diffusers``).
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


@cache
def load_diffusers_schedulers() -> types.ModuleType | None:
    """``diffusers.schedulers``, or ``None`` when diffusers is not installed."""
    if importlib.util.find_spec("diffusers") is None:
        return None
    import diffusers.schedulers

    return diffusers.schedulers


DIFFUSERS_GRIDS: dict[str, dict[str, Any]] = {
    "linspace": {},  # the default: timesteps linspace(0, 999) rounded, from 999
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
}
"""The grids of diffusers' multistep schedulers, as their configuration options."""

TRAIN_STEPS = 1000


def diffusers_scheduler(kind: str, sde: LinearSDE, t_end: float, grid: str, **config: Any) -> Any:
    r"""diffusers' scheduler class ``kind`` (e.g. ``"UniPCMultistepScheduler"``) on the training
    schedule of ``sde``: :math:`\bar\alpha_k = \mathrm{sigmoid}(\lambda(t_k))` at
    :math:`t_k` uniform from ``t_end`` to ``T`` (``trained_betas``
    :math:`\beta_k = 1 - \bar\alpha_k/\bar\alpha_{k-1}`), with ``grid`` of :data:`DIFFUSERS_GRIDS`."""
    schedulers = load_diffusers_schedulers()
    if schedulers is None:
        raise RuntimeError("diffusers is not installed (pip install diffusers)")
    times = torch.linspace(t_end, sde.T, TRAIN_STEPS, dtype=torch.float64)
    alpha_bar = torch.sigmoid(sde.log_snr(times))
    betas = 1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return getattr(schedulers, kind)(
        num_train_timesteps=TRAIN_STEPS, trained_betas=betas.numpy(), **DIFFUSERS_GRIDS[grid], **config
    )


def run_diffusers(scheduler: Any, sde: LinearSDE, denoiser_fn: ScoreFn, x_init: Tensor, num_steps: int,
                  dtype: torch.dtype) -> tuple[Tensor, Tensor]:  # fmt: skip
    r"""``num_steps`` steps of ``scheduler`` from our ``x_init`` at ``T``, driven by the exact
    :math:`\epsilon = (x_t - \alpha_t D(x_t, t))/\sigma_t` at the time :math:`t` of each step's
    noise level ``scheduler.sigmas[i]`` (:math:`\sigma/\alpha`, the state scaled by
    :math:`\alpha = (1 + \sigma^2)^{-1/2}` in the scheduler's convention), the state held in
    ``dtype``. Returns the final state in sigma space, :math:`x/\alpha` (float64: the data
    estimate when the scheduler ends at :math:`\sigma = 0`), and the final noise level."""
    scheduler.set_timesteps(num_steps)
    sigmas = scheduler.sigmas.to(torch.float64)
    t_start = torch.tensor(sde.T, dtype=torch.float64)
    x = (x_init / sde.alpha(t_start) / (1 + sigmas[0] ** 2).sqrt()).to(dtype)
    for i, timestep in enumerate(scheduler.timesteps):
        t = sde.inverse_log_snr(-2 * sigmas[i].log()).reshape(1)
        x_t = x.to(torch.float64) * (1 + sigmas[i] ** 2).sqrt() * sde.alpha(t)
        eps = (x_t - sde.alpha(t) * denoiser_fn(x_t, t.expand(x.shape[0]))) / sde.sigma(t)
        x = scheduler.step(eps.to(dtype), timestep, x).prev_sample
    return x.to(torch.float64) * (1 + sigmas[-1] ** 2).sqrt(), sigmas[-1]


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
