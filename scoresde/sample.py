r"""Sampling loops: the reverse SDE, predictor–corrector, and the probability-flow ODE.

Every sampler starts at ``t_start`` (default ``T``) from a prior draw or ``x_init``, runs down a
descending time grid to ``t_end`` (default the SDE's ``t_min``) and returns a
:class:`SampleResult` with the exact number of score evaluations (NFE). Shared arguments:

* ``x_init``: the state at ``t_start`` instead of a prior draw (compare samplers on the same
  noise); never modified.
* ``timesteps``: an explicit descending grid (overrides ``num_steps``/``grid``/``t_end``).
* ``grid``: the kind of grid built from ``num_steps`` (see :mod:`scoresde.timesteps`).
* ``denoise``: finish with Tweedie's step :math:`x_0 = (x + \sigma^2 s(x, t_{end}))/\alpha`
  (one more NFE; needs a :class:`~scoresde.LinearSDE`).
* ``save_at``: times at which to keep the state in ``result.trajectory``, or ``"grid"`` for
  every grid point. A fixed-step loop adds those times to its grid.
* ``generator``, ``device``, ``dtype``: randomness and placement of the prior draw.
* ``seed``, ``sample_indices``: per-sample seeds instead of ``generator``
  (:class:`~scoresde.noise.SampleNoise`): the prior draw and every noise increment of sample
  ``sample_indices[b]`` (default ``b``) depend on ``(seed, index)`` only, so a sample is the same
  whatever the batch size or the batch it lands in (bit for bit on the same device and dtype),
  except where the update itself looks at the batch: the Langevin corrector's default batch-mean
  norms (``corrector_norm="per_sample"`` removes that coupling).
* ``progress``: a tqdm bar over the steps.
* ``step_hook``: a callable ``hook(step, x, t, s, ctx) -> x_s`` that runs each step of a fixed-step
  loop in its place: ``step(x)`` is the sampler's own update from ``t`` to ``s`` (0-d times) and
  ``ctx`` the :class:`~scoresde.solvers.StepContext` (``ctx.noise`` gives the run's noise, per-sample
  seeds included). A hook may change the state before or after the update, or run it more than once:
  imputation's replacement and RePaint resampling (:mod:`scoresde.guidance`) are hooks. The
  torchdiffeq and torchsde methods own their steps and refuse one.

A score function may declare the times it is valid on as ``score_fn.time_range = (t_lo, t_hi)``
(a classifier-guided score does, :class:`~scoresde.guidance.ClassifierGuidance`): every sampler
checks its grid against it once, before the first step, and names both ranges if it does not fit.

A state that becomes NaN or infinite raises :class:`~scoresde.solvers.NonFiniteError`
naming the first bad step. The fixed-step loops look every 32 steps and at the end (one host
sync each, none per step), so a run that went NaN stops within 32 steps of it.

``generator`` must be a ``torch.Generator``, ``device`` one this machine has, ``dtype`` (and
``x_init``) real floating-point: each is checked up front with an error naming the value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scoresde._tensor import check_device, check_finite, check_float, check_float_dtype, check_generator
from scoresde.noise import BatchNoise, Noise, SampleNoise, noise_source
from scoresde.progress import progress_bar
from scoresde.sde.base import SDE, ScoreFn
from scoresde.solvers import (
    CountingScore,
    FirstNonFinite,
    StepContext,
    predict_x0,
    require_linear_sde,
    require_sde,
)
from scoresde.solvers.afs import AnalyticFirstStep
from scoresde.solvers.correctors import Corrector
from scoresde.solvers.flow import check_flow_args, refuse_tolerances, solve_flow
from scoresde.solvers.methods import is_corrector, is_ode_solver, is_predictor, is_sde_solver, lookup
from scoresde.solvers.predictors import Predictor
from scoresde.solvers.sdeint import sdeint_reverse_sde
from scoresde.timesteps import check_time_grid, default_grid_kind, time_grid

SaveAt = Sequence[float] | Tensor | str | None
StepHook = Callable[[Callable[[Tensor], Tensor], Tensor, Tensor, Tensor, StepContext], Tensor]
"""``hook(step, x, t, s, ctx) -> x_s``: runs one step of a fixed-step loop (see the module docstring)."""


@dataclass
class Trajectory:
    """States saved along a run: ``t`` ``(k,)`` descending float64, ``x`` ``(k, batch, *event)``."""

    t: Tensor
    x: Tensor


@dataclass
class SampleResult:
    """``x`` ``(batch, *event)``; ``nfe`` the number of score evaluations; the saved trajectory."""

    x: Tensor
    nfe: int
    trajectory: Trajectory | None = None


# ---------------------------------------------------------------------------------------------
# boundary checks


def _noise(generator: torch.Generator | None, seed: int | None, indices: Tensor | Sequence[int] | None) -> Noise:
    check_generator(generator)
    return noise_source(generator, seed, indices)


def _initial_state(
    sde: SDE,
    shape: tuple[int, ...] | None,
    x_init: Tensor | None,
    noise: Noise,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Tensor:
    check_float_dtype(dtype)
    device = check_device(device)
    if x_init is None:
        if shape is None:
            raise ValueError("give shape=(batch, *event) or x_init")
        shape = tuple(shape)
        if len(shape) < 2 or not all(isinstance(n, int) and n > 0 for n in shape):
            raise ValueError(f"shape must be (batch, *event) of positive ints, got {shape!r}")
        if isinstance(noise, BatchNoise):
            return sde.prior_sample(shape, generator=noise.generator, device=device, dtype=dtype)
        z = noise.randn(shape, dtype=dtype or torch.get_default_dtype(), device=device)
        return z * sde.prior_std
    check_float(x_init, "x_init")
    if x_init.ndim < 2:
        raise ValueError(f"x_init must be (batch, *event), got shape {tuple(x_init.shape)}")
    if shape is not None and tuple(shape) != tuple(x_init.shape):
        raise ValueError(f"shape {tuple(shape)} does not match x_init's shape {tuple(x_init.shape)}")
    check_finite(x_init, "x_init")
    return x_init.to(device=device or x_init.device, dtype=dtype or x_init.dtype)


def _grid(
    sde: SDE, timesteps: Tensor | Sequence[float] | None, num_steps: int | None, kind: str, t_end: float | None
) -> Tensor:
    if timesteps is not None:
        grid = check_time_grid(sde, timesteps)
        if num_steps is not None and num_steps != len(grid) - 1:
            raise ValueError(f"num_steps={num_steps} does not match timesteps with {len(grid) - 1} steps")
        if t_end is not None:
            raise ValueError("give t_end or timesteps, not both")
        return grid.cpu()
    if num_steps is None:
        raise ValueError("give num_steps or timesteps")
    return time_grid(sde, num_steps, kind, t_end=t_end)


def _with_save_points(grid: Tensor, save_at: SaveAt) -> tuple[Tensor, Tensor]:
    """The grid with the ``save_at`` times merged in, and a boolean mask of the saved points."""
    if save_at is None:
        return grid, torch.zeros_like(grid, dtype=torch.bool)
    if isinstance(save_at, str):
        if save_at != "grid":
            raise ValueError(f"save_at must be times, 'grid' or None, got {save_at!r}")
        return grid, torch.ones_like(grid, dtype=torch.bool)
    times = torch.as_tensor(save_at, dtype=torch.float64).cpu().reshape(-1)
    if not torch.isfinite(times).all() or (times > grid[0]).any() or (times < grid[-1]).any():
        raise ValueError(f"save_at times must lie in [{grid[-1].item()}, {grid[0].item()}], got {times.tolist()}")
    merged = torch.cat([grid, times]).unique().flip(0)
    return merged, torch.isin(merged, times)


def _trajectory(grid: Tensor, mask: Tensor, states: list[Tensor]) -> Trajectory | None:
    if not mask.any():
        return None
    return Trajectory(t=grid[mask].to(states[0].device), x=torch.stack(states))


def _check_time_range(score_fn: ScoreFn, times: Tensor, sampler: str) -> None:
    """Refuse a grid that leaves the ``time_range`` a score function declares (if it declares one)."""
    time_range = getattr(score_fn, "time_range", None)
    if time_range is None:
        return
    lo, hi = time_range
    t_lo, t_hi = float(times.min()), float(times.max())
    if t_lo < lo or t_hi > hi:
        raise ValueError(
            f"{sampler} runs on t in [{t_lo:.6g}, {t_hi:.6g}] but its score function is valid on "
            f"[{lo:.6g}, {hi:.6g}] only ({type(score_fn).__name__}.time_range): sample within it (t_end >= {lo:.6g})"
        )


def _check_step_hook(step_hook: StepHook | None) -> None:
    if step_hook is not None and not callable(step_hook):
        raise TypeError(f"step_hook must be callable hook(step, x, t, s, ctx) -> x, got {type(step_hook).__name__}")


def _hooked(
    step: Callable[[Tensor, int, Tensor, Tensor], Tensor], hook: StepHook | None, ctx: StepContext
) -> Callable[[Tensor, int, Tensor, Tensor], Tensor]:
    """``step`` run through ``hook`` (unchanged without one)."""
    if hook is None:
        return step

    def hooked(x: Tensor, i: int, t: Tensor, s: Tensor) -> Tensor:
        return hook(lambda z: step(z, i, t, s), x, t, s, ctx)

    return hooked


def _check_denoise(sde: SDE, denoise: bool) -> None:
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be True or False, got {denoise!r}")
    if denoise:
        require_linear_sde(sde, "denoise=True (Tweedie's formula)")


def _check_afs(afs: bool, sde: SDE, torchdiffeq: bool, method: str) -> None:
    if not isinstance(afs, bool):
        raise TypeError(f"afs must be True or False, got {afs!r}")
    if afs and torchdiffeq:
        raise ValueError(
            f"afs=True replaces the first evaluation of this library's fixed-step solvers; torchdiffeq's "
            f"method={method!r} owns its evaluations: use 'ipndm', 'unipc_3', 'dpmpp_2m', ..."
        )
    if afs:
        require_linear_sde(sde, "afs=True (the Gaussian score of the analytical first step)")


def _finish(
    sde: SDE, score: CountingScore, x: Tensor, grid: Tensor, denoise: bool, trajectory: Trajectory | None
) -> SampleResult:
    if denoise:
        x = predict_x0(sde, score, x, grid[-1].to(x.device))  # type: ignore[arg-type]
        check_finite(x, "the denoised sample (Tweedie step at t_end)")
    return SampleResult(x=x, nfe=score.calls, trajectory=trajectory)


# ---------------------------------------------------------------------------------------------
# the one fixed-grid loop


def _run_grid(
    step: Callable[[Tensor, int, Tensor, Tensor], Tensor],
    x: Tensor,
    grid: Tensor,
    save_mask: Tensor,
    *,
    progress: bool,
    desc: str,
) -> tuple[Tensor, list[Tensor]]:
    """``x <- step(x, i, t_i, t_{i+1})`` over the grid; returns the final state and the saved ones."""
    num_steps = len(grid) - 1
    times = grid.to(x.device)
    keep = save_mask.tolist()
    saved = [x] if keep[0] else []
    first_bad = FirstNonFinite()
    what = f"the state of {desc} (step i goes from t_(i-1) to t_i of {num_steps})"
    with progress_bar(total=num_steps, enabled=progress, desc=desc) as bar:
        for i in range(num_steps):
            x = step(x, i, times[i], times[i + 1])
            first_bad.record(x, i + 1, times[i + 1])
            if (i + 1) % first_bad.CHECK_EVERY == 0:  # one sync per CHECK_EVERY steps: stop soon after a NaN
                first_bad.raise_if_any(what)
            if keep[i + 1]:
                saved.append(x)
            bar.update()
    first_bad.raise_if_any(what)
    return x, saved


def _run_predictor_corrector(
    predictor: Predictor | None,
    corrector: Corrector | None,
    score: CountingScore,
    sde: SDE,
    x: Tensor,
    grid: Tensor,
    save_at: SaveAt,
    *,
    noise: Noise,
    denoise: bool,
    progress: bool,
    desc: str,
    step_hook: StepHook | None = None,
) -> SampleResult:
    grid, mask = _with_save_points(grid, save_at)
    ctx = StepContext(noise=noise)

    def step(x: Tensor, i: int, t: Tensor, s: Tensor) -> Tensor:
        # predictor first, then the corrector at the new time (Song et al. 2021, Alg. 1)
        x = x if predictor is None else predictor.step(x, t, s, ctx)
        return x if corrector is None else corrector.correct(x, s, t, ctx)

    loop_grid, loop_mask = grid, mask
    if predictor is None:  # corrector only: a level at every grid time, the start's too (a step from t_0 to t_0)
        loop_grid, loop_mask = torch.cat([grid[:1], grid]), torch.cat([torch.zeros(1, dtype=torch.bool), mask])
    x, saved = _run_grid(_hooked(step, step_hook, ctx), x, loop_grid, loop_mask, progress=progress, desc=desc)
    return _finish(sde, score, x, grid, denoise, _trajectory(grid, mask, saved))


# ---------------------------------------------------------------------------------------------
# public entry points


def sample_pc(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...] | None = None,
    *,
    num_steps: int | None = 1000,
    predictor: str | None = "reverse_diffusion",
    corrector: str | None = "langevin",
    snr: float = 0.16,
    corrector_steps: int = 1,
    corrector_norm: str = "batch",
    grid: str = "uniform",
    t_end: float | None = None,
    timesteps: Tensor | Sequence[float] | None = None,
    x_init: Tensor | None = None,
    denoise: bool = True,
    save_at: SaveAt = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_indices: Tensor | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    step_hook: StepHook | None = None,
) -> SampleResult:
    r"""Predictor–corrector sampling (Song et al. 2021, Alg. 1).

    Each step runs the predictor from :math:`t_i` to :math:`t_{i+1}`, then ``corrector_steps``
    Langevin updates at :math:`t_{i+1}`. NFE = ``num_steps * (1 + corrector_steps)`` (+1 with
    ``denoise``). The defaults (reverse diffusion, Langevin, snr 0.16, one corrector step,
    1000 uniform steps, denoising at the end) are Song et al.'s; pass ``t_end=1e-3`` for their
    VP setting.

    With ``predictor=None`` it is a corrector-only run, NCSN's annealed Langevin dynamics (Song &
    Ermon 2019, Alg. 1) in the SDE's own frame: ``corrector_steps`` updates at *every* time of the
    grid, the start :math:`t_0` included (the noise levels are the grid), NFE =
    ``(num_steps + 1) * corrector_steps`` (+1). A level's step is the corrector's,
    :math:`\epsilon = 2a^2(r\sigma_t)^2` for ``"annealed_langevin"`` with :math:`a = \alpha(t_{i})/\alpha(t_{i+1})`
    (1 on a VE SDE and at :math:`t_0`), so on a :class:`~scoresde.VESDE` with ``snr`` :math:`r =
    \sqrt{\epsilon_{NCSN}}/(2\sigma_L)` it takes :func:`~scoresde.sample_annealed_langevin`'s steps
    :math:`\alpha_i/2 = \epsilon_{NCSN}\sigma_i^2/(2\sigma_L^2)`. Its default prior draw has VE's prior
    std :math:`\sqrt{1 + \sigma(T)^2}`, not :math:`\sigma_1`: pass ``x_init`` for NCSN's start.
    ``save_at`` times join the grid, so they are levels too.

    Args:
        predictor: ``"reverse_diffusion"``, ``"euler_maruyama"``, ``"ancestral"`` (the last
            needs a :class:`~scoresde.LinearSDE`) or ``None`` (corrector only).
        corrector: ``"langevin"``, ``"annealed_langevin"`` (needs a LinearSDE) or ``None`` (not
            both ``None``).
        snr, corrector_steps: the correctors' signal-to-noise ratio and number of updates.
        corrector_norm: ``"batch"`` (default) or ``"per_sample"`` norms in the Langevin step
            size (per-sample steps are biased: see :class:`~scoresde.solvers.LangevinCorrector`).

    Returns:
        :class:`SampleResult` with ``x`` of shape ``shape`` (or ``x_init``'s).
    """
    sde = require_sde(sde)
    score = CountingScore(score_fn)
    if predictor is None and corrector is None:
        raise ValueError("sample_pc needs a predictor, a corrector or both, got predictor=None and corrector=None")
    predictor_obj: Predictor | None = None
    if predictor is not None:
        predictor_obj = lookup(predictor, "sample_pc", is_predictor, "predictor").target(sde, score)
    corrector_obj: Corrector | None = None
    if corrector is not None:
        corrector_cls = lookup(corrector, "sample_pc", is_corrector, "corrector").target
        extra: dict[str, Any] = {"norm": corrector_norm} if corrector == "langevin" else {}
        corrector_obj = corrector_cls(sde, score, snr=snr, num_steps=corrector_steps, **extra)
    _check_denoise(sde, denoise)
    times = _grid(sde, timesteps, num_steps, grid, t_end)
    _check_time_range(score_fn, times, "sample_pc")
    _check_step_hook(step_hook)
    noise = _noise(generator, seed, sample_indices)
    x = _initial_state(sde, shape, x_init, noise, device, dtype)
    return _run_predictor_corrector(
        predictor_obj, corrector_obj, score, sde, x, times, save_at,
        noise=noise, denoise=denoise, progress=progress, desc=f"sample_pc({predictor}, {corrector})",
        step_hook=step_hook,
    )  # fmt: skip


def sample_sde(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...] | None = None,
    *,
    method: str = "euler_maruyama",
    num_steps: int | None = 1000,
    grid: str = "uniform",
    t_end: float | None = None,
    timesteps: Tensor | Sequence[float] | None = None,
    x_init: Tensor | None = None,
    denoise: bool = False,
    save_at: SaveAt = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_indices: Tensor | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    step_hook: StepHook | None = None,
) -> SampleResult:
    r"""Integrate the reverse-time SDE :math:`dx = [f - g^2 s]\,dt + g\,d\bar w` from ``t_start``
    down to ``t_end``.

    Args:
        method: this library's one-step updates on any grid, ``"euler_maruyama"`` (strong and
            weak order 1; ``"euler"`` is its old name, deprecated), ``"reverse_diffusion"``,
            ``"ancestral"`` (the predictors of :func:`sample_pc`, run without a corrector), or a
            torchsde method: ``"torchsde_euler"``, ``"milstein"``, ``"srk"`` (strong order 1.5),
            ``"reversible_heun"`` (see :mod:`scoresde.solvers.sdeint`). torchsde methods take
            ``num_steps`` equal steps; they accept ``timesteps`` only if uniform, and store
            ``save_at`` states by linear interpolation between steps.

    Works with any :class:`~scoresde.SDE` (``denoise=True`` needs a LinearSDE). NFE counts
    score calls: one per step for Euler, more for ``srk``.
    """
    sde = require_sde(sde)
    score = CountingScore(score_fn)
    solver = lookup(method, "sample_sde", is_sde_solver)
    _check_denoise(sde, denoise)
    times = _grid(sde, timesteps, num_steps, grid, t_end)
    _check_time_range(score_fn, times, "sample_sde")
    _check_step_hook(step_hook)
    if solver.runner == "torchsde" and step_hook is not None:
        raise ValueError(f"torchsde method {method!r} owns its steps and takes no step_hook: use one of this "
                         "library's methods ('euler_maruyama', 'reverse_diffusion', 'ancestral')")  # fmt: skip
    noise = _noise(generator, seed, sample_indices)
    if solver.runner == "torchsde" and isinstance(noise, SampleNoise):
        raise ValueError(f"torchsde's Brownian motion is one for the batch: method={method!r} takes a generator, "
                         "not per-sample seeds (this library's methods take both)")  # fmt: skip
    x = _initial_state(sde, shape, x_init, noise, device, dtype)
    if solver.runner == "scoresde":
        return _run_predictor_corrector(
            solver.target(sde, score), None, score, sde, x, times, save_at,
            noise=noise, denoise=denoise, progress=progress, desc=f"sample_sde({solver.name})",
            step_hook=step_hook,
        )  # fmt: skip
    steps = torch.diff(times)
    if not torch.allclose(steps, steps[0], rtol=1e-6, atol=0):
        raise ValueError(f"torchsde method {method!r} needs a uniform grid (equal steps); got steps {steps.tolist()}")
    times, mask = _with_save_points(times[[0, -1]], save_at)
    states = sdeint_reverse_sde(sde, score, x, times, method=solver.target, num_steps=len(steps), generator=generator)
    saved = list(states[mask.to(states.device)])
    return _finish(sde, score, states[-1], times, denoise, _trajectory(times, mask, saved))


def sample_ode(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...] | None = None,
    *,
    method: str = "dopri5",
    num_steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    grid: str | None = None,
    t_end: float | None = None,
    timesteps: Tensor | Sequence[float] | None = None,
    x_init: Tensor | None = None,
    denoise: bool = False,
    save_at: SaveAt = None,
    options: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_indices: Tensor | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    step_hook: StepHook | None = None,
    afs: bool = False,
) -> SampleResult:
    r"""Integrate the probability-flow ODE :math:`dx/dt = f - \frac12 g^2 s` from ``t_start``
    down to ``t_end`` (deterministic given ``x_init``).

    Args:
        method: the library's fixed-step solvers ``"euler"`` (order 1), ``"heun"`` (2, EDM),
            ``"ddim"`` (1), ``"dpmpp_2m"`` (2), ``"dpmpp_3m"`` (3), ``"unipc_2"``, ``"unipc_3"``
            — all but the first two need a :class:`~scoresde.LinearSDE` and ``t_end > 0`` — or a
            torchdiffeq method (``"dopri5"``, ``"tsit5"``, ``"rk4"``, ``"torchdiffeq_euler"``, ...;
            :data:`~scoresde.solvers.METHODS`), solved by :func:`scoresde.solvers.flow.solve_flow`,
            the solve of :func:`~scoresde.decode`.
        num_steps: steps for the fixed-step methods (an adaptive method refuses it).
        rtol, atol: tolerances of the adaptive methods (default ``1e-5`` each). A fixed-step
            method would ignore them, so it refuses them.
        grid: grid kind for ``num_steps`` (default ``"log_snr"`` for a LinearSDE, as
            DPM-Solver recommends, else ``"uniform"``).
        options: the solver's options: torchdiffeq's ``odeint`` options for its methods (in the
            reference VP coordinates of :mod:`scoresde.solvers.flow` for a linear SDE), keyword
            options of this library's solvers (UniPC's ``{"variant": "bh2"}``); a solver that takes
            none refuses them.
        afs: the analytical first step (:mod:`scoresde.solvers.afs`): the first score evaluation
            of a fixed-step method, at ``t_start``, replaced by the score of the marginal of
            :math:`\mathcal N(0, I)` data, which saves one NFE (a :class:`~scoresde.LinearSDE` only;
            accurate when ``t_start`` is near ``T``, where the marginal is nearly the prior, and
            the data are roughly centred: its first data prediction is about 0).

    :func:`~scoresde.encode` integrates the same ODE forward, from data to latent.
    """
    sde = require_sde(sde)
    score = CountingScore(score_fn)
    solver = lookup(method, "sample_ode", is_ode_solver)
    _check_denoise(sde, denoise)
    _check_afs(afs, sde, solver.runner == "torchdiffeq", method)
    if solver.runner == "torchdiffeq":
        steps = num_steps if timesteps is None or solver.adaptive else len(timesteps) - 1
        solver, rtol, atol = check_flow_args(method, rtol, atol, options, steps, "sample_ode")
        stepper = None
    else:
        refuse_tolerances(method, rtol, atol)
        stepper = _build_stepper(solver.target, sde, AnalyticFirstStep(sde, score) if afs else score, options, method)
    if solver.adaptive:
        times = _grid(sde, timesteps, 1 if timesteps is None else None, "uniform", t_end)
        times = times if timesteps is not None else times[[0, -1]]
    else:
        times = _grid(sde, timesteps, num_steps, grid or default_grid_kind(sde), t_end)
    if stepper is not None:
        stepper.check_grid(times)
    _check_time_range(score_fn, times, "sample_ode")
    _check_step_hook(step_hook)
    if stepper is None and step_hook is not None:
        raise ValueError(f"torchdiffeq method {method!r} owns its steps and takes no step_hook: use a fixed-step "
                         "method of this library ('euler', 'heun', 'ddim', 'dpmpp_2m', ...)")  # fmt: skip
    noise = _noise(generator, seed, sample_indices)
    x = _initial_state(sde, shape, x_init, noise, device, dtype)
    times, mask = _with_save_points(times, save_at)
    if stepper is None:
        states = solve_flow(score, sde, x, times, method=solver, rtol=rtol, atol=atol, options=options).x
        saved = list(states[mask.to(states.device)])
        return _finish(sde, score, states[-1], times, denoise, _trajectory(times, mask, saved))
    ctx = StepContext(noise=noise)  # the ODE solvers draw none; a step hook may
    num_intervals = len(times) - 1

    def step(x: Tensor, i: int, t: Tensor, s: Tensor) -> Tensor:
        ctx.last = i == num_intervals - 1
        return stepper.step(x, t, s, ctx)

    x, saved = _run_grid(_hooked(step, step_hook, ctx), x, times, mask, progress=progress, desc=f"sample_ode({method})")
    return _finish(sde, score, x, times, denoise, _trajectory(times, mask, saved))


def _build_stepper(cls: type, sde: SDE, score: CountingScore, options: dict[str, Any] | None, method: str) -> Any:
    """``cls(sde, score, **options)``, refusing options the solver does not take by name."""
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    try:
        return cls(sde, score, **(options or {}))
    except TypeError as err:
        if not options:
            raise
        raise ValueError(f"method={method!r} does not take the options {options!r} ({err})") from None
