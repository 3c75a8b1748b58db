"""The ``scoresde`` command: ``train``, ``sample``, ``likelihood`` and ``demo``.

    scoresde train --config run.toml --steps 5000 --out runs/digits     # TOML and/or flags
    torchrun --standalone --nproc_per_node=2 -m scoresde.cli train ...  # DDP
    scoresde sample --checkpoint runs/digits/checkpoint.pt --sampler pc --num 64
    scoresde likelihood --checkpoint runs/digits/checkpoint.pt --split test
    scoresde demo --out runs/demo                                        # or demo --toy

A mistake in a flag, a config or an output path is reported in one line and exit code 2,
before any work is done; Ctrl-C says where the run stopped (exit code 130).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import scoresde as sd
from scoresde._atomic import atomic_write, atomic_write_text
from scoresde._paths import check_output_file, check_output_folder
from scoresde.checkpoint import load_checkpoint
from scoresde.config import build_model, build_sde, load_config, load_data, load_run
from scoresde.data import ring_mixture, to_levels
from scoresde.metrics import relative_score_error
from scoresde.train import Trainer, TrainResult, distributed_context, init_distributed, resolve_device

# ----------------------------------------------------------------------------- train

_TRAIN_FLAGS: list[tuple[str, str, str, Any, str]] = [
    ("--data", "data", "name", str, "digits (bundled), mnist, fashion_mnist, cifar10 or folder"),
    ("--data-root", "data", "root", str, "folder of an opt-in data set"),
    ("--sde", "sde", "name", str, "vp, subvp or ve"),
    ("--schedule", "sde", "schedule", str, "VP beta schedule: linear or cosine"),
    ("--channels", "model", "channels", int, "U-Net base width"),
    ("--channel-mults", "model", "channel_mults", "ints", "width multiplier per level, e.g. 1,2,2"),
    ("--num-res-blocks", "model", "num_res_blocks", int, "residual blocks per level"),
    ("--attention-levels", "model", "attention_levels", "ints", "levels with self-attention, e.g. 1"),
    ("--dropout", "model", "dropout", float, "dropout rate"),
    ("--steps", "train", "steps", int, "optimisation steps"),
    ("--batch-size", "train", "batch_size", int, "global batch size"),
    ("--lr", "train", "lr", float, "peak learning rate"),
    ("--lr-schedule", "train", "lr_schedule", str, "constant or cosine after warm-up"),
    ("--warmup-steps", "train", "warmup_steps", int, "linear warm-up steps"),
    ("--ema-decay", "train", "ema_decay", float, "EMA decay of the weights"),
    ("--weighting", "train", "weighting", str, "DSM weighting: sigma2, likelihood or none"),
    ("--time-sampling", "train", "time_sampling", str, "uniform, or importance (with likelihood weighting)"),
    ("--seed", "train", "seed", int, "seed of initialisation, batches and noise"),
    ("--eval-every", "train", "eval_every", int, "evaluate every N steps (0: at the end only)"),
    ("--checkpoint-every", "train", "checkpoint_every", int, "checkpoint every N steps"),
    ("--num-eval-images", "train", "num_eval_images", int, "test images for bits/dim at evaluation"),
    ("--num-grid-samples", "train", "num_grid_samples", int, "images in the evaluation sample grid"),
    ("--out", "run", "out", str, "output folder"),
    ("--device", "run", "device", str, "auto, cpu, cuda or cuda:N"),
]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {value}")
    return value


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for flag, section, key, _, _ in _TRAIN_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    if args.download:
        overrides.setdefault("data", {})["download"] = True
    return overrides


def run_training(
    config: dict[str, Any], *, resume: bool | str | Path = False, progress: bool = False
) -> tuple[Trainer, TrainResult]:
    """Train the run described by ``config`` (see :mod:`scoresde.config`) under
    ``config["run"]["out"]``; joins a ``torchrun`` process group if there is one."""
    trainer = build_trainer(config, resume=resume, progress=progress)
    return trainer, trainer.train()


def build_trainer(config: dict[str, Any], *, resume: bool | str | Path = False, progress: bool = False) -> Trainer:
    """The :class:`Trainer` of the run described by ``config``, its data loaded and its model
    built (``resume``: ``True`` or a checkpoint path, see :class:`Trainer`)."""
    device = resolve_device(config["run"]["device"])
    init_distributed(device)
    train_cfg = dict(config["train"])
    torch.manual_seed(train_cfg["seed"])  # the network's initialisation (identical on every rank)
    data, eval_data = load_data(config["data"], "train"), load_data(config["data"], "test")
    sde = build_sde(config["sde"])
    model = build_model(config["model"], data.image_shape, sde)
    return Trainer(model, sde, data, out_dir=config["run"]["out"], device=device, eval_data=eval_data,
                   config=config, progress=progress, resume=resume, **train_cfg)  # fmt: skip


def _train(args: argparse.Namespace) -> None:
    overrides = _flag_overrides(args)
    resume_from = Path(args.resume) if isinstance(args.resume, str) else None
    out = overrides.get("run", {}).get("out") or (resume_from.parent if resume_from else None)
    out = check_output_folder(out or load_config(args.config)["run"]["out"], "--out")
    checkpoint = resume_from or out / "checkpoint.pt"
    if args.resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
        base = load_checkpoint(checkpoint).get("config") or {}  # the run's own config; flags (e.g. --steps) apply
        overrides.setdefault("run", {})["out"] = str(out)
        config = load_config(None, {**base, **{s: {**base.get(s, {}), **v} for s, v in overrides.items()}})
    else:
        if checkpoint.exists():
            raise ValueError(f"{out} already holds a run ({checkpoint}): pass --resume, or choose another --out")
        config = load_config(args.config, overrides)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    trainer = build_trainer(config, resume=checkpoint if args.resume else False, progress=progress)
    try:
        result = trainer.train()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_where_training_stopped(trainer, out)) from None
    if distributed_context()[0] == 0:
        last = result.evaluations[-1] if result.evaluations else {}
        bpd = f", test bits/dim {last['bpd']:.3f} ± {last['bpd_std_error']:.3f}" if "bpd" in last else ""
        loss = f"{sum(result.losses[-50:]) / len(result.losses[-50:]):.4f}" if result.losses else "n/a"
        print(f"trained to step {result.step} in {result.seconds:.0f} s, loss {loss}{bpd}; "
              f"checkpoint {result.checkpoint}, log {trainer.metrics_path}")  # fmt: skip


def _where_training_stopped(trainer: Trainer, out: Path) -> str:
    done = f"stopped after step {trainer.step} of {trainer.steps}"
    if trainer.checkpoint_step is None:
        return f"{done}, before the run's first checkpoint: the same command starts it afresh"
    return (f"{done}; the last checkpoint, {trainer.checkpoint_path}, is of step {trainer.checkpoint_step}: "
            f"continue with `scoresde train --out {out} --resume`")  # fmt: skip


# ----------------------------------------------------------------------------- sample

_DEFAULT_STEPS = {"pc": 500, "sde": 1000}
"""Steps of each sampler when none are given (the ODE sampler is adaptive then)."""
_DEFAULT_METHODS = {"ode": "dopri5", "sde": "euler_maruyama"}


def draw_samples(
    model: torch.nn.Module, sde: sd.LinearSDE, shape: tuple[int, ...], *, sampler: str, num_steps: int | None,
    method: str | None, snr: float, corrector: str, rtol: float, generator: torch.Generator, device: torch.device,
) -> sd.SampleResult:  # fmt: skip
    """One call to ``sample_pc`` / ``sample_ode`` / ``sample_sde`` with the command's defaults:
    PC = reverse diffusion + Langevin, 500 steps; ODE = dopri5 (``rtol = atol``); both end at
    t = 1e-3 with a denoising step (Song et al.); SDE = Euler–Maruyama, 1000 steps."""
    if sampler not in ("pc", "ode", "sde"):
        raise ValueError(f"sampler must be pc, ode or sde, got {sampler!r}")
    num_steps = _DEFAULT_STEPS.get(sampler) if num_steps is None else num_steps
    method = method or _DEFAULT_METHODS.get(sampler)
    common = {"generator": generator, "device": device}
    with torch.no_grad():
        if sampler == "pc":
            return sd.sample_pc(model, sde, shape, num_steps=num_steps, snr=snr, t_end=1e-3,
                                corrector=None if corrector == "none" else corrector, **common)  # fmt: skip
        if sampler == "ode":
            tolerances = {} if num_steps is not None else {"rtol": rtol, "atol": rtol}
            return sd.sample_ode(model, sde, shape, method=method, num_steps=num_steps, t_end=1e-3, denoise=True,
                                 **tolerances, **common)  # fmt: skip
        return sd.sample_sde(model, sde, shape, method=method, num_steps=num_steps, **common)


def _sample_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of a ``sample`` command that change its result, defaults filled in (those a
    sampler ignores left out)."""
    sampler, steps = args.sampler, _DEFAULT_STEPS.get(args.sampler) if args.steps is None else args.steps
    settings: dict[str, Any] = {"sampler": sampler}
    if sampler == "pc":
        settings.update(corrector=args.corrector, **({"snr": args.snr} if args.corrector != "none" else {}))
    else:
        settings["method"] = args.method or _DEFAULT_METHODS[sampler]
    settings.update({"steps": steps} if steps is not None else {"rtol": args.rtol})
    return {**settings, "num": args.num, "seed": args.seed, "ema": not args.no_ema}


