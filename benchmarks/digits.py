"""Digits benchmark: test bits/dim and sample quality of U-Net models trained for a fixed step
budget on sklearn's 8x8 digits, against sklearn's 10-component full-covariance Gaussian mixture.

Two models, each trained once with the same network, recipe and number of steps:

* ``dsm``: an :class:`~scoresde.EpsilonScore` U-Net of the VP SDE, denoising score matching with
  likelihood weighting and importance-sampled times;
* ``flow``: a :class:`~scoresde.FlowVelocity` U-Net of :class:`~scoresde.LinearPath` (rectified
  flow), trained by conditional flow matching (``objective="flow_matching"``).

Protocol: the library's fixed train/test split (1500/297, :data:`scoresde.data.DIGITS_SPLIT_SEED`),
17 levels, uniform dequantization ``u = (x + nu)/17``, model space ``y = 2u - 1``, bits/dim = the
dequantization bound ``-(E log p_u(u) - D log 17)/(D ln 2)`` averaged over the 297 test images. What
is reported, every number with its standard error:

* test bits/dim of both models by the probability-flow ODE (dopri5, rtol = atol = 1e-5, Hutchinson
  divergence with Rademacher probes: unbiased for ``log p``, its noise is in the standard error), and
  of the DSM model by two variational bounds on the same data: DDPM's discrete ELBO (N = 1000 steps
  equally spaced in log-SNR, :func:`~scoresde.ddpm_elbo`) and the continuous-time ELBO
  (:func:`~scoresde.continuous_elbo`), each a Monte-Carlo estimate over ``--elbo-time-samples`` times
  per image (standard error over images, time noise included), on the bin centres with a decoder
  discretised on the bins, and again on the dequantized data (the ODE's protocol, an upper bound of its
  dequantization bound);
* the Fréchet distance in the bundled digits classifier's features (:func:`~scoresde.frechet_distance`
  on :func:`scoresde.nn.digits_features.pretrained` features, i.e. :func:`~scoresde.digits_frechet_distance`)
  of ``--num-samples`` samples against the 297 test images, its standard error by a bootstrap over both
  sets: DDPM ancestral sampling (:func:`~scoresde.sample_ddpm` on the K-step chain of the VP SDE, i.e.
  the 1000-step chain respaced to K steps) and DDIM (eta = 0, K of the 1000 steps) of the DSM model at
  K = 10/50/250, and fixed-step probability-flow ODE samplers of both models at 10/20/50 NFE (NFE as the
  sampler counts them), all from the same per-sample seeds. As a floor, the same number of training
  images scores the FD given as ``train_images``.

    python benchmarks/digits.py --threads 1             # the reported run: 2 x 2500 steps
    python benchmarks/digits.py --steps 20 --quick      # smoke test (seconds)

The recipe: AdamW at 2e-3 with 200 warm-up steps and cosine decay over ``--steps``, EMA 0.998, batch 128.
``--minutes`` caps each model's training.

Writes ``benchmarks/results/digits.json`` (or ``--results``), a markdown table beside it, and the run
folders ``--out``/dsm and ``--out``/flow.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

import scoresde as sd
from scoresde.data import load_digits
from scoresde.elbo import evaluate_elbo
from scoresde.nn import MLP, UNet
from scoresde.nn.digits_features import pretrained
from scoresde.train import Trainer

MODELS = ("dsm", "flow")


def gmm_baseline(train: sd.data.ImageData, test: sd.data.ImageData, *, copies: int = 4, seed: int = 0) -> dict:
    """Test bits/dim of sklearn's ``GaussianMixture(10, "full")`` fitted to dequantized train data."""
    from sklearn.mixture import GaussianMixture

    g = torch.Generator().manual_seed(seed)
    fit_u = torch.cat([train.to_model(train.levels, generator=g, dtype=torch.float64) for _ in range(copies)])
    gmm = GaussianMixture(10, covariance_type="full", random_state=seed).fit(fit_u.flatten(1).numpy())
    num_dims, k = test.levels[0].numel(), test.num_levels
    bpd = []
    for _ in range(copies):  # average the bound over dequantization draws, as for the score model
        y = test.to_model(test.levels, generator=g, dtype=torch.float64).flatten(1)
        log_py = torch.as_tensor(gmm.score_samples(y.numpy()))
        log_pu = log_py + test.transform.log_abs_det(y.reshape(test.levels.shape))
        bpd.append(-(log_pu - num_dims * math.log(k)) / (num_dims * math.log(2)))
    per_image = torch.stack(bpd).mean(0)
    return {"bpd": per_image.mean().item(), "std_error": (per_image.std() / math.sqrt(len(per_image))).item()}


