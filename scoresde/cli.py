"""The ``scoresde`` command: ``train``, ``sample``, ``likelihood``, ``demo`` and ``bench``. This
module parses and dispatches; the work is the library's (the demos are scoresde.demo, the
benchmark harness scoresde.bench, which takes its own flags).

    scoresde train --config run.toml --steps 5000 --out runs/digits     # TOML and/or flags
    torchrun --standalone --nproc_per_node=2 -m scoresde.cli train ...  # DDP
    scoresde sample --checkpoint runs/digits/checkpoint.pt --sampler pc --num 64
    scoresde likelihood --checkpoint runs/digits/checkpoint.pt --split test
    scoresde train-classifier --checkpoint runs/digits/checkpoint.pt --out runs/digits/classifier.pt
    scoresde demo --out runs/demo                                        # or demo --toy
    scoresde bench --only sampling                                       # the benchmark harness

A mistake in a flag, a config or an output path is reported in one line and exit code 2,
before any work is done; Ctrl-C says where the run stopped (exit code 130).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import torch

import scoresde as sd
from scoresde._atomic import atomic_write, atomic_write_text
from scoresde._paths import check_output_file, check_output_folder
from scoresde.checkpoint import load_checkpoint
from scoresde.classifiers import guided_run_model, train_run_classifier
from scoresde.config import DEFAULT_CONFIG, Run, build_trainer, load_config, load_data, load_run
from scoresde.data import to_levels
from scoresde.ddpm import DISCRETE_SAMPLERS, sample_discrete
from scoresde.demo import digits_demo, toy_demo
from scoresde.distributed import distributed_context, init_distributed, resolve_device, sample_in_shards
from scoresde.elbo import ELBO_BOUNDS, evaluate_elbo
from scoresde.guidance import INPAINT_SAMPLERS, MASK_REGIONS, image_mask, inpaint
from scoresde.solvers import METHODS
from scoresde.train import TrainConfig, Trainer

# ----------------------------------------------------------------------------- train

_RUN_FLAGS: list[tuple[str, str, str, Any, str]] = [
    ("--data", "data", "name", str, "digits (bundled), mnist, fashion_mnist, cifar10 or folder"),
    ("--data-root", "data", "root", str, "folder of an opt-in data set"),
    ("--sde", "sde", "name", str, "vp, subvp, ve, or a flow path: linear_path (rectified flow), cosine_path"),
    ("--schedule", "sde", "schedule", str, "VP / sub-VP beta schedule: linear or cosine"),
    ("--channels", "model", "channels", int, "U-Net base width"),
    ("--channel-mults", "model", "channel_mults", "ints", "width multiplier per level, e.g. 1,2,2"),
    ("--num-res-blocks", "model", "num_res_blocks", int, "residual blocks per level"),
    ("--attention-levels", "model", "attention_levels", "ints", "levels with self-attention, e.g. 1"),
    ("--dropout", "model", "dropout", float, "dropout rate"),
    ("--out", "run", "out", str, "output folder"),
    ("--device", "run", "device", str, "auto, cpu, cuda or cuda:N"),
]
"""The flags of the config sections other than ``train``: (flag, section, key, type, help)."""

_TRAIN_FLAGS = [
    (f"--{f.name.replace('_', '-')}", "train", f.name, type(f.default), f.metadata["help"]) for f in fields(TrainConfig)
]
"""One flag per :class:`~scoresde.train.TrainConfig` field (``--batch-size`` sets ``batch_size``)."""

_CONFIG_FLAGS = [*_RUN_FLAGS[:-2], *_TRAIN_FLAGS, *_RUN_FLAGS[-2:]]
"""Every flag that sets a config key, in the order ``train --help`` lists them."""


def _with_default(text: str, default: Any) -> str:
    if default == "":
        return text
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    return f"{text} (default {shown})"


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
    for flag, section, key, _, _ in _CONFIG_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    if args.download:
        overrides.setdefault("data", {})["download"] = True
    if args.conditional:
        overrides.setdefault("model", {})["conditional"] = True
    return overrides


def _train(args: argparse.Namespace) -> None:
    overrides = _flag_overrides(args)
    resume_from = Path(args.resume) if isinstance(args.resume, str) else None
    out = overrides.get("run", {}).get("out") or (resume_from.parent if resume_from else None)
    out = check_output_folder(out or load_config(args.config)["run"]["out"], "--out")
    checkpoint = resume_from or out / "checkpoint.pt"
    state = None
    if args.resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
        state = load_checkpoint(checkpoint)  # read once: the trainer resumes from this content
        base = state.get("config") or {}  # the run's own config; flags (e.g. --steps) apply
        overrides.setdefault("run", {})["out"] = str(out)
        config = load_config(None, {**base, **{s: {**base.get(s, {}), **v} for s, v in overrides.items()}})
    else:
        if checkpoint.exists():
            raise ValueError(f"{out} already holds a run ({checkpoint}): pass --resume, or choose another --out")
        config = load_config(args.config, overrides)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    trainer = build_trainer(config, resume=checkpoint if args.resume else False, resume_state=state,
                            progress=progress)  # fmt: skip
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
    done = f"stopped after step {trainer.step} of {trainer.settings.steps}"
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
    method: str | None, snr: float, corrector: str, rtol: float, seed: int, sample_indices: torch.Tensor | None,
    device: torch.device, eta: float = 0.0,
) -> sd.SampleResult:  # fmt: skip
    """One call to ``sample_pc`` / ``sample_ode`` / ``sample_sde`` with the command's defaults:
    PC = reverse diffusion + Langevin, 500 steps; ODE = dopri5 (``rtol = atol``); both end at
    t = 1e-3 with a denoising step (Song et al.); SDE = Euler–Maruyama, 1000 steps. Noise from
    per-sample seeds (``seed``, ``sample_indices``), except torchsde's methods (a seed per batch). ``ddpm``,
    ``ddim`` (with ``eta``) and ``ncsn``: :func:`scoresde.ddpm.sample_discrete`, per-sample seeds too."""
    common: dict[str, Any] = {"seed": seed, "sample_indices": sample_indices, "device": device}
    if sampler in DISCRETE_SAMPLERS:
        with torch.no_grad():
            return sample_discrete(model, sde, shape, sampler=sampler, num_steps=num_steps, eta=eta, **common)
    if sampler not in ("pc", "ode", "sde"):
        raise ValueError(f"sampler must be pc, ode, sde, ddpm, ddim or ncsn, got {sampler!r}")
    num_steps = _DEFAULT_STEPS.get(sampler) if num_steps is None else num_steps
    method = method or _DEFAULT_METHODS.get(sampler)
    if sampler == "sde" and METHODS.get(method or "") is not None and METHODS[method].runner == "torchsde":
        # torchsde's Brownian motion is one per batch: a seed per batch (by its first index) instead
        first = 0 if sample_indices is None else int(sample_indices[0])
        common = {"generator": torch.Generator(device).manual_seed(seed * 1_000_003 + first), "device": device}
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
    elif sampler in DISCRETE_SAMPLERS:
        settings["method"] = f"eta{args.eta:g}" if sampler == "ddim" else sampler
        steps = steps or {"ddpm": 1000, "ddim": 50, "ncsn": 10}[sampler]
    else:
        settings["method"] = args.method or _DEFAULT_METHODS[sampler]
    settings.update({"steps": steps} if steps is not None else {"rtol": args.rtol})
    if args.label is not None:
        settings.update(label=args.label, guidance=1.0 if args.guidance is None else args.guidance)
        if args.classifier:
            settings["classifier"] = Path(args.classifier).stem
    if args.inpaint:
        settings["inpaint"] = args.inpaint
    return {**settings, "num": args.num, "seed": args.seed, "ema": not args.no_ema}


def _sample_stem(settings: dict[str, Any], step: int) -> str:
    """The file name (without suffix) of samples drawn with ``settings`` from a checkpoint of
    training step ``step``, e.g. ``pc-langevin-snr0.16-500steps-n64-seed0-ckpt2000``."""
    parts = [settings["sampler"], settings.get("corrector") or settings["method"]]
    if "snr" in settings:
        parts.append(f"snr{settings['snr']:g}")
    parts.append(f"{settings['steps']}steps" if "steps" in settings else f"rtol{settings['rtol']:g}")
    if "label" in settings:
        parts.append(f"class{settings['label']}-s{settings['guidance']:g}")
        if "classifier" in settings:
            parts.append(f"clf_{settings['classifier']}")
    if "inpaint" in settings:
        parts.append(f"inpaint{settings['inpaint']}")
    parts += [f"n{settings['num']}", f"seed{settings['seed']}", f"ckpt{step}"]
    return "-".join(parts) + ("" if settings["ema"] else "-raw")


def _sample(args: argparse.Namespace) -> None:
    out = check_output_folder(args.out or Path(args.checkpoint).parent / "samples", "--out")
    device = resolve_device(args.device)
    init_distributed(device)  # under torchrun: batches dealt to the ranks, rank 0 writes
    run = load_run(args.checkpoint, device, ema=not args.no_ema)
    settings = _sample_settings(args)
    stem = out / _sample_stem(settings, run.step)
    for path in _sample_paths(stem):
        check_output_file(path, "--out")

    model = _guided_model(run, args, device)
    draw = _inpainter(model, run, args, device) if args.inpaint else partial(_draw, model, run, args, device)
    x, nfe = sample_in_shards(draw, args.num, args.batch_size)
    if distributed_context()[0] != 0:
        return
    levels = to_levels(x, run.num_levels)
    png, tensors = _save_samples(levels, run.num_levels, stem)
    record = {"x": x, "levels": levels.cpu(), "nfe": nfe, "step": run.step, **settings}
    atomic_write(tensors, lambda f: torch.save(record, f))
    print(f"{args.num} samples ({args.sampler}, NFE {nfe}) from step {run.step}: {png}, {tensors}")


def _draw(model: torch.nn.Module, run: Run, args: argparse.Namespace, device: torch.device,
          indices: torch.Tensor) -> sd.SampleResult:  # fmt: skip
    return draw_samples(
        model, run.sde, (len(indices), *run.event_shape), sampler=args.sampler, num_steps=args.steps,
        method=args.method, snr=args.snr, corrector=args.corrector, rtol=args.rtol, seed=args.seed,
        sample_indices=indices, device=device, eta=args.eta,
    )  # fmt: skip


def _guided_model(run: Run, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The run's model, or for ``--class`` its guided score (``--guidance``; classifier guidance with
    ``--classifier``, else classifier-free: :func:`scoresde.classifiers.guided_run_model`)."""
    if args.label is None:
        if args.guidance is not None or args.classifier is not None:
            flag = f"--guidance {args.guidance:g}" if args.guidance is not None else f"--classifier {args.classifier}"
            raise ValueError(f"{flag} needs --class K (the class to guide towards)")
        return run.model
    scale = 1.0 if args.guidance is None else args.guidance
    return guided_run_model(run, args.label, scale, args.classifier, device)


