r"""Compare samplers and likelihoods on problems with exact answers.

A :class:`Problem` is a Gaussian mixture under a linear SDE. Its score, denoiser and perturbed
log-density are exact at every time (:class:`~scoresde.GaussianMixture`), and it carries a
same-noise reference: the probability-flow ODE solved to rtol = atol = 1e-10 from the same
initial states at ``T``, then Tweedie's step at ``t_end``. An error measured on it is the
solver's alone when the sampler uses ``problem.score_fn``. With a trained model's score in its
place (a model trained on ``problem.data(...)``), the error is the model's and the solver's
together, against the same exact answers.

The runners take any callable and return plain dict rows, ready to print
(:func:`markdown_table`), plot or save as JSON:

* :func:`compare_samplers`: each ``sampler(problem, x_init, level)`` maps the problem's
  initial noise ``(n, *event)`` at ``T`` to data. ``level`` is the setting a row is
  measured at: an NFE budget for a fixed-step sampler, a tolerance for an adaptive one.
  The sampler returns a :class:`~scoresde.SampleResult` (or anything with ``.x`` and
  ``.nfe``) or a tuple ``(x, nfe)``. NFE counts every score or denoiser evaluation, the final
  denoising step included. Wrap a score in :class:`~scoresde.solvers.CountingScore` to count
  the calls of a solver that does not report them. Rows hold the pathwise errors against the
  reference (:func:`pathwise_errors`: RMSE, median per-sample error, mode-switch fraction) for
  deterministic samplers, and the distribution errors (:func:`distribution_errors`) for all of
  them.
* :func:`compare_likelihoods`: each ``method(problem, x, level)`` returns a
  :class:`~scoresde.LikelihoodResult` (or anything with ``.log_prob`` and ``.nfe``) or a tuple
  ``(log_prob, nfe)`` for data points ``x``. Its error per dimension is measured against the
  same method converged (``converged_level``, the integration error alone) and against the exact
  :math:`\log p_{t_{min}}(x)`.

Summaries for equal-cost comparisons: :func:`best_within` (the smallest error at no more than
a given NFE), :func:`fewest_nfe_within` (the fewest NFE to reach an error) and
:func:`fitted_nfe_within` (that NFE read off a log-log fit, so it does not jump with the
tolerance grid).

Example::

    import scoresde as sd
    from scoresde import benchmark as bm

    def dpmpp_2m(problem, x_init, nfe):
        return sd.sample_ode(problem.score_fn, problem.sde, x_init=x_init, method="dpmpp_2m",
                             num_steps=int(nfe) - 1, t_end=bm.T_END, denoise=True)

    problems = [bm.standard_problem("2d-vp", 500), bm.standard_problem("16d-ve", 300)]
    rows = bm.compare_samplers({"dpmpp_2m": dpmpp_2m, "mine": my_sampler}, problems, [10, 20])
    print(bm.markdown_table(rows, ["problem", "sampler", "nfe", "rmse", "median_error",
                                   "mode_switch_fraction"]))

Everything runs in float64. The repository's own benchmark, with the peer libraries
(k-diffusion, flow_matching, scipy) and the committed results, is ``benchmarks/`` in a source
checkout (``scoresde bench`` there); it is built on this module.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from scoresde.analytic import GaussianMixture
from scoresde.metrics import pathwise_rmse, sliced_wasserstein
from scoresde.sample import sample_ode
from scoresde.sde import VESDE, VPSDE, LinearSDE, SubVPSDE

T_END = 1e-3
"""Where samplers stop (Song et al.'s VP sampling end time) before the final Tweedie step to
the data, which counts as one NFE."""

REFERENCE_TOL = 1e-10
"""rtol = atol of the dopri5 solve that gives a problem's reference."""

SW_PROJECTIONS = 64
"""Random directions of the sliced Wasserstein distance in :func:`distribution_errors`."""

SamplerFn = Callable[["Problem", Tensor, float], Any]
"""``sampler(problem, x_init, level) -> SampleResult | (x, nfe)``."""

LikelihoodFn = Callable[["Problem", Tensor, float], Any]
"""``method(problem, x, level) -> LikelihoodResult | (log_prob, nfe)``."""


# ---------------------------------------------------------------------------------------------
# problems


def _check_int(value: Any, name: str, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _rotation(angle: float) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def mixture_2d() -> GaussianMixture:
    """Three well-separated components in 2-D with unequal weights (0.5/0.3/0.2) and
    anisotropic, rotated covariances (axis ratios 3-6)."""
    means = torch.tensor([[-2.5, 0.0], [2.0, 1.5], [0.5, -2.5]], dtype=torch.float64)
    eig = torch.tensor([[0.30, 0.05], [0.20, 0.04], [0.25, 0.07]], dtype=torch.float64)
    rot = torch.stack([_rotation(a) for a in (0.4, -0.9, 1.6)])
    covs = rot @ torch.diag_embed(eig) @ rot.transpose(1, 2)
    return GaussianMixture(means, 0.5 * (covs + covs.transpose(1, 2)), torch.tensor([0.5, 0.3, 0.2]))


def mixture_16d(seed: int = 0) -> GaussianMixture:
    """Four components in 16-D, means of norm 3, random full covariances (eigenvalues
    0.05-0.5), weights 0.4/0.3/0.2/0.1; ``seed`` draws the means and covariances."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 16, generator=g, dtype=torch.float64)
    means = 3.0 * means / means.norm(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(torch.randn(4, 16, 16, generator=g, dtype=torch.float64))
    eig = 0.05 + 0.45 * torch.rand(4, 16, generator=g, dtype=torch.float64)
    covs = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    return GaussianMixture(means, 0.5 * (covs + covs.transpose(1, 2)), torch.tensor([0.4, 0.3, 0.2, 0.1]))


def _random_mixture(dim: int, weights: list[float], radius: tuple[float, float], eig: tuple[float, float],
                    seed: int, thin: tuple[float, float] | None = None) -> GaussianMixture:  # fmt: skip
    """Components with random means of norm in ``radius``, random orientations and eigenvalues
    log-uniform in ``eig``; with ``thin``, all but one eigenvalue of each covariance are instead
    log-uniform in ``thin`` (components thin in every direction but one)."""
    g = torch.Generator().manual_seed(seed)
    k = len(weights)
    directions = torch.randn(k, dim, generator=g, dtype=torch.float64)
    norms = radius[0] + (radius[1] - radius[0]) * torch.rand(k, 1, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(k, dim, dim, generator=g, dtype=torch.float64))

    def log_uniform(bounds: tuple[float, float], *shape: int) -> Tensor:
        lo, hi = math.log(bounds[0]), math.log(bounds[1])
        return (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)).exp()

    eigs = log_uniform(eig, k, dim)
    if thin is not None:
        eigs[:, 1:] = log_uniform(thin, k, dim - 1)
    covs = q @ torch.diag_embed(eigs) @ q.transpose(1, 2)
    means = norms * directions / directions.norm(dim=1, keepdim=True)
    return GaussianMixture(means, 0.5 * (covs + covs.transpose(1, 2)), torch.tensor(weights))


def mixture_2d_thin() -> GaussianMixture:
    """Five thin components in 2-D (standard deviations 0.5-0.9 along, 0.02-0.06 across: axis
    ratios 10-40), means of norm 1.5-3, weights 0.35/0.25/0.2/0.15/0.05."""
    return _random_mixture(2, [0.35, 0.25, 0.2, 0.15, 0.05], (1.5, 3.0), (0.25, 0.8), seed=21, thin=(4e-4, 4e-3))


def mixture_8d_many() -> GaussianMixture:
    """Twelve components in 8-D with uneven weights (proportional to 0.7^k: 0.31 down to 0.006),
    means of norm 2-4, full covariances with eigenvalues 0.02-0.5."""
    return _random_mixture(8, [0.7**k for k in range(12)], (2.0, 4.0), (0.02, 0.5), seed=22)


def mixture_32d() -> GaussianMixture:
    """Six components in 32-D, each thin in 31 directions (variances 0.003-0.03 there, 0.3-1
    along one), means of norm 2.5-4, weights 0.4/0.2/0.15/0.1/0.1/0.05."""
    return _random_mixture(32, [0.4, 0.2, 0.15, 0.1, 0.1, 0.05], (2.5, 4.0), (0.3, 1.0), seed=23, thin=(3e-3, 3e-2))


MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "2d": mixture_2d, "16d": mixture_16d, "2dthin": mixture_2d_thin, "8dmany": mixture_8d_many, "32d": mixture_32d,
}  # fmt: skip
"""The standard mixtures by name. ``2d`` and ``16d`` are the ones the solvers and grid searches
were developed on; ``2dthin``, ``8dmany`` and ``32d`` (other geometry: thin components, many
components with uneven weights, 32 dimensions) were added later to check that they transfer."""

SDES: dict[str, Callable[[], LinearSDE]] = {
    "vp": lambda: VPSDE(),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(sigma_min=0.01, sigma_max=50.0),
}
"""The standard SDEs by name: VP (beta 0.1-20), sub-VP, VE (sigma 0.01-50)."""

STANDARD_PROBLEMS = tuple(f"{m}-{s}" for m in MIXTURES for s in SDES)
"""Names ``"<mixture>-<sde>"`` of :func:`standard_problem`: ``"2d-vp"``, ..., ``"16d-ve"``."""


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One Gaussian mixture ``gmm`` under one linear ``sde``, with ``num_samples`` initial
    states drawn from the prior and, computed on first use, the exact answers.

    ``seed`` fixes the initial states (:attr:`x_init`) and the exact data draws
    (:meth:`data`); a problem with another seed (``dataclasses.replace(problem, seed=10)``) is
    the same task on independent noise, e.g. a pilot run that tunes a grid.
    """

    name: str
    gmm: GaussianMixture
    sde: LinearSDE
    num_samples: int
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        if not isinstance(self.gmm, GaussianMixture):
            raise TypeError(f"gmm must be a scoresde.GaussianMixture, got {type(self.gmm).__name__}")
        if not isinstance(self.sde, LinearSDE):
            raise TypeError(f"sde must be a scoresde.LinearSDE (exact marginals), got {type(self.sde).__name__}")
        _check_int(self.num_samples, "num_samples", 1)
        _check_int(self.seed, "seed", 0)

    @property
    def dim(self) -> int:
        """Dimension of the data."""
        return self.gmm.dim

    @cached_property
    def score_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        r"""The exact score :math:`\nabla_x \log p_t(x)`, ``(x, t) -> (batch, *event)``."""
        return self.gmm.score_fn(self.sde)

    @cached_property
    def denoiser_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        r"""The exact posterior mean :math:`E[x_0 \mid x_t]`, ``(x, t) -> (batch, *event)``."""
        return self.gmm.denoiser_fn(self.sde)

    @cached_property
    def log_prob_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        r"""The exact :math:`\log p_t(x)`, ``(x, t) -> (batch,)``."""
        return self.gmm.log_prob_fn(self.sde)

    def log_prob(self, x: Tensor) -> Tensor:
        r"""The exact data log-density :math:`\log p_0(x)`, ``(batch,)``."""
        return self.gmm.log_prob(x)

    def mode(self, x: Tensor) -> Tensor:
        """Most responsible mixture component of each sample, ``(batch,)``."""
        return self.gmm.component(x)

    @cached_property
    def x_init(self) -> Tensor:
        """``(num_samples, dim)`` float64 draws from the SDE's prior at ``T``."""
        g = torch.Generator().manual_seed(self.seed + 1)
        return self.sde.prior_sample((self.num_samples, self.dim), generator=g, dtype=torch.float64)

    @cached_property
    def reference(self) -> Tensor:
        """What every deterministic sampler approximates: the probability-flow ODE from
        :attr:`x_init` at ``T`` to :data:`T_END` by dopri5 at rtol = atol = :data:`REFERENCE_TOL`
        (float64), then the exact Tweedie step; ``(num_samples, dim)``."""
        return sample_ode(
            self.score_fn, self.sde, x_init=self.x_init, method="dopri5", rtol=REFERENCE_TOL, atol=REFERENCE_TOL,
            t_end=T_END, denoise=True,
        ).x  # fmt: skip

    def data(self, copy: int) -> Tensor:
        """``num_samples`` exact data samples, float64; each ``copy`` (an int >= 0) is an
        independent draw. :func:`distribution_errors` uses copies 0 and 1,
        :func:`compare_likelihoods` copies 2 and up."""
        _check_int(copy, "copy", 0)
        g = torch.Generator().manual_seed(self.seed + 100 + copy)
        return self.gmm.sample(self.num_samples, generator=g, dtype=torch.float64)


def standard_problem(name: str, num_samples: int, *, seed: int = 0) -> Problem:
    """The standard problem ``name`` (one of :data:`STANDARD_PROBLEMS`, ``"<mixture>-<sde>"``
    with a mixture of :data:`MIXTURES` and an SDE of :data:`SDES`)."""
    if name not in STANDARD_PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; the standard problems are {STANDARD_PROBLEMS}")
    mixture, sde = name.split("-")
    return Problem(name, MIXTURES[mixture](), SDES[sde](), num_samples, seed)


# ---------------------------------------------------------------------------------------------
# error measures


def _check_pair(x: Tensor, reference: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(reference, Tensor):
        raise TypeError(f"x and reference must be tensors, got {type(x).__name__} and {type(reference).__name__}")
    if x.ndim < 2 or x.shape != reference.shape:
        raise ValueError(
            f"x and reference must be (n, *event) of the same shape, got {tuple(x.shape)} and {tuple(reference.shape)}"
        )


def per_sample_error(x: Tensor, reference: Tensor) -> Tensor:
    r""":math:`\|x_i - x^\star_i\|` for samples ``x`` and the ``reference`` reached from the
    same noise, both ``(n, *event)``: ``(n,)``."""
    _check_pair(x, reference)
    return (x - reference).flatten(1).norm(dim=1)


def mode_switch_fraction(x: Tensor, reference: Tensor, component: Callable[[Tensor], Tensor]) -> Tensor:
    """Fraction of samples whose ``component(x)`` (e.g. :meth:`Problem.mode`) differs from the
    reference's, a 0-d float64 tensor. On multimodal data these few samples dominate the RMSE."""
    _check_pair(x, reference)
    return (component(x) != component(reference)).double().mean()


def pathwise_errors(
    x: Tensor, reference: Tensor, component: Callable[[Tensor], Tensor] | None = None
) -> dict[str, float]:
    """Against the reference from the same noise: ``rmse``
    (:func:`~scoresde.pathwise_rmse`), ``median_error`` (of :func:`per_sample_error`) and,
    given ``component``, ``mode_switch_fraction`` (:func:`mode_switch_fraction`)."""
    errors = {
        "rmse": pathwise_rmse(x, reference).item(),
        "median_error": per_sample_error(x, reference).median().item(),
    }
    if component is not None:
        errors["mode_switch_fraction"] = mode_switch_fraction(x, reference, component).item()
    return errors


def _sliced_wasserstein(x: Tensor, y: Tensor) -> float:
    return sliced_wasserstein(x, y, SW_PROJECTIONS, torch.Generator().manual_seed(1)).item()


def distribution_errors(problem: Problem, x: Tensor) -> dict[str, float]:
    """Against exact data samples (``problem.data(0)``; ``x`` must have ``num_samples`` rows):
    ``sw``, the sliced Wasserstein distance, and ``log_p_gap``, the mean exact log-density of
    ``x`` minus that of the data; each with its two-sample noise floor (``sw_floor``,
    ``log_p_gap_floor``: the same statistic between two independent data draws). Differences
    below the floor mean nothing."""
    data, other = problem.data(0), problem.data(1)
    mean_log_p = problem.log_prob(data).mean()
    return {
        "sw": _sliced_wasserstein(x, data),
        "sw_floor": _sliced_wasserstein(other, data),
        "log_p_gap": (problem.log_prob(x).mean() - mean_log_p).item(),
        "log_p_gap_floor": (problem.log_prob(other).mean() - mean_log_p).abs().item(),
    }


def likelihood_errors(log_prob: Tensor, converged: Tensor, truth: Tensor, dim: int) -> dict[str, float]:
    """Per-dimension errors of ``log_prob`` ``(n,)``: ``max_err_per_dim`` and
    ``mean_err_per_dim`` against ``converged`` (the same method at a tight setting: its
    integration error), ``mean_err_vs_truth_per_dim`` against the exact ``truth``."""
    err = (log_prob - converged).abs() / dim
    return {
        "max_err_per_dim": err.max().item(),
        "mean_err_per_dim": err.mean().item(),
        "mean_err_vs_truth_per_dim": ((log_prob - truth).abs() / dim).mean().item(),
    }


# ---------------------------------------------------------------------------------------------
# runners


def interleaved_times(calls: Sequence[Callable[[], Any]], repeats: int) -> tuple[list[float], list[Any]]:
    """Run ``calls`` round-robin ``repeats`` times; return each one's median wall time (s) and
    its last result. Interleaving makes a change of machine load hit every call alike."""
    _check_int(repeats, "repeats", 1)
    times: list[list[float]] = [[] for _ in calls]
    results: list[Any] = [None] * len(calls)
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            results[i] = call()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], results


def _unpack(out: Any, value: str, who: str) -> tuple[Tensor, int]:
    """``(tensor, nfe)`` from a result object (``.<value>``, ``.nfe``) or a pair."""
    if isinstance(out, tuple) and len(out) == 2:
        tensor, nfe = out
    elif hasattr(out, value) and hasattr(out, "nfe"):
        tensor, nfe = getattr(out, value), out.nfe
    else:
        raise TypeError(
            f"{who} returned {type(out).__name__}; it must return a result with .{value} and .nfe or a pair "
            f"({value}, nfe) (count a score's calls with scoresde.solvers.CountingScore)"
        )
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{who} returned {type(tensor).__name__} for {value}; it must be a tensor")
    return tensor, int(nfe)


def _check_callables(named: Any, kind: str) -> None:
    if not isinstance(named, Mapping) or not named:
        raise TypeError(f"{kind} must be a non-empty mapping of names to callables, got {type(named).__name__}")
    for name, fn in named.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"{kind}[{name!r}] must be a callable under a str name, got {type(fn).__name__}")


def _check_problems(problems: Any) -> list[Problem]:
    problems = list(problems) if isinstance(problems, Sequence) else problems
    if not isinstance(problems, list) or not problems or not all(isinstance(p, Problem) for p in problems):
        raise TypeError("problems must be a non-empty sequence of scoresde.benchmark.Problem")
    return problems


def _levels_of(names: Sequence[str], levels: Sequence[float] | Mapping[str, Sequence[float]]) -> dict[str, list]:
    """Each name's levels: one sequence for all, or a mapping with an entry for every name."""
    if isinstance(levels, Mapping):
        missing = [n for n in names if n not in levels]
        if missing:
            raise ValueError(f"levels has no entry for {missing}")
        out = {n: list(levels[n]) for n in names}
    elif isinstance(levels, Sequence) and not isinstance(levels, str):
        out = {n: list(levels) for n in names}
    else:
        raise TypeError(f"levels must be a sequence of numbers or a mapping of names to them, got {levels!r}")
    for name, values in out.items():
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"the levels of {name!r} must be a non-empty list of numbers, got {values!r}")
    return out