def _sample_stem(settings: dict[str, Any], step: int) -> str:
    """The file name (without suffix) of samples drawn with ``settings`` from a checkpoint of
    training step ``step``, e.g. ``pc-langevin-snr0.16-500steps-n64-seed0-ckpt2000``."""
    parts = [settings["sampler"], settings.get("corrector") or settings["method"]]
    if "snr" in settings:
        parts.append(f"snr{settings['snr']:g}")
    parts.append(f"{settings['steps']}steps" if "steps" in settings else f"rtol{settings['rtol']:g}")
    parts += [f"n{settings['num']}", f"seed{settings['seed']}", f"ckpt{step}"]
    return "-".join(parts) + ("" if settings["ema"] else "-raw")


def _sample(args: argparse.Namespace) -> None:
    out = check_output_folder(args.out or Path(args.checkpoint).parent / "samples", "--out")
    device = resolve_device(args.device)
    model, sde, _, step = load_run(args.checkpoint, device, ema=not args.no_ema)
    state = load_checkpoint(args.checkpoint)
    num_levels, shape = state["num_levels"], (args.num, *state["event_shape"])
    settings = _sample_settings(args)
    stem = out / _sample_stem(settings, step)
    for path in _sample_paths(stem):
        check_output_file(path, "--out")
    gen = torch.Generator(device).manual_seed(args.seed)
    result = draw_samples(
        model, sde, shape, sampler=args.sampler, num_steps=args.steps, method=args.method, snr=args.snr,
        corrector=args.corrector, rtol=args.rtol, generator=gen, device=device,
    )  # fmt: skip
    levels = to_levels(result.x, num_levels)
    png, tensors = _save_samples(levels, num_levels, stem)
    record = {"x": result.x.cpu(), "levels": levels.cpu(), "nfe": result.nfe, "step": step, **settings}
    atomic_write(tensors, lambda f: torch.save(record, f))
    print(f"{args.num} samples ({args.sampler}, NFE {result.nfe}) from step {step}: {png}, {tensors}")


