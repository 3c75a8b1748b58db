"""Metrics against exact answers, and interleaved wall-time measurement."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from scoresde.bench.problems import Problem
from scoresde.metrics import pathwise_rmse, sliced_wasserstein

SW_PROJECTIONS = 64


def pathwise_errors(problem: Problem, x: Tensor) -> dict[str, float]:
    """Against the reference from the same noise: RMSE of the final state, the median
    per-sample error, and the fraction of samples whose mixture component differs from the
    reference's (a mode switch, which dominates the RMSE on multimodal data)."""
    err = (x - problem.reference).flatten(1).norm(dim=1)
    return {
        "rmse": pathwise_rmse(x, problem.reference).item(),
        "median_error": err.median().item(),
        "mode_switch_fraction": (problem.mode(x) != problem.mode(problem.reference)).double().mean().item(),
    }


def sw_distance(x: Tensor, y: Tensor) -> float:
    return sliced_wasserstein(x, y, SW_PROJECTIONS, torch.Generator().manual_seed(1)).item()


def distribution_errors(problem: Problem, x: Tensor) -> dict[str, float]:
    """Against exact data samples: sliced Wasserstein distance, and the gap between the mean
    exact log-density of the generated and of true samples, each with its two-sample noise
    floor (the same statistic between two independent sets of true samples)."""
    data, other = problem.true_samples(0), problem.true_samples(1)
    mean_log_p = problem.log_prob_0(data).mean()
    return {
        "sw": sw_distance(x, data),
        "sw_floor": sw_distance(other, data),
        "log_p_gap": (problem.log_prob_0(x).mean() - mean_log_p).item(),
        "log_p_gap_floor": (problem.log_prob_0(other).mean() - mean_log_p).abs().item(),
    }


def interleaved_times(calls: Sequence[Callable[[], Any]], repeats: int) -> tuple[list[float], list[Any]]:
    """Run ``calls`` round-robin ``repeats`` times; return each one's median wall time (s) and
    its last result. Interleaving makes a change of machine load hit every call alike."""
    times: list[list[float]] = [[] for _ in calls]
    results: list[Any] = [None] * len(calls)
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            results[i] = call()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], results