def compare_samplers(
    samplers: Mapping[str, SamplerFn],
    problems: Sequence[Problem],
    levels: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    stochastic: Collection[str] = (),
    repeats: int = 1,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run every sampler at each of its levels on every problem from ``problem.x_init``; one
    row per problem, level and sampler.

    Args:
        samplers: names to ``sampler(problem, x_init, level)`` returning a
            :class:`~scoresde.SampleResult` (or ``.x`` and ``.nfe``) or ``(x, nfe)``, ``x``
            shaped like ``x_init``.
        problems: the :class:`Problem` instances.
        levels: the levels (NFE budgets, tolerances) every sampler runs at, or a mapping from
            each sampler's name to its own.
        stochastic: names of samplers that draw noise: their rows have no pathwise errors
            (they do not follow the reference's path), only the distribution errors.
        repeats: runs of each (timed interleaved, :func:`interleaved_times`; the median is
            reported, the last run scored).
        log: called with a line of progress per problem and level (e.g. ``print``).

    Returns:
        Rows ``{"problem", "sampler", "level", "deterministic", "nfe", "seconds", "rmse",
        "median_error", "mode_switch_fraction", "sw", "sw_floor", "log_p_gap",
        "log_p_gap_floor"}`` (no pathwise errors for stochastic samplers). All samplers at one
        level on one problem are timed round-robin.
    """
    _check_callables(samplers, "samplers")
    problems = _check_problems(problems)
    unknown = [n for n in stochastic if n not in samplers]
    if unknown:
        raise ValueError(f"stochastic names samplers that are not given: {unknown}")
    _check_int(repeats, "repeats", 1)
    per_sampler = _levels_of(list(samplers), levels)
    rows = []
    for problem in problems:
        if log:
            log(f"# {problem.name}: {problem.num_samples} samples, reference ready ({problem.reference.shape[0]})")
        for level in dict.fromkeys(lv for values in per_sampler.values() for lv in values):
            names = [n for n in samplers if level in per_sampler[n]]
            calls = [(lambda fn=samplers[n], p=problem, lv=level: fn(p, p.x_init, lv)) for n in names]
            seconds, outs = interleaved_times(calls, repeats)
            for name, sec, out in zip(names, seconds, outs, strict=True):
                x, nfe = _unpack(out, "x", f"sampler {name!r}")
                if x.shape != problem.x_init.shape:
                    raise ValueError(
                        f"sampler {name!r} returned shape {tuple(x.shape)} for x_init of shape "
                        f"{tuple(problem.x_init.shape)} on {problem.name}"
                    )
                deterministic = name not in stochastic
                row = {"problem": problem.name, "sampler": name, "level": level, "deterministic": deterministic,
                       "nfe": nfe, "seconds": sec}  # fmt: skip
                if deterministic:
                    row |= pathwise_errors(x, problem.reference, problem.mode)
                rows.append(row | distribution_errors(problem, x))
            if log:
                log(f"  level {level:g}: {len(names)} samplers")
    return rows


def compare_likelihoods(
    methods: Mapping[str, LikelihoodFn],
    problems: Sequence[Problem],
    levels: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    converged_level: float = 1e-9,
    point_sets: int = 1,
    repeats: int = 1,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    r"""Run every likelihood method at each of its levels on ``point_sets`` independent sets
    of ``num_samples`` exact data points per problem; one row per problem, point set, level and
    method.

    Args:
        methods: names to ``method(problem, x, level)`` returning a
            :class:`~scoresde.LikelihoodResult` (or ``.log_prob`` and ``.nfe``) or
            ``(log_prob, nfe)``, ``log_prob`` of shape ``(n,)``: the log-density at the SDE's
            ``t_min`` of the points ``x`` ``(n, dim)``.
        problems: the :class:`Problem` instances.
        levels: the levels (tolerances) every method runs at, or a mapping from each method's
            name to its own.
        converged_level: the level each method is run at once per point set to give its own
            converged answer, which its errors are measured against (integration error alone,
            without the Hutchinson noise or the prior each method uses).
        point_sets: independent point sets per problem (``problem.data(2)``, ``data(3)``, ...).
            How many NFE a level costs, and which method is ahead at one, varies between them.
        repeats: runs of each; all runs on one point set, at every level and method, are timed
            round-robin, so ratios of runs at different levels see the same machine load.
        log: called with a line of progress per problem and point set.

    Returns:
        Rows ``{"problem", "dim", "points", "point_set", "method", "level", "nfe", "seconds",
        "sample_nfe_mean", "sample_nfe_max", "max_err_per_dim", "mean_err_per_dim",
        "mean_err_vs_truth_per_dim"}``; the evaluations per sample are the result's
        ``sample_nfe`` (:class:`~scoresde.LikelihoodResult` on a grid) or else ``nfe``
        (:func:`likelihood_errors`; the truth is the exact :math:`\log p_{t_{min}}(x)`).
    """
    _check_callables(methods, "methods")
    problems = _check_problems(problems)
    _check_int(point_sets, "point_sets", 1)
    _check_int(repeats, "repeats", 1)
    per_method = _levels_of(list(methods), levels)
    rows = []
    for problem in problems:
        for point_set in range(point_sets):
            x = problem.data(2 + point_set)  # copies 0 and 1 are distribution_errors'
            truth = problem.log_prob_fn(x, problem.sde.t_min)
            converged = {
                name: _unpack(fn(problem, x, converged_level), "log_prob", f"method {name!r}")[0]
                for name, fn in methods.items()
            }  # fmt: skip
            if log:
                log(f"# likelihood {problem.name}, point set {point_set}: {x.shape[0]} points, converged ready")
            runs = [(lv, name) for lv in dict.fromkeys(v for vs in per_method.values() for v in vs)
                    for name in methods if lv in per_method[name]]  # fmt: skip
            calls = [(lambda fn=methods[name], p=problem, x=x, lv=lv: fn(p, x, lv)) for lv, name in runs]
            seconds, outs = interleaved_times(calls, repeats)
            for (level, name), sec, out in zip(runs, seconds, outs, strict=True):
                log_prob, nfe = _unpack(out, "log_prob", f"method {name!r}")
                if log_prob.shape != (x.shape[0],):
                    raise ValueError(f"method {name!r} returned shape {tuple(log_prob.shape)}, expected ({len(x)},)")
                per_sample = getattr(out, "sample_nfe", None)
                per_sample = torch.full((1,), float(nfe)) if per_sample is None else per_sample.double()
                rows.append({
                    "problem": problem.name, "dim": problem.dim, "points": x.shape[0], "point_set": point_set,
                    "method": name, "level": level, "nfe": nfe, "seconds": sec,
                    "sample_nfe_mean": per_sample.mean().item(), "sample_nfe_max": per_sample.max().item(),
                    **likelihood_errors(log_prob, converged[name], truth, problem.dim),
                })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# equal-cost summaries and tables


def _finite_rows(rows: Sequence[dict], error: str) -> list[dict]:
    return [r for r in rows if isinstance(r.get(error), (int, float)) and math.isfinite(r[error])]


def best_within(rows: Sequence[dict], nfe: float, error: str = "rmse") -> dict | None:
    """The row with the smallest finite ``error`` among ``rows`` with at most ``nfe``
    evaluations (``None`` if there is none): the error at equal cost. Select the rows first
    (one problem; the samplers or methods to compare)."""
    pool = [r for r in _finite_rows(rows, error) if r["nfe"] <= nfe]
    return min(pool, key=lambda r: r[error]) if pool else None


def fewest_nfe_within(
    rows: Sequence[dict], target: float, error: str = "max_err_per_dim", cost: str = "nfe"
) -> dict | None:
    """The row with the fewest NFE (or other ``cost``, e.g. ``"sample_nfe_mean"``) among ``rows``
    whose ``error`` is at most ``target`` (``None`` if there is none): the cost of a given
    accuracy. The first such row wins a tie."""
    pool = [r for r in _finite_rows(rows, error) if r[error] <= target]
    return min(pool, key=lambda r: r[cost]) if pool else None


def fitted_nfe_within(
    rows: Sequence[dict], target: float, error: str = "max_err_per_dim", cost: str = "nfe"
) -> float:
    """The NFE (or other ``cost``) at which a least-squares line through ``log error`` vs ``log
    cost`` (the rows of one method with error within a decade of ``target``) reaches ``target``;
    NaN with fewer than 3 distinct costs in that band or if the error does not fall with the cost.
    Unlike :func:`fewest_nfe_within` it does not jump with the step of the tolerance grid."""
    band = [r for r in _finite_rows(rows, error) if target / 10 < r[error] < target * 10]
    if len({r[cost] for r in band}) < 3:
        return math.nan
    x = [math.log(r[cost]) for r in band]
    y = [math.log(r[error]) for r in band]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)
    if not slope < 0:
        return math.nan
    return math.exp(mx + (math.log(target) - my) / slope)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3g}"
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """``rows`` as a Markdown table of ``columns`` (floats to 3 significant digits; a missing
    value or NaN is an empty cell)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


__all__ = [
    "T_END",
    "REFERENCE_TOL",
    "SW_PROJECTIONS",
    "SamplerFn",
    "LikelihoodFn",
    "mixture_2d",
    "mixture_16d",
    "MIXTURES",
    "SDES",
    "STANDARD_PROBLEMS",
    "Problem",
    "standard_problem",
    "per_sample_error",
    "mode_switch_fraction",
    "pathwise_errors",
    "distribution_errors",
    "likelihood_errors",
    "interleaved_times",
    "compare_samplers",
    "compare_likelihoods",
    "best_within",
    "fewest_nfe_within",
    "fitted_nfe_within",
    "markdown_table",
]