def _inpainter(model: torch.nn.Module, run: Run, args: argparse.Namespace,
               device: torch.device) -> Callable[[torch.Tensor], sd.SampleResult]:  # fmt: skip
    """``indices -> result``: the ``--inpaint`` half of test image ``i`` (cycling) filled in, per-sample seeds."""
    if args.sampler not in INPAINT_SAMPLERS:
        raise ValueError(f"--inpaint runs with --sampler pc or ode, got {args.sampler!r}")
    mask = image_mask(run.event_shape, args.inpaint)
    test = load_data(run.config["data"], "test")
    steps = args.steps or (_DEFAULT_STEPS["pc"] if args.sampler == "pc" else 100)
    corrector = None if args.corrector == "none" else args.corrector
    extra = {"snr": args.snr, "corrector": corrector} if args.sampler == "pc" else {"ode_method": args.method or "heun"}

    def draw(indices: torch.Tensor) -> sd.SampleResult:
        observed = test.to_model(test.levels[indices % len(test)].to(device), dequantize=False)
        with torch.no_grad():
            return inpaint(model, run.sde, mask.to(device), observed, sampler=args.sampler, num_steps=steps,
                           t_end=1e-3, seed=args.seed, sample_indices=indices, **extra)  # fmt: skip

    return draw


