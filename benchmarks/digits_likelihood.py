"""Digits likelihood ablation (issue 20): test bits/dim of the digits U-Net of
``benchmarks/digits.py`` (VP SDE, DSM with likelihood weighting and importance-sampled times) as the
likelihood literature's ingredients are added, within a 30-minute CPU training budget.

Variants, each trained once for ``--steps`` (4000 steps: about 27 minutes on one thread here) from
the same initialisation and recipe (AdamW 2e-3, cosine decay, EMA 0.998, batch 128):

* ``eps_uniform``: the benchmark's model (:class:`~scoresde.EpsilonScore`) on uniformly dequantized
  data, only trained longer;
* ``eps_centres``: the same on the bin centres (no dequantization noise in training: the setting of
  i-DODE's truncated-normal dequantization, Zheng et al. 2023);
* ``v_centres``: :class:`~scoresde.VelocityScore` (v-prediction) on the bin centres.

Evaluation (the probability-flow ODE, dopri5 at ``--rtol``, Hutchinson with Rademacher probes,
17 levels, ``y = 2u - 1``): each model on all 297 test images with uniform dequantization
(``bits_per_dim``'s default: ``p_{t_min}``, ``t_min = 1e-5``) and with truncated-normal
dequantization (``dequantization="truncated_normal"``, tau = 3, so eps = 3.8e-3), one draw per image
(K = 1); then on the first ``--iw-images`` test images the importance-weighted bound with
``--importance-samples`` draws: from the same K draws per image the K = 1 bound (their mean) and the
K-sample bound, so their difference has a paired standard error. Checks: the ODE's convergence
(rtol 1e-5 against 1e-6 on ``--check-images`` images, same noise) and the Hutchinson noise of one
image's log-density (two probe draws on the same point), which bounds how much the noisy log-weights
could make the K-sample bound optimistic (by at most about var/2 nats).

    python benchmarks/digits_likelihood.py --threads 1                 # train what is missing, evaluate
    python benchmarks/digits_likelihood.py --threads 1 --resume        # evaluate trained runs again
    python benchmarks/digits_likelihood.py --steps 20 --quick          # smoke test

Writes ``benchmarks/results/digits_likelihood.json`` (or ``--results``), a markdown table and a plot
beside it; run folders in ``--out``/<variant>, each with ``cpu_seconds.json`` (the training
invocations' process CPU time).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: the checkout's root, so `benchmarks` and `scoresde` import
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scoresde as sd
from benchmarks.digits import add_training_arguments, comma_subset, make_net, ode_bpd, train_model
from scoresde.data import load_digits
from scoresde.noise import BatchNoise

PARAMETERISATIONS = {"eps": sd.EpsilonScore, "v": sd.VelocityScore}
VARIANTS = {  # name: (parameterisation, training data: uniformly dequantized or the bin centres)
    "eps_uniform": ("eps", "uniform"),
    "eps_centres": ("eps", "centres"),
    "v_centres": ("v", "centres"),
}
DEQUANTIZATIONS = ("uniform", "truncated_normal")
BASELINE = Path(__file__).parent / "results" / "digits.json"


def train_variant(
    name: str, train: sd.data.ImageData, args: argparse.Namespace
) -> tuple[torch.nn.Module, sd.VPSDE, dict]:
    """Train (or, with ``--resume``, reload) variant ``name``; the record adds ``cpu_seconds``, the
    process CPU time of every invocation that trained it (kept in the run folder)."""
    parameterisation, data = VARIANTS[name]
    torch.manual_seed(args.seed)  # the same initialisation for every variant
    sde = sd.VPSDE()
    model = PARAMETERISATIONS[parameterisation](make_net(args, train.levels[0].numel()), sde)
    source = train if data == "uniform" else train.to_model(train.levels, dequantize=False)
    cpu, out = time.process_time(), Path(args.out) / name
    model, info = train_model(model, sde, source, args, str(out))
    record = out / "cpu_seconds.json"
    spent = json.loads(record.read_text()) if record.exists() else {}
    if info["steps"] > info["resumed_at_step"]:
        spent[f"steps {info['resumed_at_step']}-{info['steps']}"] = time.process_time() - cpu
        record.write_text(json.dumps(spent, indent=1) + "\n")
    return model, sde, {**info, "cpu_seconds": sum(spent.values())}


def importance_weighted(
    model: torch.nn.Module, sde: sd.VPSDE, test: sd.data.ImageData, args: argparse.Namespace, dequantization: str
) -> dict:
    """K = 1 and K-sample bounds (bits/dim) on the first ``--iw-images`` test images from the same K
    draws per image (per-sample seeds), with standard errors over images and of their paired difference."""
    num_dims, k = test.levels[0].numel(), args.importance_samples
    t0, weights, nfe = time.perf_counter(), [], 0
    levels = test.levels[: args.iw_images]
    with torch.no_grad():
        for start in range(0, len(levels), args.iw_batch_size):
            batch = levels[start : start + args.iw_batch_size]
            res = sd.bits_per_dim(
                model, sde, batch, num_bins=test.num_levels, transform=test.transform, dequantization=dequantization,
                importance_samples=k, seed=args.seed + 1, sample_indices=torch.arange(start, start + len(batch)),
                divergence="hutchinson", num_probes=args.num_probes, rtol=args.rtol, atol=args.rtol,
            )  # fmt: skip
            weights.append(res.log_weight.double())
            nfe += res.nfe
    log_w = torch.cat(weights, 1)  # (K, images)
    to_bpd = -1 / (num_dims * math.log(2))
    one = log_w.mean(0) * to_bpd
    many = (log_w.logsumexp(0) - math.log(k)) * to_bpd
    n = len(one)
    return {"images": n, "importance_samples": k, "k1": mean_se(one), f"k{k}": mean_se(many),
            "difference": mean_se(many - one), "nfe_total": nfe, "seconds": time.perf_counter() - t0}  # fmt: skip


def mean_se(values: torch.Tensor) -> dict:
    """Mean and standard error (sample std / sqrt n) of per-image values."""
    return {"bpd": values.mean().item(), "std_error": (values.std() / math.sqrt(len(values))).item()}


def tolerance_check(
    model: torch.nn.Module, sde: sd.VPSDE, test: sd.data.ImageData, args: argparse.Namespace, dequantization: str
) -> dict:
    """Bits/dim of the first ``--check-images`` test images at rtol = atol = 1e-5 and 1e-6 with the same
    dequantization noise and probes: the mean paired difference and its standard error."""
    levels, rows = test.levels[: args.check_images], {}
    with torch.no_grad():
        for rtol in (1e-5, 1e-6):
            res = sd.bits_per_dim(
                model, sde, levels, num_bins=test.num_levels, transform=test.transform, dequantization=dequantization,
                seed=args.seed + 1, divergence="hutchinson", num_probes=args.num_probes, rtol=rtol, atol=rtol,
            )  # fmt: skip
            rows[rtol] = (res.bits_per_dim.double(), res.nfe)
    (coarse, nfe_coarse), (fine, nfe_fine) = rows[1e-5], rows[1e-6]
    return {"images": len(levels), "rtol_1e-5": mean_se(coarse), "rtol_1e-6": mean_se(fine),
            "difference": mean_se(fine - coarse), "nfe": {"1e-5": nfe_coarse, "1e-6": nfe_fine}}  # fmt: skip


def hutchinson_noise(
    model: torch.nn.Module, sde: sd.VPSDE, test: sd.data.ImageData, args: argparse.Namespace, dequantization: str
) -> dict:
    """Standard deviation (nats per image) of the Hutchinson estimate of ``log p`` at fixed points: the
    first ``--check-images`` test images, one dequantization draw, two independent probe draws."""
    levels = test.levels[: args.check_images].to(torch.get_default_dtype())
    dequantizer = sd.dequantization.make_dequantization(dequantization, test.num_levels, test.transform, sde, levels)
    x, _ = dequantizer.draw(levels, BatchNoise(torch.Generator().manual_seed(args.seed + 4)))
    estimates = []
    with torch.no_grad():
        for probe_seed in (5, 6):
            res = sd.log_likelihood(model, sde, x, divergence="hutchinson", num_probes=args.num_probes, rtol=args.rtol,
                                    atol=args.rtol, t_end=dequantizer.t_end,
                                    generator=torch.Generator().manual_seed(args.seed + probe_seed))  # fmt: skip
            estimates.append(res.log_prob.double())
    std = ((estimates[0] - estimates[1]).square().mean() / 2).sqrt().item()
    return {"images": len(levels), "std_nats": std,
            "max_optimism_bpd": std**2 / 2 / (levels[0].numel() * math.log(2))}  # fmt: skip


def evaluate(model: torch.nn.Module, sde: sd.VPSDE, test: sd.data.ImageData, args: argparse.Namespace) -> dict:
    """Every estimate of one model (see the module docstring)."""
    entry: dict[str, Any] = {}
    for dequantization in DEQUANTIZATIONS:
        row = ode_bpd(model, sde, test, args, dequantization=dequantization)
        print(f"  {dequantization} K=1, {row['num_test_images']} images: {row['bpd']:.4f} +- {row['std_error']:.4f} "
              f"({row['nfe_total']} NFE, {row['seconds']:.0f} s)", flush=True)  # fmt: skip
        entry[dequantization] = row
    best = min(DEQUANTIZATIONS, key=lambda d: entry[d]["bpd"])
    entry["best_dequantization"] = best
    iw = importance_weighted(model, sde, test, args, best)
    k = args.importance_samples
    print(f"  {best} on {iw['images']} images: K=1 {iw['k1']['bpd']:.4f} +- {iw['k1']['std_error']:.4f}, "
          f"K={k} {iw[f'k{k}']['bpd']:.4f} +- {iw[f'k{k}']['std_error']:.4f}, difference "
          f"{iw['difference']['bpd']:.4f} +- {iw['difference']['std_error']:.4f} ({iw['seconds']:.0f} s)", flush=True)
    entry["importance_weighted"] = iw
    entry["tolerance_check"] = tolerance_check(model, sde, test, args, best)
    entry["hutchinson_noise"] = hutchinson_noise(model, sde, test, args, best)
    print(f"  rtol 1e-6 - 1e-5: {entry['tolerance_check']['difference']}; Hutchinson std "
          f"{entry['hutchinson_noise']['std_nats']:.3f} nats/image", flush=True)  # fmt: skip
    return entry


def ablation(results: dict) -> list[dict]:
    """The ablation rows, each adding one ingredient to the one before."""
    base, models, k = results["baseline"], results["models"], results["config"]["importance_samples"]
    rows = [{"row": "baseline: eps, uniform data, 2500 steps (digits.json)", "dequantization": "uniform", "K": 1,
             "images": base["num_test_images"], "bpd": base["bpd"], "std_error": base["std_error"],
             "nfe_per_solve": base["nfe_total"] / 3, "steps": base["steps"], "cpu_seconds": None,
             "step_seconds": base["logged_train_seconds"]}]  # fmt: skip

    def add(label: str, name: str, estimate: dict, dequantization: str, kk: int, images: int, nfe: float) -> None:
        if name not in models:
            return
        t = models[name]["training"]
        rows.append({"row": label, "dequantization": dequantization, "K": kk, "images": images, **estimate,
                     "nfe_per_solve": nfe, "steps": t["steps"], "cpu_seconds": t["cpu_seconds"],
                     "step_seconds": t["logged_train_seconds"]})  # fmt: skip

    def full(name: str, dequantization: str) -> tuple[dict, str, int, int, float]:
        row = models[name]["bpd"][dequantization]
        solves = math.ceil(row["num_test_images"] / 128)
        return ({"bpd": row["bpd"], "std_error": row["std_error"]}, dequantization, 1, row["num_test_images"],
                row["nfe_total"] / solves)  # fmt: skip

    def weighted(name: str, kk: int) -> tuple[dict, str, int, int, float]:
        iw = models[name]["bpd"]["importance_weighted"]
        solves = math.ceil(iw["images"] / results["config"]["iw_batch_size"])  # each solve: all K draws
        return iw[f"k{kk}"], models[name]["bpd"]["best_dequantization"], kk, iw["images"], iw["nfe_total"] / solves

    if "eps_uniform" in models:
        add("+ trained 30 min (same recipe)", "eps_uniform", *full("eps_uniform", "uniform"))
    if "eps_centres" in models:
        add("+ trained on bin centres, truncated-normal dequantization", "eps_centres",
            *full("eps_centres", "truncated_normal"))  # fmt: skip
    if "v_centres" in models:
        add("+ v-parameterisation", "v_centres", *full("v_centres", "truncated_normal"))
        add(f"  same {models['v_centres']['bpd']['importance_weighted']['images']} images, K = 1", "v_centres",
            *weighted("v_centres", 1))  # fmt: skip
        add(f"+ importance-weighted, K = {k} (paired with the row above)", "v_centres", *weighted("v_centres", k))
    return rows


def markdown(results: dict) -> str:
    """The ablation table and each model's estimates as markdown."""
    lines = ["| ingredient | dequantization | K | test images | test bits/dim | NFE per solve | steps | CPU s "
             "(training) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["ablation"]:
        cpu = "-" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.0f}"
        lines.append(f"| {r['row']} | {r['dequantization']} | {r['K']} | {r['images']} | {r['bpd']:.3f} ± "
                     f"{r['std_error']:.3f} | {r['nfe_per_solve']:.0f} | {r['steps']} | {cpu} |")  # fmt: skip
    lines += ["", "| model | uniform, K=1 (297) | truncated normal, K=1 (297) | K=1 / K=16 on the IW subset | "
              "K=16 - K=1 (paired) | rtol 1e-6 - 1e-5 | Hutchinson std (nats/image) |", "|---|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        b, iw, tol = m["bpd"], m["bpd"]["importance_weighted"], m["bpd"]["tolerance_check"]
        k = iw["importance_samples"]
        lines.append(
            f"| {name} | {b['uniform']['bpd']:.3f} ± {b['uniform']['std_error']:.3f} | "
            f"{b['truncated_normal']['bpd']:.3f} ± {b['truncated_normal']['std_error']:.3f} | "
            f"{iw['k1']['bpd']:.3f} / {iw[f'k{k}']['bpd']:.3f} ({b['best_dequantization']}, {iw['images']}) | "
            f"{iw['difference']['bpd']:.4f} ± {iw['difference']['std_error']:.4f} | "
            f"{tol['difference']['bpd']:.4f} ± {tol['difference']['std_error']:.4f} | "
            f"{m['bpd']['hutchinson_noise']['std_nats']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """The ablation rows as points with standard-error bars, and the 1.6 target."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scoresde.plot import save_figure

    rows = results["ablation"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.errorbar(range(len(rows)), [r["bpd"] for r in rows], yerr=[r["std_error"] for r in rows], fmt="o", capsize=3)
    ax.axhline(1.6, color="tab:red", linestyle="--", label="target 1.6")
    ax.set_xticks(range(len(rows)), [textwrap.fill(r["row"].split("(")[0].strip(), 18) for r in rows], fontsize=7)
    ax.set_ylabel("test bits/dim")
    ax.set_title("digits: ODE bits/dim as ingredients are added")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, steps=4000)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {tuple(VARIANTS)}")
    parser.add_argument("--out", default="runs/digits_likelihood")
    parser.add_argument("--results", default="benchmarks/results/digits_likelihood.json")
    parser.add_argument("--num-probes", type=int, default=1)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--importance-samples", type=int, default=16)
    parser.add_argument("--iw-images", type=int, default=64, help="test images of the importance-weighted bound")
    parser.add_argument("--iw-batch-size", type=int, default=8, help="images per solve (times K draws)")
    parser.add_argument("--check-images", type=int, default=32, help="test images of the tolerance and probe checks")
    parser.add_argument("--train-only", action="store_true", help="train the variants, evaluate nothing")
    parser.add_argument("--quick", action="store_true", help="evaluate on 16 test images only")
    args = parser.parse_args()
    variants = comma_subset(parser, "--variants", args.variants, tuple(VARIANTS))
    torch.set_num_threads(args.threads)

    train, test = load_digits("train"), load_digits("test")
    if args.quick:
        test = test.subset(slice(0, 16))
        args.iw_images, args.check_images = min(args.iw_images, 8), min(args.check_images, 8)
    baseline = json.loads(BASELINE.read_text())["models"]["dsm"]
    results: dict[str, Any] = {"baseline": {**baseline["bpd"]["ode"], **baseline["training"]}, "models": {}}
    for name in variants:
        model, sde, training = train_variant(name, train, args)
        print(f"[{name}] trained: {training}", flush=True)
        if not args.train_only:
            results["models"][name] = {"training": training, "bpd": evaluate(model, sde, test, args)}
    if args.train_only:
        return
    results["config"] = {k: v for k, v in vars(args).items()}
    results["ablation"] = ablation(results)
    results["protocol"] = ("17 levels, y = 2u - 1; probability-flow ODE likelihood (dopri5, rtol = atol = "
                           f"{args.rtol}, Hutchinson, {args.num_probes} Rademacher probe); uniform dequantization "
                           "at t_min = 1e-5, truncated-normal at eps with sigma/alpha * 3 = 1/17; standard error "
                           "over test images (dequantization and probe noise included)")  # fmt: skip
    print(json.dumps(results["ablation"], indent=1))
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(results))
    plot(results, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
