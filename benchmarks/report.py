"""Tables, target ratios and plots from the benchmark rows (the equal-cost summaries are
:mod:`scoresde.benchmark`'s)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

from scoresde.benchmark import best_within, fewest_nfe_within, fitted_nfe_within

TARGET_BUDGETS = (5, 10, 20)
PEERS = ("k-diffusion", "diffusers")
LIKELIHOOD_TARGET = 1e-3
LIKELIHOOD_RATIOS = tuple(
    f"{kind}_vs_{peer}"
    for kind in ("nfe_ratio", "fitted_nfe_ratio", "sample_nfe_ratio", "time_ratio")
    for peer in ("k_diffusion", "scipy")
)


def _best(rows: list[dict], budget: int, error: str, keep: Callable[[dict], bool]) -> dict | None:
    return best_within([r for r in rows if keep(r)], budget, error)


def _label(row: dict) -> str:
    return f"{row['sampler']} ({row['grid']}, {row['nfe']})"


def sampling_targets(rows: list[dict]) -> list[dict]:
    """Per problem and budget, for the RMSE and the median per-sample error alike: scoresde's
    best deterministic sampler (the lowest error with NFE <= budget), its best on untuned grids
    (no ``+tuned``/``+dp`` rows), the best of the peers (k-diffusion and diffusers, any sampler on
    any of their grids), and the ratios (target: <= 0.5)."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        here = [r for r in rows if r["problem"] == problem]
        if not any(r["library"] in PEERS for r in here):
            continue
        for budget in (b for b in TARGET_BUDGETS if b in {r["level"] for r in here}):
            row: dict = {"problem": problem, "nfe_budget": budget}
            for error, short in (("rmse", "rmse"), ("median_error", "median")):
                ours = _best(here, budget, error, lambda r: r["library"] == "scoresde")
                untuned = _best(here, budget, error, lambda r: r["library"] == "scoresde" and "+" not in r["sampler"])
                peer = _best(here, budget, error, lambda r: r["library"] in PEERS)
                if ours is None or untuned is None or peer is None:
                    break
                row |= {
                    f"scoresde_best_{short}": _label(ours), f"scoresde_{short}": ours[error],
                    f"untuned_best_{short}": _label(untuned), f"untuned_{short}": untuned[error],
                    f"peer_best_{short}": _label(peer), f"peer_{short}": peer[error],
                    f"ratio_{short}": ours[error] / peer[error], f"untuned_ratio_{short}": untuned[error] / peer[error],
                }  # fmt: skip
            else:
                row["met"] = row["ratio_rmse"] <= 0.5 and row["ratio_median"] <= 0.5
                out.append(row)
    return out


def likelihood_targets(rows: list[dict]) -> list[dict]:
    """:func:`likelihood_targets_of` for each of our methods (``scoresde:<solver>/<divergence>``),
    against scipy with the same divergence (k-diffusion has one probe only)."""
    methods = dict.fromkeys(r["method"] for r in rows if r["method"].startswith("scoresde:"))
    rows = [{"sample_nfe_mean": r["nfe"]} | r for r in rows]  # rows of older runs: every sample took nfe
    return [
        r for divergence in ("exact", "hutchinson") for ours in methods if ours.endswith(f"/{divergence}")
        for r in likelihood_targets_of(rows, ours, f"scipy:RK45/{divergence}")
    ]  # fmt: skip


def likelihood_targets_of(rows: list[dict], ours: str, scipy: str) -> list[dict]:
    """Per problem and point set: fewest NFE (and the wall time of that run) at which each
    method's max error is within 1e-3 nats/dim of its converged value; ratios of ``ours`` to
    k-diffusion and to the ``scipy`` method, also of the NFE read off a log-log fit
    (:func:`~scoresde.benchmark.fitted_nfe_within`, which does not jump with the tolerance grid)
    and of our fewest evaluations per sample (``sample_nfe``: the NFE, except on a designed grid,
    whose refined samples take evaluations the others do not)."""
    out = []
    for problem, point_set in dict.fromkeys((r["problem"], r.get("point_set", 0)) for r in rows):
        runs = [r for r in rows if r["problem"] == problem and r.get("point_set", 0) == point_set]
        by_method = {m: [r for r in runs if r["method"] == m] for m in (ours, "k-diffusion:log_likelihood", scipy)}
        fitted = {m: fitted_nfe_within(group, LIKELIHOOD_TARGET) for m, group in by_method.items()}
        first = {m: row for m, group in by_method.items() if (row := fewest_nfe_within(group, LIKELIHOOD_TARGET))}
        if ours not in first:
            continue
        per_sample = fewest_nfe_within(by_method[ours], LIKELIHOOD_TARGET, cost="sample_nfe_mean")
        row = {"problem": problem, "point_set": point_set, "scoresde_method": ours,
               "scoresde_nfe": first[ours]["nfe"], "scoresde_sample_nfe": per_sample["sample_nfe_mean"],
               "scoresde_seconds": first[ours]["seconds"]}  # fmt: skip
        for key, peer in (("k_diffusion", "k-diffusion:log_likelihood"), ("scipy", scipy)):
            if peer in first:
                row[f"{key}_nfe"] = first[peer]["nfe"]
                row[f"{key}_seconds"] = first[peer]["seconds"]
                row[f"nfe_ratio_vs_{key}"] = first[ours]["nfe"] / first[peer]["nfe"]
                row[f"sample_nfe_ratio_vs_{key}"] = per_sample["sample_nfe_mean"] / first[peer]["nfe"]
                row[f"time_ratio_vs_{key}"] = first[ours]["seconds"] / first[peer]["seconds"]
                row[f"fitted_nfe_ratio_vs_{key}"] = fitted[ours] / fitted[peer]
        out.append(row)
    return out


