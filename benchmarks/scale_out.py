"""Bits/dim evaluation throughput with 1 and 2 processes (torchrun, gloo on CPU), and a check
that both give the same per-image results.

    python benchmarks/scale_out.py [--images 256] [--batch-size 32] [--out benchmarks/results]

The problem is a 16-dimensional quantised Gaussian mixture under its exact score (no training
error, a fixed cost per evaluation); each process runs one torch thread. Writes
``scale_out.json`` (timings, images per second, their ratio) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import scoresde as sd
from scoresde.distributed import distributed_context

ROOT = Path(__file__).resolve().parents[1]


def problem(num_images: int) -> tuple[torch.Tensor, sd.GaussianMixture]:
    g = torch.Generator().manual_seed(0)
    means = 0.4 * torch.randn(4, 16, generator=g, dtype=torch.float64)
    gmm = sd.GaussianMixture(means, 0.01 + 0.03 * torch.rand(4, 16, generator=g, dtype=torch.float64))
    y = gmm.sample(num_images, generator=g, dtype=torch.float64).clamp(-0.999, 0.999)
    return sd.to_levels(y, 64), gmm


def worker(args: argparse.Namespace) -> None:
    """One process of the run (plain or under torchrun): evaluates and, on rank 0, saves the
    per-image bits/dim and the wall time."""
    torch.set_num_threads(1)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    levels, gmm = problem(args.images)
    sde = sd.VPSDE()
    start = time.perf_counter()
    result = sd.evaluate_bpd(gmm.score_fn(sde), sde, levels, num_bins=64, batch_size=args.batch_size, seed=0,
                             divergence="hutchinson", dtype=torch.float64, rtol=1e-5, atol=1e-5)  # fmt: skip
    seconds = time.perf_counter() - start
    if distributed_context()[0] == 0:
        torch.save({"bits_per_dim": result.bits_per_dim, "seconds": seconds, "nfe": result.nfe}, args.worker_out)
    if dist.is_initialized():
        dist.destroy_process_group()


def run(processes: int, args: argparse.Namespace, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), __file__, "--worker-out", str(out),
               "--images", str(args.images), "--batch-size", str(args.batch_size)]  # fmt: skip
    subprocess.run(command, env=env, cwd=ROOT, check=True)
    return torch.load(out, weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        worker(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    one, two = (run(n, args, out / f".scale_out_{n}.pt") for n in (1, 2))
    for n in (1, 2):
        (out / f".scale_out_{n}.pt").unlink()
    same = bool(torch.equal(one["bits_per_dim"], two["bits_per_dim"]))
    record = {
        "images": args.images, "batch_size": args.batch_size, "nfe": one["nfe"],
        "seconds": {"1": one["seconds"], "2": two["seconds"]},
        "images_per_second": {"1": args.images / one["seconds"], "2": args.images / two["seconds"]},
        "speedup_2_over_1": one["seconds"] / two["seconds"], "per_image_bits_per_dim_identical": same,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }  # fmt: skip
    tmp = out / ".scale_out.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out / "scale_out.json")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