def _sample_paths(stem: Path) -> tuple[Path, Path]:
    """``stem.png`` and ``stem.pt`` (a suffix appended: the stem may hold dots, as in snr0.16)."""
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pt")


def _save_samples(levels: torch.Tensor, num_levels: int, stem: Path) -> tuple[Path, Path]:
    """The PNG grid of ``levels`` at ``stem.png``; returns it and the ``stem.pt`` path for the tensors."""
    from scoresde.plot import save_image_grid

    png, tensors = _sample_paths(stem)
    return save_image_grid(levels, png, num_levels=num_levels, scale=4), tensors


def _train_classifier(args: argparse.Namespace) -> None:
    out = check_output_file(args.out or Path(args.checkpoint).parent / "classifier.pt", "--out")
    result = train_run_classifier(args.checkpoint, out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  hidden=args.hidden, depth=args.depth, seed=args.seed,
                                  device=resolve_device(args.device), progress=args.progress)  # fmt: skip
    loss = sum(result.losses[-50:]) / len(result.losses[-50:])
    print(f"noisy classifier of {result.num_classes} classes trained for {args.steps} steps, loss {loss:.4f}; "
          f"{result.path} (use: scoresde sample --checkpoint {args.checkpoint} --class K --guidance S "
          f"--classifier {result.path})")  # fmt: skip


