"""Evaluate bits/dim of a quantised 2-D mixture under its exact score, as a test's worker: run
plainly or under ``torchrun``; rank 0 writes the result to ``<out>/result.pt``.

    python evaluate_bpd.py OUT [--store DIR] [--batch-size B] [--slow SECONDS]
"""

import argparse
import time

import torch
import torch.distributed as dist

import scoresde as sd
from scoresde.distributed import distributed_context


def problem():
    """Levels 0..15 of a two-component mixture in [-1, 1]^2, and the exact model-space score."""
    gmm = sd.GaussianMixture(
        torch.tensor([[-0.4, -0.3], [0.45, 0.35]], dtype=torch.float64),
        torch.tensor([[0.03, 0.04], [0.05, 0.02]], dtype=torch.float64),
    )
    y = gmm.sample(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(-0.999, 0.999)
    return sd.to_levels(y, 16), gmm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--store")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if "WORLD_SIZE" in __import__("os").environ:
        dist.init_process_group("gloo")
    levels, gmm = problem()
    sde = sd.VPSDE()
    exact = gmm.score_fn(sde)

    def score(x, t):
        if args.slow:
            time.sleep(args.slow)
        return exact(x, t)

    result = sd.evaluate_bpd(score, sde, levels, num_bins=16, batch_size=args.batch_size, seed=3, out_dir=args.store,
                             dtype=torch.float64, rtol=1e-6, atol=1e-6)  # fmt: skip
    if distributed_context()[0] == 0:
        torch.save({"bits_per_dim": result.bits_per_dim, "mean": result.mean, "nfe": result.nfe},
                   f"{args.out}/result.pt")  # fmt: skip
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