def likelihood_summary(targets: list[dict]) -> list[dict]:
    """Per problem and our method, each ratio of :func:`likelihood_targets` over the point sets:
    its geometric mean and, under ``<ratio>_range``, the smallest and largest (with the number
    of sets that have it, when some do not)."""
    out = []
    for key in dict.fromkeys((t["problem"], t["scoresde_method"]) for t in targets):
        group = [t for t in targets if (t["problem"], t["scoresde_method"]) == key]
        row = {"problem": key[0], "scoresde_method": key[1], "point_sets": len(group)}
        for ratio in LIKELIHOOD_RATIOS:
            values = [t[ratio] for t in group if math.isfinite(t.get(ratio, math.nan))]
            if values:
                row[ratio] = math.exp(sum(map(math.log, values)) / len(values))
                count = f" ({len(values)})" if len(values) < len(group) else ""
                row[f"{ratio}_range"] = f"{min(values):.3g}-{max(values):.3g}{count}"
        out.append(row)
    return out


def plot_sampling(rows: list[dict], path: Path) -> None:
    """Error vs NFE, log-log, one panel per problem, one line per deterministic sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scoresde.plot import save_figure

    problems = list(dict.fromkeys(r["problem"] for r in rows))
    cols = min(3, len(problems))
    lines = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5 * cols, 4 * lines), squeeze=False)
    for ax, problem in zip(axes.flat, problems, strict=False):
        for name in dict.fromkeys(r["sampler"] for r in rows if "rmse" in r):
            pts = sorted((r["nfe"], r["rmse"]) for r in rows if r["sampler"] == name and r["problem"] == problem)
            if pts:
                style = "o-" if name.startswith("scoresde") else "s--"
                ax.loglog(*zip(*pts, strict=True), style, label=name, ms=3, lw=1)
        ax.set(title=problem, xlabel="NFE", ylabel="RMSE vs reference")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(problems) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_likelihood(rows: list[dict], path: Path) -> None:
    """Max error per dim vs NFE and vs wall time on the first point set, one row per problem: a
    marker per run, and per method a line along its frontier (the smallest error reached at no
    more NFE, or time). Joining the runs in tolerance order zigzags, since error and cost are not
    monotone in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scoresde.plot import save_figure

    rows = [r for r in rows if r.get("point_set", 0) == 0]
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(len(problems), 2, figsize=(10, 3.6 * len(problems)), squeeze=False)
    for (ax_nfe, ax_time), problem in zip(axes, problems, strict=True):
        for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            runs = [r for r in rows if r["method"] == method and r["problem"] == problem]
            for ax, cost in ((ax_nfe, "nfe"), (ax_time, "seconds")):
                pts = sorted((r[cost], r["max_err_per_dim"]) for r in runs)
                costs, errs = zip(*pts, strict=True)
                ax.loglog(costs, errs, "o", color=f"C{i}", ms=2.5, alpha=0.45)
                ax.loglog(costs, list(itertools.accumulate(errs, min)), "-", color=f"C{i}", label=method, lw=1.2,
                          drawstyle="steps-post")  # fmt: skip
        for ax, xlabel in ((ax_nfe, "NFE"), (ax_time, "wall time (s)")):
            ax.axhline(LIKELIHOOD_TARGET, color="k", lw=0.5)
            ax.set(title=problem, xlabel=xlabel, ylabel="max |error| (nats/dim)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
