"""Scale-out of bits/dim (scoresde.discrete_data.evaluate_bpd): per-sample seeds, whole batches
dealt to torchrun ranks, and resumable evaluation that survives kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde import discrete_data
from scoresde.distributed import shard_batches
from tests.scripts.evaluate_bpd import problem

SCRIPT = Path(__file__).parent / "scripts" / "evaluate_bpd.py"
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"num_bins": 16, "seed": 3, "dtype": torch.float64, "rtol": 1e-6, "atol": 1e-6}


def single_process(batch_size=8, **kwargs):
    levels, gmm = problem()
    sde = sd.VPSDE()
    return sd.evaluate_bpd(gmm.score_fn(sde), sde, levels, batch_size=batch_size, **SETTINGS, **kwargs)


def run_script(out: Path, *args: str, torchrun: int = 0, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    command = [*(launcher if torchrun else [sys.executable]), str(SCRIPT), str(out), *args]
    return subprocess.Popen(command, env=env, cwd=ROOT, **popen)


def test_per_sample_seeds_make_a_point_independent_of_its_batch():
    """On a fixed grid the whole computation is per sample: a point's bits/dim is the same in a
    batch of 40 and in a batch of 2 (dequantization noise and probes are its own)."""
    levels, gmm = problem()
    sde = sd.VPSDE()
    kw = {"num_bins": 16, "seed": 3, "dtype": torch.float64, "method": "rk4", "num_steps": 12,
          "divergence": "hutchinson", "num_dequant_samples": 2}  # fmt: skip
    whole = sd.bits_per_dim(gmm.score_fn(sde), sde, levels, **kw).bits_per_dim
    part = sd.bits_per_dim(gmm.score_fn(sde), sde, levels[[5, 31]], sample_indices=[5, 31], **kw).bits_per_dim
    torch.testing.assert_close(part, whole[[5, 31]], rtol=0, atol=1e-12)


def test_evaluation_covers_the_set_in_data_order():
    result = single_process()
    assert result.num_samples == 40 and result.bits_per_dim.shape == (40,)
    assert result.mean == pytest.approx(result.bits_per_dim.mean().item(), rel=1e-12)
    # a batch's points are the same whatever else is evaluated: batch 2 alone, as indices 16..23
    levels, gmm = problem()
    sde = sd.VPSDE()
    alone = sd.bits_per_dim(gmm.score_fn(sde), sde, levels[16:24], sample_indices=range(16, 24), **SETTINGS)
    torch.testing.assert_close(alone.bits_per_dim, result.bits_per_dim[16:24], rtol=0, atol=0)


def test_resumed_evaluation_reads_finished_batches_and_refuses_another_runs_folder(tmp_path, monkeypatch):
    first = single_process(out_dir=tmp_path)
    files = sorted(tmp_path.glob("batch-*.pt"))
    assert len(files) == 5 and json.loads((tmp_path / "run.json").read_text())["batch_size"] == 8
    stamps = [f.stat().st_mtime_ns for f in files]
    calls = []
    monkeypatch.setattr(discrete_data, "bits_per_dim", lambda *a, **k: calls.append(1))  # nothing left to compute
    again = single_process(out_dir=tmp_path)
    assert not calls and torch.equal(again.bits_per_dim, first.bits_per_dim) and again.nfe == first.nfe
    assert [f.stat().st_mtime_ns for f in files] == stamps
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"holds another evaluation's results \(batch_size: 8 there, 10 here\)"):
        single_process(batch_size=10, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"holds another evaluation's results \(seed: 3 there, 4 here\)"):
        levels, gmm = problem()
        sd.evaluate_bpd(gmm.score_fn(sd.VPSDE()), sd.VPSDE(), levels, batch_size=8, out_dir=tmp_path,
                        **{**SETTINGS, "seed": 4})  # fmt: skip
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing overwritten


@pytest.mark.timeout(240)
def test_kill_minus_9_then_restart_equals_an_uninterrupted_run(tmp_path):
    """A slow evaluation killed after its second batch: the restart computes only the missing
    batches and the final result equals an uninterrupted run's, every point once."""
    store = tmp_path / "store"
    proc = run_script(tmp_path, "--store", str(store), "--slow", "0.02")
    deadline = time.time() + 120
    while len(list(store.glob("batch-*.pt"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(store.glob("batch-*.pt"))
    assert 2 <= len(done) < 5, "the kill came too late to test a restart"
    stamps = {f.name: f.stat().st_mtime_ns for f in done}
    levels, gmm = problem()
    sde = sd.VPSDE()
    computed = []
    real = discrete_data.bits_per_dim

    def counting(*args, **kwargs):
        computed.append(kwargs["sample_indices"][0].item() // 8)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(discrete_data, "bits_per_dim", counting)
        resumed = sd.evaluate_bpd(gmm.score_fn(sde), sde, levels, batch_size=8, out_dir=store, **SETTINGS)
    assert sorted(computed) == sorted(set(range(5)) - {int(name[6:12]) for name in stamps})
    assert {f.name: f.stat().st_mtime_ns for f in done} == stamps
    uninterrupted = single_process()
    torch.testing.assert_close(resumed.bits_per_dim, uninterrupted.bits_per_dim, rtol=0, atol=0)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("resumable", [False, True], ids=["gathered", "resumable"])
def test_torchrun_two_processes_match_one(tmp_path, resumable):
    """torchrun --nproc_per_node=2 (gloo): the per-point bits/dim are those of one process. The
    two ranks' batches take different numbers of adaptive steps (printed NFE differ per batch)
    and nothing waits on the other inside a solve."""
    args = ["--store", str(tmp_path / "store")] if resumable else []
    proc = run_script(tmp_path, *args, torchrun=2, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = proc.communicate(timeout=200)
    assert proc.returncode == 0, output.decode()[-3000:]
    two = torch.load(tmp_path / "result.pt", weights_only=True)
    one = single_process()
    torch.testing.assert_close(two["bits_per_dim"], one.bits_per_dim, rtol=0, atol=0)
    assert two["nfe"] == one.nfe
    if resumable:
        nfes = [torch.load(f, weights_only=True)["nfe"] for f in sorted((tmp_path / "store").glob("batch-*.pt"))]
        assert len(set(nfes)) > 1  # the batches' adaptive solves differ in length


def test_shards_and_errors(monkeypatch):
    assert list(shard_batches(5, 1, 2)) == [1, 3] and list(shard_batches(5, 0, 2)) == [0, 2, 4]
    with pytest.raises(ValueError, match="3 processes for 2 batches: use at most 2 processes"):
        shard_batches(2, 0, 3)
    levels, gmm = problem()
    sde = sd.VPSDE()
    with pytest.raises(TypeError, match="out_dir and torchrun need data as one"):
        sd.evaluate_bpd(gmm.score_fn(sde), sde, [levels], num_bins=16, out_dir="x")
    monkeypatch.setattr(discrete_data, "distributed_context", lambda: (0, 2))
    with pytest.raises(ValueError, match="under torchrun needs seed="):
        sd.evaluate_bpd(gmm.score_fn(sde), sde, levels, num_bins=16)
    with pytest.raises(ValueError, match="2 processes for 1 batches"):
        sd.evaluate_bpd(gmm.score_fn(sde), sde, levels, num_bins=16, batch_size=64, seed=1)
