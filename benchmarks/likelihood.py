"""Likelihood benchmark: accuracy vs tolerance vs NFE vs wall time, exact vs Hutchinson.

Problems are Gaussian mixtures (2-D and 16-D) under the VP and VE SDEs with their exact
scores, so the only errors are the integrator's, the divergence estimator's and the prior's:

- ``err/dim``: mean and max over points of |log p - log p_{t_min}(x)| / D, with the exact
  log p_T at the end point (integrator and estimator error only);
- ``prior err/dim``: the same with the SDE's Gaussian prior (adds the prior mismatch);
- ``bias/dim`` and ``std/dim`` of the error over points (Hutchinson noise shows in std);
- ``nfe`` and wall time of one batched solve (one thread: the problems are tiny).

Also measured: the spread (std over probe draws, in bits/dim) of the Hutchinson estimate
for 1/4/16 probes, and torchdiffeq's batch-RMS error norm against the per-sample norm
``log_likelihood`` uses. Usage (from the repository root)::

    python benchmarks/likelihood.py --quick      # ~1-2 min on one CPU core
    python benchmarks/likelihood.py              # more points and tolerances

Writes ``benchmarks/results/likelihood.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the checkout this file lives in, installed or not

import scoresde as sd  # noqa: E402


def make_mixture(dim: int, seed: int = 0) -> sd.GaussianMixture:
    """Three components, means of norm 1.5, random full covariances (eigenvalues 0.05-0.5)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, dim, generator=g, dtype=torch.float64)
    means = 1.5 * means / means.norm(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(torch.randn(3, dim, dim, generator=g, dtype=torch.float64))
    eig = 0.05 + 0.45 * torch.rand(3, dim, generator=g, dtype=torch.float64)
    covs = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    return sd.GaussianMixture(means, 0.5 * (covs + covs.transpose(1, 2)), torch.tensor([0.5, 0.3, 0.2]))


SDES = {"VP": lambda: sd.VPSDE(), "VE": lambda: sd.VESDE(sigma_min=0.01, sigma_max=50.0)}
ESTIMATORS = {
    "exact": {"divergence": "exact"},
    "hutch-rad-1": {"divergence": "hutchinson", "probe": "rademacher", "num_probes": 1},
    "hutch-gauss-1": {"divergence": "hutchinson", "probe": "gaussian", "num_probes": 1},
}


def batch_rms_norm(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """torchdiffeq's default for tuple states: the max over tensors of the RMS over everything."""
    return torch.stack([s.square().mean().sqrt() for s in state]).amax()


def run_case(sde_name: str, dim: int, num_points: int, tol: float, estimator: str, options: dict | None = None):
    sde, gmm = SDES[sde_name](), make_mixture(dim)
    x = gmm.sample(num_points, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_p = gmm.log_prob_fn(sde)
    start = time.perf_counter()
    res = sd.log_likelihood(
        gmm.score_fn(sde), sde, x, rtol=tol, atol=tol, generator=torch.Generator().manual_seed(2),
        prior_log_prob_fn=lambda z: log_p(z, sde.T), options=options, **ESTIMATORS[estimator],
    )
    seconds = time.perf_counter() - start
    truth = log_p(x, sde.t_min)
    err = (res.log_prob - truth) / dim
    prior_err = (sde.prior_log_prob(res.z) + res.delta_log_prob - truth) / dim
    return {
        "sde": sde_name, "dim": dim, "points": num_points, "tol": tol, "estimator": estimator,
        "norm": "batch-rms" if options else "per-sample",
        "nfe": res.nfe, "seconds": seconds,
        "mean_abs_err_per_dim": err.abs().mean().item(), "max_abs_err_per_dim": err.abs().max().item(),
        "bias_per_dim": err.mean().item(), "std_per_dim": err.std().item(),
        "prior_mean_abs_err_per_dim": prior_err.abs().mean().item(),
    }


def hutchinson_spread(sde_name: str, dim: int, num_points: int, num_draws: int) -> list[dict]:
    """Std over probe draws of the bits/dim estimate, averaged over points (one solve per
    probe count: every point is repeated num_draws times with its own probes)."""
    sde, gmm = SDES[sde_name](), make_mixture(dim)
    x = gmm.sample(num_points, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rows = []
    for probe in ("rademacher", "gaussian"):
        for num_probes in (1, 4, 16):
            res = sd.log_likelihood(
                gmm.score_fn(sde), sde, x.repeat(num_draws, 1), divergence="hutchinson", probe=probe,
                num_probes=num_probes, rtol=1e-5, atol=1e-5, generator=torch.Generator().manual_seed(num_probes),
            )
            bpd = -res.log_prob.reshape(num_draws, num_points) / (dim * math.log(2))
            rows.append({
                "sde": sde_name, "dim": dim, "probe": probe, "num_probes": num_probes,
                "std_bits_per_dim": bpd.std(0).mean().item(), "nfe": res.nfe,
            })
    return rows


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format(row[key], fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and tolerances (~1-2 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "likelihood.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    tols = [1e-3, 1e-4, 1e-5] if args.quick else [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
    points = {2: 128, 16: 64} if args.quick else {2: 512, 16: 256}
    accuracy = []
    for sde_name in SDES:
        for dim in (2, 16):
            for estimator in ESTIMATORS:
                for tol in tols if estimator == "exact" else [1e-5]:
                    accuracy.append(run_case(sde_name, dim, points[dim], tol, estimator))
            options = {"norm": batch_rms_norm}
            accuracy.append(run_case(sde_name, dim, points[dim], 1e-5, "exact", options))
    spread = [
        row for sde_name in SDES for dim in (2, 16)
        for row in hutchinson_spread(sde_name, dim, 8, 50 if args.quick else 200)
    ]

    print("## Accuracy vs tolerance vs NFE (nats/dim against the exact mixture log-density)\n")
    print(markdown(accuracy, [
        ("sde", "SDE", ""), ("dim", "D", "d"), ("estimator", "divergence", ""), ("norm", "step norm", ""),
        ("tol", "rtol=atol", ".0e"), ("nfe", "NFE", "d"), ("seconds", "time (s)", ".2f"),
        ("mean_abs_err_per_dim", "mean |err|/D", ".1e"), ("max_abs_err_per_dim", "max |err|/D", ".1e"),
        ("bias_per_dim", "bias/D", ".1e"), ("std_per_dim", "std/D", ".1e"),
        ("prior_mean_abs_err_per_dim", "w/ prior mean |err|/D", ".1e"),
    ]))
    print("\n## Hutchinson spread: std over probe draws of bits/dim (rtol=atol=1e-5)\n")
    print(markdown(spread, [
        ("sde", "SDE", ""), ("dim", "D", "d"), ("probe", "probe", ""), ("num_probes", "probes", "d"),
        ("std_bits_per_dim", "std (bits/dim)", ".4f"), ("nfe", "NFE", "d"),
    ]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "threads": torch.get_num_threads(), "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.write_text(json.dumps({"meta": meta, "accuracy": accuracy, "hutchinson_spread": spread}, indent=1))
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