# ----------------------------------------------------------------------------- likelihood


def _likelihood(args: argparse.Namespace) -> None:
    json_path = check_output_file(args.json, "--json") if args.json else None
    device = resolve_device(args.device)
    init_distributed(device)  # under torchrun: batches dealt to the ranks, rank 0 reports
    run = load_run(args.checkpoint, device, ema=not args.no_ema)
    data = load_data(run.config["data"], args.split)
    if args.num_images is not None:
        data = data.subset(slice(0, args.num_images))
    start = time.perf_counter()
    if args.bound != "ode":
        result = evaluate_elbo(
            run.model, run.sde, data.levels.to(device), num_bins=data.num_levels, transform=data.transform,
            bound=args.bound, num_steps=args.steps, num_time_samples=args.num_time_samples,
            batch_size=args.batch_size, generator=torch.Generator(device).manual_seed(args.seed),
        )  # fmt: skip
        _report_bpd(args, run, result, time.perf_counter() - start, json_path, f"{args.bound} bound")
        return
    result = sd.evaluate_bpd(
        run.model, run.sde, data.levels.to(device), num_bins=data.num_levels, transform=data.transform,
        batch_size=args.batch_size, divergence=args.divergence, num_probes=args.num_probes, rtol=args.rtol,
        atol=args.rtol, seed=args.seed, out_dir=args.resume_dir, progress=args.progress,
    )  # fmt: skip
    _report_bpd(args, run, result, time.perf_counter() - start, json_path, f"{args.divergence} divergence")


def _report_bpd(args: argparse.Namespace, run: Any, result: Any, seconds: float, json_path: Path | None,
                how: str) -> None:  # fmt: skip
    """Print a bits/dim evaluation (rank 0) and write its JSON record if asked."""
    if distributed_context()[0] != 0:
        return
    print(
        f"{args.split} bits/dim: {result.mean:.4f} ± {result.std_error:.4f} (standard error; "
        f"{result.num_samples} images, {how}, NFE {result.nfe}, {seconds:.0f} s; checkpoint step {run.step})"
    )
    if json_path is not None:
        record = {
            "split": args.split, "bpd": result.mean, "std_error": result.std_error, "images": result.num_samples,
            "nfe": result.nfe, "bound": args.bound, "divergence": args.divergence, "rtol": args.rtol,
            "step": run.step, "seconds": seconds,
        }  # fmt: skip
        atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------- demo and bench


