"""DistributedDataParallel on CPU: 2 gloo processes on a loopback port."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import scoresde as sd
from scoresde.checkpoint import load_checkpoint
from scoresde.data import load_digits
from scoresde.nn import UNet
from scoresde.train import Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        sde = sd.VPSDE()
        net = UNet(channels=8, channel_mults=(1, 2), num_res_blocks=1, dropout=0.1)
        trainer = Trainer(
            sd.EpsilonScore(net, sde), sde, load_digits("train").subset(slice(0, 128)), out_dir=out_dir, steps=4,
            batch_size=32, lr=2e-3, device="cpu", eval_data=load_digits("test").subset(slice(0, 6)),
            num_eval_images=6, num_grid_samples=4, log_every=2,
        )  # fmt: skip
        result = trainer.train()
        params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        ema = torch.cat([p.detach().flatten() for p in trainer.ema.module.parameters()])
        torch.save({"params": params, "ema": ema, "losses": result.losses, "eval": result.evaluations[-1]},
                   f"{out_dir}/rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_gloo_processes_train_and_agree_on_the_weights(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert torch.equal(r0["params"], r1["params"]) and torch.equal(r0["ema"], r1["ema"])
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 4  # losses are reduced over ranks
    assert r0["eval"]["bpd"] == r1["eval"]["bpd"] and r0["eval"]["bpd_images"] == 6  # 3 images per rank
    assert "sample_grid" in r0["eval"] and "sample_grid" not in r1["eval"]  # rank 0 writes
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 4
    assert not torch.equal(state["rng"][0]["generator"], state["rng"][1]["generator"])  # distinct noise per rank
    model = sd.EpsilonScore(UNet(channels=8, channel_mults=(1, 2), num_res_blocks=1), sd.VPSDE())
    model.load_state_dict(state["model"])
    assert torch.equal(torch.cat([p.detach().flatten() for p in model.parameters()]), r0["params"])


@pytest.mark.timeout(300)
def test_training_under_real_torchrun(tmp_path):
    """`torchrun --standalone --nproc_per_node=2 -m scoresde.cli train` (the init_distributed path,
    gloo on CPU): both ranks train, rank 0 writes one checkpoint that records both ranks' noise
    and the losses reduced over them, and it resumes as a one-process run would load it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "tiny.toml").write_text(
        "[model]\nchannels = 8\nchannel_mults = [1, 2]\nnum_res_blocks = 1\n"
        "[train]\nsteps = 2\nbatch_size = 16\nwarmup_steps = 0\nnum_eval_images = 2\nnum_grid_samples = 2\n"
        "log_every = 1\ncheckpoint_every = 2\n[run]\ndevice = \"cpu\"\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "scoresde.cli", "train", "--config", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "run"),
               "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"loss"' in line]) == 2  # one record per step, written by rank 0