def make_net(args: argparse.Namespace, num_pixels: int, num_classes: int | None = None) -> torch.nn.Module:
    """The benchmark's network (``--net``): the U-Net (``--channels`` ...) or an MLP on the pixels;
    ``num_classes`` makes the U-Net class-conditional."""
    if args.net == "mlp":
        if num_classes is not None:
            raise ValueError("a class-conditional model needs --net unet")
        return MLP(dim=num_pixels, hidden=args.hidden, depth=args.depth)
    return UNet(
        in_channels=1, channels=args.channels, channel_mults=[int(m) for m in args.channel_mults.split(",")],
        num_res_blocks=args.num_res_blocks, attention_levels=(1,), dropout=args.dropout, num_classes=num_classes,
    )  # fmt: skip


def comma_subset(parser: argparse.ArgumentParser, flag: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    """The comma-separated names of ``value`` (given as ``flag``), all of ``allowed``, or a parser error."""
    names = value.split(",")
    if not names or set(names) - set(allowed):
        parser.error(f"{flag} must be a comma-separated subset of {allowed}, got {value!r}")
    return names


def add_training_arguments(parser: argparse.ArgumentParser, *, steps: int = 2500) -> None:
    """The flags of the network and the training recipe, shared by the digits benchmarks."""
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget per model (a cap)")
    parser.add_argument("--steps", type=int, default=steps,
                        help="planned steps of the cosine learning-rate schedule (0: a constant rate until the "
                             "budget is spent)")  # fmt: skip
    parser.add_argument("--net", choices=("unet", "mlp"), default="unet", help="U-Net, or an MLP on the 64 pixels")
    parser.add_argument("--hidden", type=int, default=512, help="MLP width")
    parser.add_argument("--depth", type=int, default=4, help="MLP residual blocks")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--channel-mults", default="1,2,2")
    parser.add_argument("--num-res-blocks", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--ema-decay", type=float, default=0.998)
    parser.add_argument("--weighting", default="likelihood", help="DSM weighting (the DSM models)")
    parser.add_argument("--time-sampling", default="importance", help="DSM time sampling (the DSM models)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's checkpoint (a finished run: evaluate only)")  # fmt: skip


def train_model(
    model: torch.nn.Module,
    sde: sd.LinearSDE,
    train: sd.data.ImageData,
    args: argparse.Namespace,
    out: str,
    objective: str = "dsm",
    **settings: Any,
) -> tuple[torch.nn.Module, dict]:
    """Train ``model`` with the benchmark's recipe for ``--steps`` (capped at ``--minutes``) and
    return its EMA copy (eval mode) and a record: ``train_seconds`` (this invocation's wall time),
    ``logged_train_seconds`` (the steps' own times in the run's ``metrics.jsonl``, earlier invocations
    included: with ``--resume`` a finished run is evaluated again without training), ``steps``,
    ``resumed_at_step``, ``final_loss`` (the last logged mean loss) and ``parameters``."""
    if objective == "dsm":
        settings = {"weighting": args.weighting, "time_sampling": args.time_sampling, **settings}
    trainer = Trainer(
        model, sde, train, out_dir=out, steps=args.steps or 10**9, batch_size=args.batch_size, lr=args.lr,
        lr_schedule="cosine" if args.steps else "constant", warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay, objective=objective, seed=args.seed, device="cpu", log_every=100,
        config={k: v for k, v in vars(args).items()}, resume=args.resume, **settings,
    )  # fmt: skip
    first = trainer.step
    # without --steps the rate stays constant after warm-up, so the run can stop whenever the budget is spent;
    # with --steps it decays to 0 at that step, and the budget still caps the run
    budget, chunk, last, start = args.minutes * 60, 100, args.steps or math.inf, time.perf_counter()
    while time.perf_counter() - start < budget and trainer.step < last:
        result = trainer.train(stop_at=min(trainer.step + chunk, last))
        print(f"[{objective}] step {trainer.step}: loss {sum(result.losses) / len(result.losses):.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    logged = [json.loads(line) for line in trainer.metrics_path.read_text().splitlines()]
    logged = [r for r in logged if r["kind"] == "train"]  # the whole run's, earlier invocations included
    info = {"train_seconds": time.perf_counter() - start, "steps": trainer.step, "resumed_at_step": first,
            "logged_train_seconds": sum(r["seconds"] for r in logged),
            "final_loss": logged[-1]["loss"] if logged else math.nan,
            "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    return trainer.ema.module.eval(), info


def timed_bpd(evaluate: Any, *args: Any, **kwargs: Any) -> dict:
    """Run a bits/dim evaluator (returning a :class:`~scoresde.BpdEvaluation`) and give its result
    and wall time as a plain dict."""
    t0 = time.perf_counter()
    evaluation = evaluate(*args, **kwargs)
    return {"bpd": evaluation.mean, "std_error": evaluation.std_error, "num_test_images": evaluation.num_samples,
            "nfe_total": evaluation.nfe, "seconds": time.perf_counter() - t0}  # fmt: skip


def ode_bpd(
    model: torch.nn.Module, sde: sd.LinearSDE, test: sd.data.ImageData, args: argparse.Namespace, **bpd_kwargs: Any
) -> dict:
    """Test bits/dim by the probability-flow ODE (:func:`~scoresde.evaluate_bpd`, dopri5, Hutchinson);
    ``bpd_kwargs`` go to :func:`~scoresde.bits_per_dim` (e.g. ``dequantization=``)."""
    return timed_bpd(
        sd.evaluate_bpd, model, sde, test.levels, num_bins=test.num_levels, transform=test.transform, batch_size=128,
        divergence="hutchinson", probe="rademacher", num_probes=args.num_probes, rtol=args.rtol, atol=args.rtol,
        generator=torch.Generator().manual_seed(args.seed + 1), **bpd_kwargs,
    )  # fmt: skip


def elbo_bpd(
    model: torch.nn.Module, sde: sd.LinearSDE, test: sd.data.ImageData, args: argparse.Namespace, bound: str
) -> dict:
    """Test bits/dim by a variational bound of the discrete data (:func:`~scoresde.elbo.evaluate_elbo`:
    ``"ddpm"`` with ``--elbo-steps`` steps on a log-SNR grid, or the continuous ``"elbo"``; bin
    centres, the decoder discretised on the bins)."""
    return timed_bpd(
        evaluate_elbo, model, sde, test.levels, num_bins=test.num_levels, bound=bound, transform=test.transform,
        num_steps=args.elbo_steps, num_time_samples=args.elbo_time_samples, batch_size=128,
        generator=torch.Generator().manual_seed(args.seed + 2),
    )  # fmt: skip


def dequantized_elbo_bpd(
    model: torch.nn.Module, sde: sd.LinearSDE, test: sd.data.ImageData, args: argparse.Namespace, bound: str
) -> dict:
    """Test bits/dim by a variational bound of the *dequantized* data, the ODE's protocol: the bound
    ``B(y) >= -log p(y)`` of ``y = 2u - 1``, ``u = (x + nu)/17`` (:func:`~scoresde.ddpm_elbo` for
    ``bound="ddpm"``, else :func:`~scoresde.continuous_elbo`; continuous Gaussian decoder), in bits/dim
    ``(B(y) - log|det dy/du| + D log 17)/(D ln 2)``, an upper bound of the dequantization bound."""
    g = torch.Generator().manual_seed(args.seed + 2)
    schedule = sd.DiscreteSchedule.from_sde(sde, args.elbo_steps, grid="log_snr")
    num_dims, values, nfe, t0 = test.levels[0].numel(), [], 0, time.perf_counter()
    with torch.no_grad():
        for levels in test.levels.split(128):
            y = test.to_model(levels, generator=g)
            if bound == "ddpm":
                result = sd.ddpm_elbo(model, schedule, y, num_time_samples=args.elbo_time_samples, generator=g)
            else:
                result = sd.continuous_elbo(model, sde, y, num_time_samples=args.elbo_time_samples, generator=g)
            log_pu = -result.nats.double() + test.transform.log_abs_det(y).double()
            values.append(-(log_pu - num_dims * math.log(test.num_levels)) / (num_dims * math.log(2)))
            nfe += result.nfe
    bpd = torch.cat(values)
    return {"bpd": bpd.mean().item(), "std_error": (bpd.std() / math.sqrt(len(bpd))).item(),
            "num_test_images": len(bpd), "nfe_total": nfe, "seconds": time.perf_counter() - t0}  # fmt: skip


def frechet_with_error(levels: torch.Tensor, reference: torch.Tensor, *, num_bootstrap: int, seed: int) -> dict:
    """:func:`~scoresde.digits_frechet_distance` of ``levels`` against ``reference`` and its
    bootstrap standard error (both sets resampled with replacement ``num_bootstrap`` times)."""
    net = pretrained()
    with torch.no_grad():
        fx, fy = net.features(levels), net.features(reference)
    g = torch.Generator().manual_seed(seed)
    boots = torch.stack([
        sd.frechet_distance(fx[torch.randint(len(fx), (len(fx),), generator=g)],
                            fy[torch.randint(len(fy), (len(fy),), generator=g)])
        for _ in range(num_bootstrap)
    ])  # fmt: skip
    return {"fd": sd.frechet_distance(fx, fy).item(), "std_error": boots.std().item(), "num_samples": len(levels)}


def steps_for_nfe(method: str, budget: int, sde: sd.LinearSDE) -> tuple[int, int]:
    """The most steps at which ``sample_ode(method=...)`` makes at most ``budget`` network
    evaluations, and that NFE, read from the sampler's own count on a free field (Heun's
    ``2 n - 1`` cannot meet an even budget exactly: it gets one NFE less)."""
    found = None
    for num_steps in range(1, budget + 1):
        res = sd.sample_ode(lambda x, t: torch.zeros_like(x), sde, x_init=torch.zeros(1, 1), method=method,
                            num_steps=num_steps)  # fmt: skip
        if res.nfe > budget:
            break
        found = (num_steps, res.nfe)
    if found is None:
        raise ValueError(f"{method} needs more than {budget} NFE for a single step")
    return found


class SampleScorer:
    """Draws ``num_samples`` images from a sampler in batches, with per-sample seeds, and scores
    them by FD against the test set (:func:`frechet_with_error`)."""

    def __init__(self, test: sd.data.ImageData, args: argparse.Namespace) -> None:
        self.test, self.args = test, args

    def __call__(self, sampler: Any, *args: Any, **kwargs: Any) -> dict:
        """Run ``sampler(*args, shape=, seed=, sample_indices=, **kwargs)`` over the batches."""
        t0, xs, nfe = time.perf_counter(), [], 0
        n, batch = self.args.num_samples, self.args.sample_batch_size
        for start in range(0, n, batch):
            idx = torch.arange(start, min(start + batch, n))
            res = sampler(*args, shape=(len(idx), *self.test.image_shape), seed=self.args.seed + 3,
                          sample_indices=idx, **kwargs)  # fmt: skip
            xs.append(res.x)
            nfe = res.nfe
        levels = self.test.from_model(torch.cat(xs))
        row = frechet_with_error(levels, self.test.levels, num_bootstrap=self.args.bootstrap, seed=self.args.seed)
        return {**row, "nfe": nfe, "seconds": time.perf_counter() - t0}


def discrete_samplers(model: torch.nn.Module, sde: sd.LinearSDE, score: SampleScorer,
                      steps: list[int]) -> list[dict]:  # fmt: skip
    """FD of DDPM (the K-step chain of ``sde``) and DDIM (eta = 0, K of 1000 steps) at each K in ``steps``."""
    rows, chain = [], sd.DiscreteSchedule.from_sde(sde, 1000)
    with torch.no_grad():
        for k in steps:
            ddpm = score(sd.sample_ddpm, model, sd.DiscreteSchedule.from_sde(sde, k))
            ddim = score(sd.sample_ddim, model, chain, num_steps=k, eta=0.0)
            rows += [{"sampler": "ddpm", "steps": k, **ddpm}, {"sampler": "ddim", "steps": k, **ddim}]
            print(f"  K={k}: DDPM FD {ddpm['fd']:.2f} +- {ddpm['std_error']:.2f}, "
                  f"DDIM FD {ddim['fd']:.2f} +- {ddim['std_error']:.2f}", flush=True)  # fmt: skip
    return rows


def ode_samplers(model: torch.nn.Module, sde: sd.LinearSDE, score: SampleScorer, methods: list[str],
                 budgets: list[int]) -> list[dict]:  # fmt: skip
    """FD of fixed-step probability-flow ODE samplers with the most steps each NFE budget in
    ``budgets`` allows (:func:`steps_for_nfe`)."""
    rows = []
    with torch.no_grad():
        for method in methods:
            for budget in budgets:
                num_steps, nfe = steps_for_nfe(method, budget, sde)
                row = score(sd.sample_ode, model, sde, method=method, num_steps=num_steps)
                if row["nfe"] != nfe:
                    raise RuntimeError(f"{method} with {num_steps} steps made {row['nfe']} NFE, not {nfe}")
                rows.append({"sampler": method, "steps": num_steps, "nfe_budget": budget, **row})
                print(f"  {method} {nfe} NFE: FD {row['fd']:.2f} +- {row['std_error']:.2f}", flush=True)
    return rows


def markdown(results: dict) -> str:
    """The results as markdown tables."""

    def pm(row: dict, key: str, digits: int) -> str:
        return f"{row[key]:.{digits}f} ± {row['std_error']:.{digits}f}"

    lines = ["| model | estimate | test bits/dim | NFE (total, batches of 128) |", "|---|---|---|---|"]
    base = results["gmm_baseline"]
    lines.append(f"| GMM(10, full) | exact density | {pm(base, 'bpd', 3)} | - |")
    for name, model in results["models"].items():
        for estimate, row in model["bpd"].items():
            lines.append(f"| {name} | {estimate} | {pm(row, 'bpd', 3)} | {row['nfe_total']} |")
    lines += ["", "| model | sampler | steps | NFE | FD vs test |", "|---|---|---|---|---|"]
    floor = results["fd_train_images"]
    lines.append(f"| training images | - | - | - | {pm(floor, 'fd', 2)} |")
    for name, model in results["models"].items():
        for row in model["samples"]:
            lines.append(f"| {name} | {row['sampler']} | {row['steps']} | {row['nfe']} | {pm(row, 'fd', 2)} |")
    lines += ["", "| model | steps | step seconds (logged) | wall seconds of this invocation | parameters |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, model in results["models"].items():
        t = model["training"]
        lines.append(f"| {name} | {t['steps']} | {t['logged_train_seconds']:.0f} | {t['train_seconds']:.0f} | "
                     f"{t['parameters']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser)
    parser.add_argument("--models", default="dsm,flow", help=f"comma-separated, of {MODELS}")
    parser.add_argument("--out", default="runs/bench_digits")
    parser.add_argument("--results", default="benchmarks/results/digits.json")
    parser.add_argument("--num-probes", type=int, default=1)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--elbo-steps", type=int, default=1000, help="N of the discrete (DDPM) ELBO")
    parser.add_argument("--elbo-time-samples", type=int, default=16, help="Monte-Carlo times per image in the ELBOs")
    parser.add_argument("--num-samples", type=int, default=512, help="samples per sampler for the FD")
    parser.add_argument("--sample-batch-size", type=int, default=512)
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the FD's standard error")
    parser.add_argument("--discrete-steps", default="10,50,250", help="DDPM/DDIM step counts (DSM model)")
    parser.add_argument("--nfe", default="10,20,50", help="NFE budgets of the ODE samplers (both models)")
    parser.add_argument("--ode-methods", default="heun,dpmpp_2m", help="fixed-step ODE samplers")
    parser.add_argument("--quick", action="store_true", help="evaluate on 32 test images only")
    args = parser.parse_args()
    models = comma_subset(parser, "--models", args.models, MODELS)
    torch.set_num_threads(args.threads)

    train, test = load_digits("train"), load_digits("test")
    if args.quick:
        test = test.subset(slice(0, 32))
    t0 = time.perf_counter()
    baseline = gmm_baseline(train, test)
    print(f"GMM(10, full) baseline: {baseline['bpd']:.4f} +- {baseline['std_error']:.4f} bits/dim "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)  # fmt: skip
    floor_idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: args.num_samples]
    floor = frechet_with_error(train.levels[floor_idx], test.levels, num_bootstrap=args.bootstrap, seed=args.seed)
    score = SampleScorer(test, args)
    budgets = [int(n) for n in args.nfe.split(",")]
    methods = args.ode_methods.split(",")

    results: dict[str, Any] = {"gmm_baseline": baseline, "fd_train_images": floor, "models": {}}
    for name in models:
        torch.manual_seed(args.seed)  # the same initialisation for both models
        net = make_net(args, train.levels[0].numel())
        if name == "dsm":
            sde: sd.LinearSDE = sd.VPSDE()
            model, training = train_model(sd.EpsilonScore(net, sde), sde, train, args, f"{args.out}/dsm")
        else:
            sde = sd.LinearPath()
            model, training = train_model(sd.FlowVelocity(net, sde), sde, train, args, f"{args.out}/flow",
                                          objective="flow_matching")  # fmt: skip
        entry: dict[str, Any] = {"training": training, "bpd": {"ode": ode_bpd(model, sde, test, args)}}
        print(f"[{name}] ODE: {entry['bpd']['ode']['bpd']:.4f} +- {entry['bpd']['ode']['std_error']:.4f}", flush=True)
        samples = []
        if name == "dsm":
            for label, bound in (("ddpm_elbo", "ddpm"), ("continuous_elbo", "elbo")):
                entry["bpd"][label] = elbo_bpd(model, sde, test, args, bound)
                entry["bpd"][f"{label}_dequantized"] = dequantized_elbo_bpd(model, sde, test, args, bound)
                for key in (label, f"{label}_dequantized"):
                    row = entry["bpd"][key]
                    print(f"[{name}] {key}: {row['bpd']:.4f} +- {row['std_error']:.4f}", flush=True)
            samples += discrete_samplers(model, sde, score, [int(k) for k in args.discrete_steps.split(",")])
        entry["samples"] = samples + ode_samplers(model, sde, score, methods, budgets)
        results["models"][name] = entry
    results["protocol"] = ("17 levels, uniform dequantization, y = 2u - 1; ODE: PF-ODE dopri5 likelihood, Hutchinson "
                           "Rademacher; ELBOs: Monte-Carlo over times, standard error over images; FD: digits "
                           "classifier features vs the test set, bootstrap standard error")  # fmt: skip
    results["config"] = {k: v for k, v in vars(args).items()}
    print(json.dumps(results, indent=2))
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(results))


if __name__ == "__main__":
    main()