def _demo(args: argparse.Namespace) -> None:
    out = check_output_folder(args.out, "--out")
    steps = {} if args.steps is None else {"steps": args.steps}  # each demo has its own default
    if args.toy:
        toy_demo(out, seed=args.seed, progress=args.progress, **steps)
    else:
        digits_demo(out, channels=args.channels, pc_steps=args.pc_steps, eval_images=args.eval_images,
                    device=args.device, seed=args.seed, progress=args.progress, **steps)  # fmt: skip


def _bench(args: argparse.Namespace) -> int:
    from scoresde.bench import main as bench_main  # the harness and its optional peers: imported on use

    return bench_main(args.passed_on)


class _Renamed(argparse.Action):
    """An old spelling of a flag: sets the new one's value and says so on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        print(f"{parser.prog}: note: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scoresde", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a U-Net score model on images")
    train.add_argument("--config", help="TOML file with [data], [sde], [model], [train], [run] tables")
    for flag, section, key, kind, text in _CONFIG_FLAGS:
        train.add_argument(flag, type=_ints if kind == "ints" else kind, default=None,
                           help=_with_default(text, DEFAULT_CONFIG[section][key]))  # fmt: skip
    train.add_argument("--download", action="store_true", help="fetch an opt-in data set (needs torchvision)")
    train.add_argument("--conditional", action="store_true",
                       help="a class-conditional model on the data's labels, trained with label dropout to a null "
                            "label (--label-dropout) for classifier-free guidance")  # fmt: skip
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
    sample.add_argument("--sampler", choices=("pc", "ode", "sde", *DISCRETE_SAMPLERS), default="ode",
                        help="pc, ode, sde, or discrete time: ddpm (--steps N chain steps, default 1000), ddim "
                             "(--steps of a 1000-step chain, default 50; --eta), ncsn (annealed Langevin on "
                             "--steps noise levels, default 10)")  # fmt: skip
    sample.add_argument("--eta", type=float, default=0.0, help="DDIM's eta >= 0 (0: deterministic, 1: DDPM-like)")
    sample.add_argument(
        "--method", help="ODE method (dopri5, heun, dpmpp_2m, ...) or SDE method (euler_maruyama, srk, ...)"
    )
    sample.add_argument("--steps", type=_positive_int, help="steps (default PC 500, SDE 1000; adaptive ODE: none)")
    sample.add_argument("--snr", type=float, default=0.16, help="Langevin corrector signal-to-noise ratio")
    sample.add_argument("--corrector", default="langevin", help="langevin, annealed_langevin or none")
    sample.add_argument("--num", "--num-samples", dest="num", type=_positive_int, default=64,
                        help="number of samples (under torchrun spell it --num-samples: torchrun reads --num as its "
                             "own --numa-binding)")  # fmt: skip
    sample.add_argument("--batch-size", type=_positive_int, default=64,
                        help="samples per batch (batches are cut by index and dealt to torchrun's ranks)")  # fmt: skip
    sample.add_argument("--out", help="output folder (default: samples/ beside the checkpoint); the files are "
                                      "named after every setting that changes them, e.g. "
                                      "pc-langevin-snr0.16-500steps-n64-seed0-ckpt2000.png and .pt, so runs "
                                      "with other settings never overwrite each other (the same command "
                                      "rewrites the same files)")  # fmt: skip
    sample.add_argument("--class", dest="label", type=int,
                        help="class K of a conditional model (--conditional) or of --classifier")  # fmt: skip
    sample.add_argument("--classifier", metavar="CKPT",
                        help="classifier guidance with this noisy classifier (`scoresde train-classifier`): "
                             "score + s grad log p(K | x_t, t), s = --guidance")  # fmt: skip
    sample.add_argument("--guidance", type=float, help="classifier-free guidance scale s with --class: eps_null + "
                                                       "s (eps_K - eps_null) = (1 + w) eps_K - w eps_null, w = s - 1 "
                                                       "(default 1: the conditional model); with --classifier, the "
                                                       "classifier guidance scale")  # fmt: skip
    sample.add_argument("--inpaint", choices=MASK_REGIONS, metavar="MASK",
                        help="fill in this half (top, bottom, left or right) of the test images, one per sample, "
                             "by Song et al.'s replacement (--sampler pc or ode; --method: a fixed-step ODE "
                             "method)")  # fmt: skip
    sample.set_defaults(func=_sample, on_interrupt="no samples were written")

    clf = sub.add_parser("train-classifier", help="train a noisy classifier on a run's labelled data, for "
                                                  "classifier guidance (sample --classifier)")  # fmt: skip
    clf.add_argument("--checkpoint", required=True, help="checkpoint.pt of the run (its data, SDE and shape)")
    clf.add_argument("--out", help="the classifier file (default classifier.pt beside the checkpoint)")
    clf.add_argument("--steps", type=_positive_int, default=2000)
    clf.add_argument("--batch-size", type=_positive_int, default=256)
    clf.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate (cosine-annealed)")
    clf.add_argument("--hidden", type=_positive_int, default=256, help="ClassifierMLP width")
    clf.add_argument("--depth", type=_positive_int, default=3, help="ClassifierMLP residual blocks")
    clf.add_argument("--seed", type=int, default=0)
    clf.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    clf.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    clf.set_defaults(func=_train_classifier, on_interrupt="no classifier was written")

    likelihood = sub.add_parser("likelihood", help="bits/dim of a data split under a checkpoint")
    add_checkpoint_args(likelihood)
    likelihood.add_argument("--split", choices=("train", "test"), default="test")
    divergences = ("hutchinson", "exact", "auto")  # those of sd.log_likelihood(divergence=...)
    likelihood.add_argument("--divergence", choices=divergences, default="hutchinson",
                            help="Hutchinson (Rademacher probes), exact, or auto (exact up to 64 values)")  # fmt: skip
    likelihood.add_argument("--estimator", choices=divergences, dest="divergence", action=_Renamed,
                            new="--divergence", help=argparse.SUPPRESS)  # fmt: skip
    likelihood.add_argument("--num-probes", type=_positive_int, default=1)
    likelihood.add_argument("--bound", choices=("ode", *ELBO_BOUNDS), default="ode",
                            help="ode (probability flow, dequantized), elbo (continuous-time variational bound) "
                                 "or ddpm (the discrete bound of a --steps chain)")  # fmt: skip
    likelihood.add_argument("--steps", type=_positive_int, default=1000, help="chain steps of --bound ddpm")
    likelihood.add_argument("--num-time-samples", type=_positive_int, default=1,
                            help="time draws per image of the ELBO bounds")  # fmt: skip
    likelihood.add_argument("--num-images", type=_positive_int, help="the first N images of the split (default all)")
    likelihood.add_argument("--batch-size", type=_positive_int, default=128)
    likelihood.add_argument("--json", help="also write the result to this JSON file")
    likelihood.add_argument("--resume-dir", help="write each finished batch here; a restart with the same arguments "
                                                 "skips them (a killed evaluation loses nothing)")  # fmt: skip
    likelihood.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
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

    # its flags are the harness's own (scoresde bench --help): main() passes them on
    bench = sub.add_parser("bench", add_help=False,
                           help="solver, likelihood and overhead benchmarks (scoresde bench --help)")  # fmt: skip
    bench.set_defaults(func=_bench, passes_on=True, on_interrupt="the benchmark stopped before it finished")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if rest and not getattr(args, "passes_on", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")  # what parse_args says
    args.passed_on = rest
    try:
        code = args.func(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as err:
        print(f"scoresde {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # the train command names its last checkpoint; the others wrote nothing
        print(f"scoresde {args.command}: interrupted; {str(err) or args.on_interrupt}", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
