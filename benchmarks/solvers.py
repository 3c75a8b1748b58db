"""Error vs NFE for every sampler on analytic Gaussian mixtures (2-D and 16-D) under VP and VE.

Deterministic samplers (the ODE solvers) are compared sample by sample with a dopri5
solution at rtol = atol = 1e-10 in float64 from the same initial noise: RMSE, median
per-sample error, and the fraction of samples whose nearest mixture mean differs from the
reference's (a mode switch, which dominates the RMSE on multimodal data). Stochastic
samplers (reverse SDE, predictor-corrector) have no pathwise reference: for them, and for
all others too, the sliced Wasserstein distance to exact data samples is reported, next to
its two-sample noise floor.

    python benchmarks/solvers.py            # full: 4000 samples, more step counts
    python benchmarks/solvers.py --quick    # 1000 samples, a few step counts (~1-2 min)

Writes a markdown table to stdout, benchmarks/results/solvers.json and solvers.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import scoresde as sd

RESULTS = Path(__file__).parent / "results"
T_END = 1e-3


def mixtures() -> dict[str, sd.GaussianMixture]:
    g = torch.Generator().manual_seed(7)
    means_16 = 1.5 * torch.randn(3, 16, generator=g, dtype=torch.float64)
    return {
        "2d": sd.GaussianMixture(
            torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]),
            torch.tensor([[0.3, 0.2], [0.2, 0.5], [0.4, 0.1]]),
            torch.tensor([0.4, 0.35, 0.25]),
        ),
        "16d": sd.GaussianMixture(means_16, 0.2 + 0.4 * torch.rand(3, 16, generator=g, dtype=torch.float64)),
    }


def sdes() -> dict[str, sd.LinearSDE]:
    return {"vp": sd.VPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0)}


def samplers(quick: bool) -> list[tuple[str, dict, bool]]:
    """(name, keyword arguments for its sample_* function, deterministic?)."""
    few = [5, 10, 20, 50] if quick else [5, 10, 20, 50, 100, 200]
    runs: list[tuple[str, dict, bool]] = []
    for method in ["euler", "heun", "ddim", "dpmpp_2m", "dpmpp_3m"]:
        for n in few:
            runs.append((f"ode:{method}", {"fn": "ode", "method": method, "num_steps": n}, True))
    for tol in [1e-3, 1e-5]:
        runs.append((f"ode:dopri5@{tol:g}", {"fn": "ode", "method": "dopri5", "rtol": tol, "atol": tol}, True))
    for n in [10, 20] if quick else [10, 20, 50]:
        runs.append(("ode:rk4", {"fn": "ode", "method": "rk4", "num_steps": n}, True))
    for n in [20, 100] if quick else [20, 100, 500]:
        runs.append(("sde:euler", {"fn": "sde", "num_steps": n}, False))
        runs.append(("pc:ancestral", {"fn": "pc", "predictor": "ancestral", "corrector": None, "num_steps": n}, False))
        runs.append(("pc:reverse_diffusion+langevin(batch)",
                     {"fn": "pc", "num_steps": n, "denoise": False}, False))  # fmt: skip
    return runs


def nearest_mean(gmm: sd.GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.flatten(1), gmm.means.to(x)).argmin(1)


def run(quick: bool) -> list[dict]:
    n = 1000 if quick else 4000
    fns = {"ode": sd.sample_ode, "sde": sd.sample_sde, "pc": sd.sample_pc}
    rows = []
    for mix_name, gmm in mixtures().items():
        g = torch.Generator().manual_seed(0)
        data = gmm.sample(n, generator=g, dtype=torch.float64)
        floor = sd.sliced_wasserstein(data, gmm.sample(n, generator=g, dtype=torch.float64), 64,
                                      torch.Generator().manual_seed(1)).item()  # fmt: skip
        for sde_name, sde in sdes().items():
            score = gmm.score_fn(sde)
            x_init = sde.prior_sample((n, gmm.dim), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            ref = sd.sample_ode(score, sde, x_init=x_init, rtol=1e-10, atol=1e-10, t_end=T_END)
            ref_mode = nearest_mean(gmm, ref.x)
            print(f"# {mix_name} {sde_name}: reference NFE {ref.nfe}, SW noise floor {floor:.4f}", flush=True)
            for name, kwargs, deterministic in samplers(quick):
                kwargs = dict(kwargs)
                fn = fns[kwargs.pop("fn")]
                start = time.perf_counter()
                res = fn(score, sde, x_init=x_init, t_end=T_END, generator=torch.Generator().manual_seed(3), **kwargs)
                seconds = time.perf_counter() - start
                row = {
                    "mixture": mix_name, "sde": sde_name, "sampler": name, "nfe": res.nfe, "seconds": seconds,
                    "sw_to_data": sd.sliced_wasserstein(res.x, data, 64, torch.Generator().manual_seed(1)).item(),
                    "sw_noise_floor": floor,
                }  # fmt: skip
                if deterministic:
                    err = (res.x - ref.x).flatten(1).norm(dim=1)
                    row |= {
                        "rmse": err.square().mean().sqrt().item(),
                        "median_error": err.median().item(),
                        "mode_switch_fraction": (nearest_mean(gmm, res.x) != ref_mode).double().mean().item(),
                    }
                rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def fmt(v):
        return "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    cols = ["mixture", "sde", "sampler", "nfe", "rmse", "median_error", "mode_switch_fraction", "sw_to_data",
            "sw_noise_floor", "seconds"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["mixture"], r["sde"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (mix, sde_name) in zip(axes[0], panels, strict=True):
        for name in dict.fromkeys(r["sampler"] for r in rows if "rmse" in r):
            pts = sorted((r["nfe"], r["rmse"]) for r in rows
                         if r["sampler"] == name and (r["mixture"], r["sde"]) == (mix, sde_name))  # fmt: skip
            ax.loglog(*zip(*pts, strict=True), "o-", label=name, ms=3)
        ax.set(title=f"{mix}, {sde_name}", xlabel="NFE", ylabel="RMSE vs dopri5 (1e-10)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples and step counts")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.quick)
    print(markdown(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"quick": args.quick, "t_end": T_END, "reference": "dopri5 rtol=atol=1e-10 float64, same x_init",
            "torch": torch.__version__}  # fmt: skip
    (RESULTS / "solvers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, RESULTS / "solvers.png")
    assert all(math.isfinite(r["sw_to_data"]) for r in rows)


if __name__ == "__main__":
    main()