def _sample_paths(stem: Path) -> tuple[Path, Path]:
    """``stem.png`` and ``stem.pt`` (a suffix appended: the stem may hold dots, as in snr0.16)."""
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pt")


def _save_samples(levels: torch.Tensor, num_levels: int, stem: Path) -> tuple[Path, Path]:
    """The PNG grid of ``levels`` at ``stem.png``; returns it and the ``stem.pt`` path for the tensors."""
    from scoresde.plot import save_image_grid

    png, tensors = _sample_paths(stem)
    return save_image_grid(levels, png, num_levels=num_levels, scale=4), tensors


# ----------------------------------------------------------------------------- likelihood


def _likelihood(args: argparse.Namespace) -> None:
    json_path = check_output_file(args.json, "--json") if args.json else None
    device = resolve_device(args.device)
    model, sde, config, step = load_run(args.checkpoint, device, ema=not args.no_ema)
    data = load_data(config["data"], args.split)
    if args.num_images is not None:
        data = data.subset(slice(0, args.num_images))
    start = time.perf_counter()
    result = sd.evaluate_bpd(
        model, sde, data.levels.to(device), num_bins=data.num_levels, transform=data.transform,
        batch_size=args.batch_size, divergence=args.estimator, num_probes=args.num_probes, rtol=args.rtol,
        atol=args.rtol, generator=torch.Generator(device).manual_seed(args.seed),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(
        f"{args.split} bits/dim: {result.mean:.4f} ± {result.std_error:.4f} (standard error; "
        f"{result.num_samples} images, {args.estimator} divergence, NFE {result.nfe}, {seconds:.0f} s; "
        f"checkpoint step {step})"
    )
    if json_path is not None:
        record = {
            "split": args.split, "bpd": result.mean, "std_error": result.std_error, "images": result.num_samples,
            "nfe": result.nfe, "estimator": args.estimator, "rtol": args.rtol, "step": step, "seconds": seconds,
        }  # fmt: skip
        atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> None:
    """Train a small U-Net on the bundled digits under the VP SDE, sample with PC and the ODE,
    evaluate test bits/dim, write ``report.md``."""
    if args.toy:
        return _toy_demo(args)
    out = check_output_folder(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    config = load_config(None, {
        "model": {"channels": args.channels, "channel_mults": [1, 2], "num_res_blocks": 1, "dropout": 0.0},
        "train": {"steps": args.steps, "batch_size": 128, "lr": 2e-3, "warmup_steps": min(100, args.steps // 5),
                  "lr_schedule": "cosine", "ema_decay": 0.995, "seed": args.seed, "checkpoint_every": 0,
                  "num_eval_images": 0, "num_grid_samples": 0, "log_every": 10},
        "run": {"out": str(out / "run"), "device": args.device},
    })  # fmt: skip
    if (out / "run" / "checkpoint.pt").exists():
        (out / "run" / "checkpoint.pt").unlink()  # the demo always starts afresh
    trainer, result = run_training(config, progress=args.progress)
    train_seconds = time.perf_counter() - start
    model, sde, test = trainer.ema.module, trainer.sde, load_data(config["data"], "test")
    gen_kw = {"device": trainer.device, "rtol": 1e-3, "snr": 0.16, "corrector": "langevin", "method": None}

    samples = {}
    for sampler, steps in (("pc", args.pc_steps), ("ode", None)):
        t0 = time.perf_counter()
        gen = torch.Generator(trainer.device).manual_seed(args.seed)
        shape = (64, *test.image_shape)
        res = draw_samples(model, sde, shape, sampler=sampler, num_steps=steps, generator=gen, **gen_kw)
        levels = to_levels(res.x, test.num_levels)
        png, tensors = _save_samples(levels, test.num_levels, out / f"samples_{sampler}")
        record = {"x": res.x.cpu(), "levels": levels.cpu(), "nfe": res.nfe}
        atomic_write(tensors, lambda f, record=record: torch.save(record, f))
        fd = sd.digits_frechet_distance(levels.cpu(), test.levels).item()
        samples[sampler] = (png.name, res.nfe, time.perf_counter() - t0, steps, fd)
    _save_samples(test.levels[:64], test.num_levels, out / "data")
    fd_floor = sd.digits_frechet_distance(load_data(config["data"], "train").levels[:64], test.levels).item()

    t0 = time.perf_counter()
    bpd = sd.evaluate_bpd(
        model, sde, test.levels[: args.eval_images].to(trainer.device), num_bins=test.num_levels,
        transform=test.transform, divergence="hutchinson", rtol=1e-4, atol=1e-4,
        generator=torch.Generator(trainer.device).manual_seed(args.seed),
    )  # fmt: skip
    bpd_seconds = time.perf_counter() - t0
    _plot_losses(result.losses, out / "loss.png")
    _write_demo_report(
        out, config, result, train_seconds, samples, fd_floor, bpd, bpd_seconds, time.perf_counter() - start
    )
    print(f"wrote {out / 'report.md'}: test bits/dim {bpd.mean:.3f} ± {bpd.std_error:.3f} "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip


def _plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scoresde.plot import save_figure

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("DSM loss (σ² weighting)")
    ax.set_yscale("log")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def _write_demo_report(
    out: Path, config: dict[str, Any], result: TrainResult, train_seconds: float,
    samples: dict[str, tuple[str, int, float, int | None, float]], fd_floor: float, bpd: sd.BpdEvaluation,
    bpd_seconds: float, total: float,
) -> None:  # fmt: skip
    tail = result.losses[-50:]
    m, t = config["model"], config["train"]
    pc, ode = samples["pc"], samples["ode"]
    atomic_write_text(
        out / "report.md",
        "# scoresde demo: digits\n\n"
        f"A DDPM++-style U-Net (channels {m['channels']}, multipliers {m['channel_mults']}, "
        f"{m['num_res_blocks']} residual block per level, attention at levels {m['attention_levels']}) in the "
        f"epsilon parameterisation, trained with denoising score matching under the VP SDE "
        f"(beta 0.1 -> 20) on the 1500 training images of sklearn's 8x8 digits (17 grey levels, uniformly "
        f"dequantized, mapped to [-1, 1]) for {result.step} steps of batch {t['batch_size']} "
        f"(AdamW, lr {t['lr']}, cosine, EMA {t['ema_decay']}): {train_seconds:.0f} s, final loss "
        f"{sum(tail) / len(tail):.4f}.\n\n"
        "| | |\n|---|---|\n"
        f"| test bits/dim ({bpd.num_samples} test images) | **{bpd.mean:.3f} ± {bpd.std_error:.3f}** |\n"
        f"| bits/dim evaluation | PF-ODE dopri5, rtol = atol = 1e-4, Hutchinson (Rademacher), NFE {bpd.nfe}, "
        f"{bpd_seconds:.0f} s |\n"
        f"| PC sampler (reverse diffusion + Langevin, snr 0.16, {pc[3]} steps) | NFE {pc[1]}, {pc[2]:.0f} s, "
        f"digits FD {pc[4]:.0f} |\n"
        f"| ODE sampler (dopri5, rtol = atol = 1e-3, to t = 1e-3 + denoising) | NFE {ode[1]}, {ode[2]:.0f} s, "
        f"digits FD {ode[4]:.0f} |\n"
        f"| total demo time | {total:.0f} s |\n\n"
        "Digits FD: the Fréchet distance between the 64 samples and the test images in the features of the "
        f"bundled digits classifier (`sd.digits_frechet_distance`); 64 training images score {fd_floor:.0f}, "
        "the floor at this sample size.\n\n"
        "For scale: a 10-component full-covariance Gaussian mixture scores about 2.64 bits/dim under the same "
        "protocol (`benchmarks/digits.py`); a longer run of `scoresde train` gets further.\n\n"
        "| test data | PC samples | ODE samples |\n|---|---|---|\n"
        f"| ![data](data.png) | ![pc]({samples['pc'][0]}) | ![ode]({samples['ode'][0]}) |\n\n"
        "![training loss](loss.png)\n"
    )


def _toy_demo(args: argparse.Namespace) -> None:
    """Train an MLP score model on a 2-D mixture, compare its score field with the exact one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scoresde.plot import plot_score_field, save_figure

    out = check_output_folder(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    steps = 3000 if args.steps is None else args.steps
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    sde = sd.VPSDE()
    gmm = ring_mixture()
    exact = gmm.score_fn(sde)
    model = sd.EpsilonScore(sd.nn.MLP(dim=2, hidden=128, depth=3), sde)
    result = sd.fit(
        model, sde, lambda n, g: gmm.sample(n, generator=g), steps=steps, batch_size=512,
        generator=gen, progress=args.progress,
    )  # fmt: skip

    times = (0.01, 0.1, 0.5)
    errors = {}
    for t in times:
        x = gmm.marginal(sde, t).sample(4096, generator=gen)
        errors[t] = relative_score_error(model, exact, x, torch.full((len(x),), t)).item()

    fig, axes = plt.subplots(2, len(times), figsize=(4 * len(times), 8))
    for col, t in enumerate(times):
        plot_score_field(axes[0, col], exact, t, title=f"exact score, t = {t}", color="tab:blue")
        with torch.no_grad():
            plot_score_field(
                axes[1, col], lambda x, tt: model(x.float(), tt.float()), t,
                title=f"learned score, t = {t}", color="tab:red",
            )  # fmt: skip
    fig.tight_layout()
    save_figure(fig, out / "score_field.png", dpi=80)

    rows = "\n".join(f"| {t} | {e:.4f} |" for t, e in errors.items())
    atomic_write_text(
        out / "report.md",
        "# scoresde demo\n\n"
        f"MLP score model (epsilon parameterisation) trained for {steps} steps on an 8-mode ring "
        f"mixture under {sde!r}; final loss {sum(result.losses[-100:]) / len(result.losses[-100:]):.4f}.\n\n"
        "Relative squared L2 error of the learned score against the exact mixture score on p_t samples:\n\n"
        f"| t | E‖s - s*‖² / E‖s*‖² |\n|---|---|\n{rows}\n\n![score field](score_field.png)\n"
    )
    print(f"wrote {out / 'report.md'} and {out / 'score_field.png'}")
    for t, e in errors.items():
        print(f"t={t}: relative score error {e:.4f}")


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scoresde", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a U-Net score model on images")
    train.add_argument("--config", help="TOML file with [data], [sde], [model], [train], [run] tables")
    for flag, _, _, kind, text in _TRAIN_FLAGS:
        train.add_argument(flag, type=_ints if kind == "ints" else kind, default=None, help=text)
    train.add_argument("--download", action="store_true", help="fetch an opt-in data set (needs torchvision)")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                       help="continue the run in --out from its checkpoint.pt, or from CHECKPOINT (e.g. "
                            "checkpoint-previous.pt after a divergence; --out defaults to its folder)")  # fmt: skip
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="tqdm progress bar")
    train.set_defaults(func=_train, on_interrupt="stopped before training began; nothing was written")

    def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by `scoresde train`")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
        p.add_argument("--rtol", type=float, default=1e-5, help="adaptive ODE tolerance (rtol = atol)")

    sample = sub.add_parser("sample", help="draw samples from a checkpoint: PNG grid and .pt tensor")
    add_checkpoint_args(sample)
    sample.add_argument("--sampler", choices=("pc", "ode", "sde"), default="ode")
    sample.add_argument(
        "--method", help="ODE method (dopri5, heun, dpmpp_2m, ...) or SDE method (euler_maruyama, srk, ...)"
    )
    sample.add_argument("--steps", type=_positive_int, help="steps (default PC 500, SDE 1000; adaptive ODE: none)")
    sample.add_argument("--snr", type=float, default=0.16, help="Langevin corrector signal-to-noise ratio")
    sample.add_argument("--corrector", default="langevin", help="langevin, annealed_langevin or none")
    sample.add_argument("--num", type=_positive_int, default=64, help="number of samples")
    sample.add_argument("--out", help="output folder (default: samples/ beside the checkpoint); the files are "
                                      "named after every setting that changes them, e.g. "
                                      "pc-langevin-snr0.16-500steps-n64-seed0-ckpt2000.png and .pt, so runs "
                                      "with other settings never overwrite each other (the same command "
                                      "rewrites the same files)")  # fmt: skip
    sample.set_defaults(func=_sample, on_interrupt="no samples were written")

    likelihood = sub.add_parser("likelihood", help="bits/dim of a data split under a checkpoint")
    add_checkpoint_args(likelihood)
    likelihood.add_argument("--split", choices=("train", "test"), default="test")
    likelihood.add_argument("--estimator", choices=("hutchinson", "exact", "auto"), default="hutchinson",
                            help="divergence: Hutchinson (Rademacher probes) or exact")  # fmt: skip
    likelihood.add_argument("--num-probes", type=_positive_int, default=1)
    likelihood.add_argument("--num-images", type=_positive_int, help="the first N images of the split (default all)")
    likelihood.add_argument("--batch-size", type=_positive_int, default=128)
    likelihood.add_argument("--json", help="also write the result to this JSON file")
    likelihood.set_defaults(func=_likelihood, on_interrupt="nothing was written")

    demo = sub.add_parser("demo", help="train on the bundled digits, sample, evaluate, write a report")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default 500; --toy 3000)")
    demo.add_argument("--channels", type=_positive_int, default=32, help="U-Net base width")
    demo.add_argument("--pc-steps", type=_positive_int, default=100, help="PC sampler steps")
    demo.add_argument("--eval-images", type=_positive_int, default=100, help="test images for bits/dim")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--toy", action="store_true", help="the 2-D score-field demo instead (MLP on a ring mixture)")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    demo.set_defaults(func=_demo, on_interrupt="the demo starts afresh when run again")

    # listed for --help; main() hands its arguments to scoresde.bench (its own parser)
    sub.add_parser("bench", add_help=False, help="solver, likelihood and overhead benchmarks (scoresde bench --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from scoresde.bench.main import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and not args.toy and args.steps is None:
        args.steps = 500
    try:
        args.func(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as err:
        print(f"scoresde {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # the train command names its last checkpoint; the others wrote nothing
        print(f"scoresde {args.command}: interrupted; {str(err) or args.on_interrupt}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
