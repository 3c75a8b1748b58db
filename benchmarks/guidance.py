"""Classifier-free guidance on digits: a class-conditional U-Net (the network and recipe of
``benchmarks/digits.py``, trained once with label dropout to the null label) sampled per class at
several guidance scales, scored by the bundled digits classifier (:mod:`scoresde.nn.digits_features`).

For each scale ``s`` (:class:`~scoresde.ClassifierFreeGuidance`: ``eps_null + s (eps_y - eps_null)``;
``s = 0`` is the unconditional model, ``s = 1`` the conditional one) it draws ``--per-class`` samples of
each of the 10 classes with a fixed-step probability-flow ODE sampler (the same per-sample seeds at every
scale) and reports

* the classifier's accuracy on them (the fraction classified as the class they were drawn for; binomial
  standard error), beside its accuracy on the 297 test images;
* the Fréchet distance in the classifier's features of all samples against the test set, and per class
  (class ``c``'s samples against the test images of class ``c``, about 30), each with a bootstrap standard
  error (the per-class mean's error from the ten bootstraps);
* inpainting with the lower half of each test image given (:func:`~scoresde.inpaint`, replacement, the
  reverse-diffusion predictor without a corrector, unconditional score): the classifier's accuracy on the
  completions against the images' labels, and on the half images alone (upper half blank) as a floor.

    python benchmarks/guidance.py --threads 1           # the reported run: 2500 steps
    python benchmarks/guidance.py --steps 20 --quick    # smoke test (seconds)

Writes ``benchmarks/results/guidance.json`` (or ``--results``), ``guidance.md`` (the table),
``guidance.png`` (accuracy and FD against the scale) and ``guidance_grids.png`` (per-class grids, one
panel per scale) beside it, and the run folder ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the checkout's root, so `benchmarks` and `scoresde` import
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scoresde as sd
from benchmarks.digits import add_training_arguments, frechet_with_error, make_net, train_model
from scoresde.data import load_digits
from scoresde.nn.digits_features import pretrained
from scoresde.plot import image_grid


def accuracy(levels: torch.Tensor, labels: torch.Tensor) -> dict:
    """The bundled digits classifier's accuracy on ``levels`` ``(n, 1, 8, 8)`` against ``labels``,
    with its binomial standard error."""
    with torch.no_grad():
        correct = (pretrained()(levels).argmax(-1) == labels).double()
    p, n = correct.mean().item(), len(correct)
    return {"accuracy": p, "std_error": math.sqrt(p * (1 - p) / n), "num_samples": n}


def guided_samples(model: torch.nn.Module, sde: sd.LinearSDE, scale: float, shape: tuple[int, ...],
                   args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, int, float]:  # fmt: skip
    """``--per-class`` samples of each class at guidance ``scale`` in model space, their labels, the
    sampler's NFE per batch and the seconds taken. Sample ``i`` (class ``i // per_class``) has the
    same seed at every scale."""
    n = 10 * args.per_class
    labels, xs, nfe, t0 = torch.arange(n) // args.per_class, [], 0, time.perf_counter()
    with torch.no_grad():
        for idx in torch.arange(n).split(args.sample_batch_size):
            guided = sd.ClassifierFreeGuidance(model, labels[idx], scale=scale)
            res = sd.sample_ode(guided, sde, (len(idx), *shape), method=args.method, num_steps=args.num_steps,
                                seed=args.seed + 3, sample_indices=idx)  # fmt: skip
            xs.append(res.x)
            nfe = res.nfe
    return torch.cat(xs), labels, nfe, time.perf_counter() - t0


def per_class_frechet(levels: torch.Tensor, labels: torch.Tensor, test: sd.data.ImageData,
                      args: argparse.Namespace) -> dict:  # fmt: skip
    """FD of each class's samples against the test images of that class, their mean and its
    standard error (the classes' bootstrap errors combined)."""
    rows = []
    for c in range(10):
        samples, reference = levels[labels == c], test.levels[test.labels == c]
        rows.append(frechet_with_error(samples, reference, num_bootstrap=args.bootstrap, seed=args.seed))
    fds = [r["fd"] for r in rows]
    return {"mean_fd": sum(fds) / 10, "std_error": math.sqrt(sum(r["std_error"] ** 2 for r in rows)) / 10,
            "per_class": fds}  # fmt: skip


def inpainting(model: torch.nn.Module, sde: sd.LinearSDE, test: sd.data.ImageData, args: argparse.Namespace) -> dict:
    """Complete the upper half of every test image from its lower half (unconditional score,
    replacement) and score the completions and the half images by the classifier's accuracy."""
    mask = torch.zeros(test.image_shape, dtype=torch.bool)
    mask[:, test.image_shape[1] // 2 :] = True  # the lower half is observed
    observed = test.to_model(test.levels, dequantize=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = sd.inpaint(sd.ClassifierFreeGuidance(model, 0, scale=0.0), sde, mask, observed, method="replacement",
                         sampler="pc", num_steps=args.inpaint_steps, corrector=None, seed=args.seed + 4)  # fmt: skip
    completed = test.from_model(res.x)
    half = torch.where(mask, test.levels, torch.zeros_like(test.levels))
    return {"completions": {**accuracy(completed, test.labels), "nfe": res.nfe, "seconds": time.perf_counter() - t0},
            "lower_half_only": accuracy(half, test.labels), "method": "replacement, PC reverse diffusion, no corrector",
            "steps": args.inpaint_steps, "grid": completed[:40]}  # fmt: skip


def save_plots(rows: list[dict], grids: dict[float, torch.Tensor], test_accuracy: float, folder: Path) -> None:
    """``guidance.png`` (accuracy and FD against the scale) and ``guidance_grids.png`` (per-class grids)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["scale"] for r in rows]
    fig, (ax_acc, ax_fd) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_acc.errorbar(scales, [r["accuracy"]["accuracy"] for r in rows], [r["accuracy"]["std_error"] for r in rows],
                    marker="o", capsize=3, label="guided samples")  # fmt: skip
    ax_acc.axhline(test_accuracy, color="grey", ls="--", label="test images")
    ax_acc.set(xlabel="guidance scale s", ylabel="classifier accuracy", ylim=(0, 1.02))
    ax_acc.legend()
    for key, label in (("fd", "all samples vs test"), ("per_class_fd", "per class (mean)")):
        values = [r[key]["fd"] if key == "fd" else r[key]["mean_fd"] for r in rows]
        ax_fd.errorbar(scales, values, [r[key]["std_error"] for r in rows], marker="o", capsize=3, label=label)
    ax_fd.set(xlabel="guidance scale s", ylabel="Fréchet distance (digits features)")
    ax_fd.legend()
    fig.tight_layout()
    fig.savefig(folder / "guidance.png", dpi=120)
    fig, axes = plt.subplots(1, len(grids), figsize=(2.2 * len(grids), 2.9))
    for ax, (scale, levels) in zip(list(axes) if len(grids) > 1 else [axes], grids.items(), strict=True):
        ax.imshow(image_grid(levels, num_levels=17, nrow=levels.shape[0] // 10)[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"s = {scale:g}")
        ax.axis("off")
    fig.suptitle("classes 0-9 (rows), same seeds at every scale")
    fig.tight_layout()
    fig.savefig(folder / "guidance_grids.png", dpi=120)
    plt.close("all")


def markdown(results: dict) -> str:
    """The results as a markdown table."""
    lines = ["| scale | accuracy | FD vs test | per-class FD (mean) | NFE | network evaluations per sample |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["scales"]:
        a, f, c = r["accuracy"], r["fd"], r["per_class_fd"]
        lines.append(f"| {r['scale']:g} | {a['accuracy']:.3f} ± {a['std_error']:.3f} | {f['fd']:.2f} ± "
                     f"{f['std_error']:.2f} | {c['mean_fd']:.1f} ± {c['std_error']:.1f} | {r['nfe']} | "
                     f"{r['network_evaluations']} |")  # fmt: skip
    ref, inp = results["reference"], results["inpainting"]
    lines += ["", f"Test images: accuracy {ref['test_accuracy']['accuracy']:.3f}; FD of "
              f"{ref['train_fd']['num_samples']} training images vs test {ref['train_fd']['fd']:.2f} ± "
              f"{ref['train_fd']['std_error']:.2f}. Inpainting (lower half given, {inp['steps']} steps): accuracy "
              f"{inp['completions']['accuracy']:.3f} ± {inp['completions']['std_error']:.3f} on the completions, "
              f"{inp['lower_half_only']['accuracy']:.3f} ± {inp['lower_half_only']['std_error']:.3f} on the "
              f"lower halves alone. Training: {results['training']['steps']} steps, "
              f"{results['training']['train_seconds']:.0f} s."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser)
    parser.add_argument("--label-dropout", type=float, default=0.1, help="chance of training on the null label")
    parser.add_argument("--scales", default="0,1,2,3,5", help="guidance scales s")
    parser.add_argument("--per-class", type=int, default=50, help="samples per class and scale")
    parser.add_argument("--method", default="heun", help="fixed-step ODE sampler")
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--inpaint-steps", type=int, default=100)
    parser.add_argument("--sample-batch-size", type=int, default=250)
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the FD's standard error")
    parser.add_argument("--grid-per-class", type=int, default=8, help="samples per class in the grids")
    parser.add_argument("--out", default="runs/bench_guidance")
    parser.add_argument("--results", default="benchmarks/results/guidance.json")
    parser.add_argument("--quick", action="store_true", help="inpaint 32 test images only")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    if args.grid_per_class > args.per_class:
        parser.error(f"--grid-per-class {args.grid_per_class} exceeds --per-class {args.per_class}")
    torch.set_num_threads(args.threads)

    train, test = load_digits("train"), load_digits("test")
    torch.manual_seed(args.seed)
    sde = sd.VPSDE()
    model = sd.EpsilonScore(make_net(args, train.levels[0].numel(), num_classes=train.num_classes), sde)
    model, training = train_model(model, sde, train, args, args.out, label_dropout=args.label_dropout)

    rows, grids = [], {}
    for scale in scales:
        x, labels, nfe, seconds = guided_samples(model, sde, scale, test.image_shape, args)
        levels = test.from_model(x)
        row = {
            "scale": scale, "nfe": nfe, "network_evaluations": nfe * (1 if scale in (0.0, 1.0) else 2),
            "accuracy": accuracy(levels, labels),
            "fd": frechet_with_error(levels, test.levels, num_bootstrap=args.bootstrap, seed=args.seed),
            "per_class_fd": per_class_frechet(levels, labels, test, args), "seconds": seconds,
        }  # fmt: skip
        rows.append(row)
        grids[scale] = levels.reshape(10, args.per_class, *test.image_shape)[:, : args.grid_per_class].flatten(0, 1)
        print(f"s = {scale:g}: accuracy {row['accuracy']['accuracy']:.3f} +- {row['accuracy']['std_error']:.3f}, "
              f"FD {row['fd']['fd']:.2f} +- {row['fd']['std_error']:.2f}, per-class FD "
              f"{row['per_class_fd']['mean_fd']:.1f} ({seconds:.0f} s)", flush=True)  # fmt: skip

    floor_idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: 10 * args.per_class]
    reference = {
        "test_accuracy": accuracy(test.levels, test.labels),
        "train_fd": frechet_with_error(train.levels[floor_idx], test.levels, num_bootstrap=args.bootstrap,
                                       seed=args.seed),
    }  # fmt: skip
    inpainted = inpainting(model, sde, test.subset(slice(0, 32)) if args.quick else test, args)
    inpaint_grid = inpainted.pop("grid")
    print(f"inpainting: accuracy {inpainted['completions']['accuracy']:.3f} (lower halves alone "
          f"{inpainted['lower_half_only']['accuracy']:.3f})", flush=True)  # fmt: skip

    results = {"scales": rows, "reference": reference, "inpainting": inpainted, "training": training,
               "sampler": f"sample_ode(method={args.method!r}, num_steps={args.num_steps})",
               "config": {k: v for k, v in vars(args).items()}}  # fmt: skip
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(results))
    save_plots(rows, grids, reference["test_accuracy"]["accuracy"], path.parent)
    sd.plot.save_image_grid(inpaint_grid, path.parent / "guidance_inpainting.png", num_levels=17, nrow=8, scale=4)
    print(markdown(results))


if __name__ == "__main__":
    main()
