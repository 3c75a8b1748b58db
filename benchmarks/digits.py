"""Digits density benchmark: test bits/dim of a U-Net score model trained for a fixed wall-clock
budget, against sklearn's 10-component full-covariance Gaussian mixture under the same protocol.

Protocol (both models): sklearn's 8x8 digits, 17 levels, the library's fixed train/test split
(1500/297, :data:`scoresde.data.DIGITS_SPLIT_SEED`), uniform dequantization
``u = (x + nu)/17``, model space ``y = 2u - 1``, bits/dim = the dequantization bound
``-(E log p_u(u) - D log 17)/(D ln 2)`` averaged over the 297 test images. The score model's
``log p`` is the probability-flow ODE likelihood (dopri5, rtol = atol = 1e-5, Hutchinson
divergence with Rademacher probes: unbiased for ``log p``, its noise is in the standard error);
the mixture is fitted to 4 dequantized copies of the training images.

    python benchmarks/digits.py --threads 1             # the reported run: 2500 steps, ~8 min here
    python benchmarks/digits.py --steps 100 --quick     # smoke test

The recipe: AdamW at 2e-3 with 200 warm-up steps and cosine decay over ``--steps``, EMA 0.998,
likelihood weighting with importance-sampled times, batch 128. ``--minutes`` caps the run.

Writes ``benchmarks/results/digits.json`` (or ``--results``) and the run folder ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde.data import load_digits
from scoresde.nn import MLP, UNet
from scoresde.train import Trainer


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget (a hard cap)")
    parser.add_argument("--steps", type=int, default=2500,
                        help="planned steps of the cosine learning-rate schedule (0: a constant rate until the "
                             "budget is spent)")
    parser.add_argument("--out", default="runs/bench_digits")
    parser.add_argument("--results", default="benchmarks/results/digits.json")
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
    parser.add_argument("--weighting", default="likelihood")
    parser.add_argument("--time-sampling", default="importance")
    parser.add_argument("--num-probes", type=int, default=1)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="evaluate on 32 test images only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, test = load_digits("train"), load_digits("test")
    if args.quick:
        test = test.subset(slice(0, 32))
    t0 = time.perf_counter()
    baseline = gmm_baseline(train, test)
    print(f"GMM(10, full) baseline: {baseline['bpd']:.4f} +- {baseline['std_error']:.4f} bits/dim "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)  # fmt: skip

    torch.manual_seed(args.seed)
    sde = sd.VPSDE()
    if args.net == "mlp":
        net = MLP(dim=train.levels[0].numel(), hidden=args.hidden, depth=args.depth)
    else:
        net = UNet(
            in_channels=1, channels=args.channels, channel_mults=[int(m) for m in args.channel_mults.split(",")],
            num_res_blocks=args.num_res_blocks, attention_levels=(1,), dropout=args.dropout,
        )  # fmt: skip
    model = sd.EpsilonScore(net, sde)
    config = {k: v for k, v in vars(args).items()}
    trainer = Trainer(
        model, sde, train, out_dir=args.out, steps=args.steps or 10**9, batch_size=args.batch_size, lr=args.lr,
        lr_schedule="cosine" if args.steps else "constant",
        warmup_steps=args.warmup_steps, ema_decay=args.ema_decay, weighting=args.weighting,
        time_sampling=args.time_sampling, seed=args.seed, device="cpu", log_every=100, config=config,
    )  # fmt: skip
    # without --steps the rate stays constant after warm-up, so the run can stop whenever the budget is spent;
    # with --steps it decays to 0 at that step, and the budget still caps the run
    budget, chunk, last, start = args.minutes * 60, 100, args.steps or math.inf, time.perf_counter()
    while time.perf_counter() - start < budget and trainer.step < last:
        result = trainer.train(stop_at=min(trainer.step + chunk, last))
        print(f"step {trainer.step}: loss {sum(result.losses) / len(result.losses):.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    train_seconds = time.perf_counter() - start

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed + 1)
    evaluation = sd.evaluate_bpd(
        trainer.ema.module, sde, test.levels, num_bins=test.num_levels, transform=test.transform, batch_size=128,
        divergence="hutchinson", probe="rademacher", num_probes=args.num_probes, rtol=args.rtol, atol=args.rtol,
        generator=gen,
    )  # fmt: skip
    eval_seconds = time.perf_counter() - t0
    num_batches = math.ceil(len(test) / 128)
    results = {
        "score_model": {
            "bpd": evaluation.mean, "std_error": evaluation.std_error, "num_test_images": evaluation.num_samples,
            "nfe_total": evaluation.nfe, "nfe_per_batch": evaluation.nfe / num_batches, "eval_seconds": eval_seconds,
            "train_seconds": train_seconds, "steps": trainer.step,
            "parameters": sum(p.numel() for p in net.parameters()),
        },
        "gmm_baseline": baseline,
        "protocol": "17 levels, uniform dequantization, y = 2u - 1, PF-ODE dopri5 likelihood, Hutchinson Rademacher",
        "config": config,
    }  # fmt: skip
    print(json.dumps(results, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
