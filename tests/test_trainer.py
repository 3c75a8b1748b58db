import json
import os
import re
import shutil

import pytest
import torch

import scoresde as sd
from scoresde._atomic import STALE_SECONDS
from scoresde.checkpoint import CHECKPOINT_FORMAT, CheckpointError, check_plain, load_checkpoint, save_checkpoint
from scoresde.config import DEFAULT_CONFIG
from scoresde.data import load_digits
from scoresde.nn import UNet
from scoresde.train import TrainConfig, Trainer, _stream_seed

TRAIN = load_digits("train").subset(slice(0, 256))
TEST = load_digits("test").subset(slice(0, 8))


def make_trainer(out_dir, *, steps=6, dropout=0.1, seed=0, **kw):
    torch.manual_seed(seed)
    sde = sd.VPSDE()
    net = UNet(channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), dropout=dropout)
    args = {"steps": steps, "batch_size": 32, "lr": 2e-3, "warmup_steps": 2, "ema_decay": 0.9, "log_every": 2,
            "num_grid_samples": 0, "device": "cpu", "config": {"note": "test", "sizes": [1, 2]}}  # fmt: skip
    return Trainer(sd.EpsilonScore(net, sde), sde, TRAIN, out_dir=out_dir, **{**args, **kw})


def params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_a_few_steps_on_digits_reduce_the_loss(tmp_path):
    trainer = make_trainer(tmp_path, steps=40, lr=3e-3, dropout=0.0, warmup_steps=0)
    result = trainer.train()
    assert len(result.losses) == 40 and result.step == 40
    assert sum(result.losses[-8:]) < 0.7 * sum(result.losses[:8])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(2, 41, 2))
    assert {"loss", "lr", "grad_norm", "images_per_second"} <= set(records[0])


def test_checkpoint_round_trip(tmp_path):
    trainer = make_trainer(tmp_path, steps=3)
    trainer.train()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # plain values only
    assert state["format"] == CHECKPOINT_FORMAT and state["step"] == 3
    assert state["config"] == {"note": "test", "sizes": [1, 2]} and state["trainer"]["batch_size"] == 32
    other = make_trainer(tmp_path / "other", steps=3, seed=1)
    assert not torch.equal(params(other.model), params(trainer.model))
    other.load(tmp_path / "checkpoint.pt")
    assert other.step == 3
    assert torch.equal(params(other.model), params(trainer.model))
    assert torch.equal(params(other.ema.module), params(trainer.ema.module))
    assert not torch.equal(params(trainer.ema.module), params(trainer.model))  # the average lags
    for a, b in zip(other.optimizer.state.values(), trainer.optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full", steps=8, lr_schedule="cosine")
    full_losses = full.train().losses
    first = make_trainer(tmp_path / "split", steps=8, lr_schedule="cosine")
    losses = first.train(stop_at=3).losses
    del first
    with (tmp_path / "split" / "metrics.jsonl").open("a") as log:
        log.write('{"step": 4, "lo')  # a crash mid-append leaves a torn last line
    second = make_trainer(tmp_path / "split", steps=8, lr_schedule="cosine", seed=5, resume=True)
    assert second.step == 3
    losses += second.train().losses
    assert losses == full_losses
    assert torch.equal(params(second.model), params(full.model))
    assert torch.equal(params(second.ema.module), params(full.ema.module))
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4, 6, 8]


def test_resume_removes_the_temporary_files_an_interrupted_save_left(tmp_path):
    make_trainer(tmp_path, steps=4).train(stop_at=2)
    left = tmp_path / ".checkpoint.pt.0123456789ab.tmp"  # what a kill -9 mid-save leaves
    left.write_bytes(b"PK\x03\x04 partial")
    fresh = tmp_path / ".checkpoint.pt.fedcba987654.tmp"  # could be another process's save in flight
    fresh.write_bytes(b"PK\x03\x04 partial")
    old = left.stat().st_mtime - STALE_SECONDS - 1
    os.utime(left, (old, old))
    resumed = make_trainer(tmp_path, steps=4, resume=True)
    assert resumed.step == 2 and not left.exists() and fresh.exists()


@pytest.mark.parametrize("crash", ["torch.save", "os.replace"])
def test_a_crash_mid_write_leaves_the_old_checkpoint(tmp_path, monkeypatch, crash):
    path = tmp_path / "ck.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def half_written_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    def failing_replace(src, dst):
        raise OSError("power cut")

    if crash == "torch.save":
        monkeypatch.setattr(torch, "save", half_written_save)
    else:
        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match=r"disk full|power cut"):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temporary file left behind


def test_corrupted_or_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"step": 1, "w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {path}: corrupted or truncated"):
        load_checkpoint(path)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {path}"):
        load_checkpoint(path)
    torch.save({"step": 1}, path)
    with pytest.raises(CheckpointError, match="is not a scoresde checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing.pt not found"):
        load_checkpoint(tmp_path / "missing.pt")
    trainer = make_trainer(tmp_path / "run")
    path.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match=rf"{path}"):
        trainer.load(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_a_checkpoint_a_weights_only_load_refuses_is_named_so(tmp_path):
    path, marker = tmp_path / "ck.pt", tmp_path / "ran"
    torch.save({"format": CHECKPOINT_FORMAT, "step": 1, "hook": _RunsCode(marker)}, path)
    refused = r"it holds objects that a safe \(weights-only\) load refuses \((builtins\.)?exec\); a scoresde checkpoint"
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {path}: {refused} holds only tensors"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.save({"format": CHECKPOINT_FORMAT, "step": __import__("numpy").zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"refuses \(numpy\.(_)?core\.multiarray\._reconstruct\)"):
        load_checkpoint(path)
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b"not a checkpoint"):  # torch fails these as "weights only" too
        path.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {path}: corrupted or truncated \("):
            load_checkpoint(path)


def test_checkpoint_refuses_values_weights_only_cannot_load(tmp_path):
    from pathlib import Path

    with pytest.raises(TypeError, match=r"config.data.root is a pathlib.*PosixPath; a checkpoint holds only"):
        check_plain({"data": {"root": Path("/tmp")}})
    with pytest.raises(TypeError, match=r"config.sizes\[1\] is a numpy"):
        check_plain({"sizes": [1, __import__("numpy").float64(2.0)]})
    with pytest.raises(TypeError, match=r"config.data.root is a pathlib"):
        make_trainer(tmp_path, config={"data": {"root": Path("/tmp")}})


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, steps=10, checkpoint_every=2)
    trainer.train(stop_at=4)
    before = params(trainer.model).clone()
    with torch.no_grad():
        trainer.model.net.head[-1].bias.fill_(float("nan"))
    previous = re.escape(str(tmp_path / "checkpoint-previous.pt"))
    message = rf"non-finite loss \(nan\) at step 5: .* resume from the previous one, {previous} \(step 2\)"
    with pytest.raises(FloatingPointError, match=message):
        trainer.train()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4
    assert torch.isfinite(state["model"]["net.head.2.bias"]).all()
    trainer.model.load_state_dict(state["model"])
    assert torch.equal(params(trainer.model), before)


FIX = "with other settings (e.g. a smaller learning rate; the same ones reach the same loss)"


@pytest.mark.parametrize("every", [1, 2])
def test_a_diverging_run_names_a_checkpoint_from_before_the_divergence(tmp_path, every):
    """lr = 1e6 blows the weights up at the first update; the loss turns NaN at step 3, computed
    from the weights of step 2, so the checkpoint of step 2 cannot be resumed from."""
    trainer = make_trainer(tmp_path, steps=10, lr=1e6, warmup_steps=0, dropout=0.0, checkpoint_every=every,
                           log_every=1)  # fmt: skip
    with pytest.raises(FloatingPointError) as exc:
        trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[-1]["loss"] > 1e6  # steps named as the log names them
    latest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint-previous.pt"
    head = (f"non-finite loss (nan) at step 3: training stopped before that step's update; the latest checkpoint, "
            f"{latest} (step 2), holds the weights that gave this loss")  # fmt: skip
    if every == 2:
        assert str(exc.value) == f"{head}, and no earlier one is kept: start afresh {FIX}"
        assert not previous.exists()
    else:
        assert str(exc.value) == f"{head}: resume from the previous one, {previous} (step 1), {FIX}"
        assert load_checkpoint(previous)["step"] == 1
    assert load_checkpoint(latest)["step"] == 2
    resumed = make_trainer(tmp_path, steps=10, lr=1e-6, warmup_steps=0, dropout=0.0, resume=True)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 3"):  # as the message said
        resumed.train()


def test_each_save_keeps_the_checkpoint_it_replaces(tmp_path, monkeypatch):
    make_trainer(tmp_path, steps=6, checkpoint_every=2).train()
    latest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint-previous.pt"
    assert (load_checkpoint(latest)["step"], load_checkpoint(latest)["previous_step"]) == (6, 4)
    assert load_checkpoint(previous)["step"] == 4
    resumed = make_trainer(tmp_path, steps=8, checkpoint_every=2, resume=True)
    assert (resumed.step, resumed.checkpoint_step, resumed.previous_checkpoint_step) == (6, 6, 4)

    def torn_copy(src, dst):
        dst.write(src.read(100))
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfileobj", torn_copy)
    with pytest.raises(OSError, match="disk full"):
        resumed.train(stop_at=7)  # a crash while the old checkpoint is copied aside leaves both files whole
    monkeypatch.undo()
    assert load_checkpoint(latest)["step"] == 6 and load_checkpoint(previous)["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-previous.pt", "checkpoint.pt", "metrics.jsonl"]


def test_resume_from_the_previous_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full", steps=6)
    full_losses = full.train().losses
    make_trainer(tmp_path / "split", steps=6, checkpoint_every=2).train(stop_at=5)  # saves steps 2, 4, 5
    previous = tmp_path / "split" / "checkpoint-previous.pt"
    second = make_trainer(tmp_path / "split", steps=6, checkpoint_every=2, resume=previous)
    assert second.step == 4 and second.checkpoint_step is None  # checkpoint.pt holds another state (step 5)
    assert second.train().losses == full_losses[4:]
    assert torch.equal(params(second.model), params(full.model))
    assert torch.equal(params(second.ema.module), params(full.ema.module))
    assert load_checkpoint(previous)["step"] == 5  # the state it replaced is kept, not lost
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_evaluation_writes_a_grid_and_bits_per_dim(tmp_path):
    trainer = make_trainer(tmp_path, steps=2, eval_data=TEST, num_eval_images=4, num_grid_samples=4, eval_every=1)
    result = trainer.train()
    assert [e["step"] for e in result.evaluations] == [1, 2]
    last = result.evaluations[-1]
    assert (tmp_path / last["sample_grid"]).stat().st_size > 100
    assert last["bpd_images"] == 4 and last["bpd"] > 0 and last["bpd_std_error"] > 0 and last["bpd_nfe"] > 0
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("eval") == 2


def test_tensor_data_and_the_global_rng_is_untouched(tmp_path):
    sde = sd.VPSDE()
    model = sd.EpsilonScore(sd.nn.MLP(dim=2, hidden=16, depth=1), sde)
    data = torch.randn(64, 2)
    before = torch.get_rng_state()
    trainer = Trainer(model, sde, data, out_dir=tmp_path, steps=3, batch_size=16, device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
    assert len(trainer.train().losses) == 3
    assert torch.equal(torch.get_rng_state(), before)  # dropout and noise use the trainer's own streams


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"steps": 0}, ValueError, "steps must be an int >= 1, got 0"),
        ({"lr": -1.0}, ValueError, r"lr must be a finite number > 0, got -1.0"),
        ({"ema_decay": 1.0}, ValueError, r"ema_decay must be a number in \[0, 1\), got 1.0"),
        ({"lr_schedule": "step"}, ValueError, r"lr_schedule must be one of \('constant', 'cosine'\), got 'step'"),
        ({"weighting": "l2"}, ValueError, "weighting must be one of"),
        ({"batch_size": 1000}, ValueError, r"batch_size=1000 is larger than the data set \(256 items\)"),
        ({"device": "tpu"}, ValueError, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ({"eval_data": torch.zeros(3)}, TypeError, "eval_data must be an ImageData, got Tensor"),
        ({"learning_rate": 1e-3}, TypeError, r"unknown keyword argument\(s\) learning_rate \(the training settings "
                                             r"are TrainConfig's fields: steps, batch_size, lr,"),
        ({"settings": {"lr": 1e-3}}, TypeError, "settings must be a TrainConfig, got dict"),
        ({"resume_state": {}}, ValueError, "resume_state is the content of the checkpoint to resume from: pass resume"),
    ],
)
def test_bad_arguments(tmp_path, kw, exc, match):
    with pytest.raises(exc, match=match):
        make_trainer(tmp_path, **kw)


# ----------------------------------------------------------------------------- TrainConfig


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steps": 0}, r"^steps must be an int >= 1, got 0$"),
        ({"steps": 2.5}, r"^steps must be an int >= 1, got 2.5$"),
        ({"batch_size": True}, r"^batch_size must be an int >= 1, got True$"),
        ({"log_every": 0}, r"^log_every must be an int >= 1, got 0$"),
        ({"warmup_steps": -1}, r"^warmup_steps must be an int >= 0, got -1$"),
        ({"seed": -3}, r"^seed must be an int >= 0, got -3$"),
        ({"eval_every": "10"}, r"^eval_every must be an int >= 0, got '10'$"),
        ({"checkpoint_every": -1}, r"^checkpoint_every must be an int >= 0, got -1$"),
        ({"num_eval_images": -1}, r"^num_eval_images must be an int >= 0, got -1$"),
        ({"num_grid_samples": -1}, r"^num_grid_samples must be an int >= 0, got -1$"),
        ({"lr": 0.0}, r"^lr must be a finite number > 0, got 0.0$"),
        ({"lr": float("inf")}, r"^lr must be a finite number > 0, got inf$"),
        ({"lr": "1e-3"}, r"^lr must be a finite number > 0, got '1e-3'$"),
        ({"weight_decay": -0.1}, r"^weight_decay must be a finite number >= 0, got -0.1$"),
        ({"grad_clip": float("nan")}, r"^grad_clip must be a finite number >= 0, got nan$"),
        ({"ema_decay": -0.5}, r"^ema_decay must be a number in \[0, 1\), got -0.5$"),
        ({"ema_decay": False}, r"^ema_decay must be a number in \[0, 1\), got False$"),
        ({"lr_schedule": "step"}, r"^lr_schedule must be one of \('constant', 'cosine'\), got 'step'$"),
        ({"weighting": "l2"}, r"^weighting must be one of \('sigma2', .*\), got 'l2'$"),
        ({"time_sampling": "sobol"}, r"^time_sampling must be one of \('uniform', .*\), got 'sobol'$"),
    ],
)
def test_train_config_names_the_bad_value(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"target": "score_x0"}, r"^target must be one of \('score', 'eps', 'x0', 'v'\), got 'score_x0'$"),
        ({"target": "x0", "weighting": "likelihood"}, r"^target='x0' fixes the loss's weight .* got "
                                                       r"weighting='likelihood', time_sampling='uniform'$"),
        ({"target": "eps", "weighting": "likelihood", "time_sampling": "importance"}, "time_sampling='importance'"),
        ({"target": "v", "objective": "flow_matching"}, r"^target='v' is a DSM target: it needs objective='dsm'"),
    ],
)  # fmt: skip
def test_train_config_refuses_a_target_with_another_weight(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_each_dsm_target_trains_with_its_own_loss(tmp_path, monkeypatch, target):
    """Two steps with TrainConfig.target: the loss the Trainer logs (and steps on) is dsm_loss(target=...)'s,
    which is the squared error of that prediction, recomputed here from the same t and noise:
    eps_hat = -sigma s, x0_hat = (x_t + sigma^2 s) / alpha, v_hat = alpha eps_hat - sigma x0_hat."""
    import scoresde.train as train_module

    sde = sd.VPSDE()
    torch.manual_seed(0)
    model = sd.EpsilonScore(sd.nn.MLP(dim=2, hidden=16, depth=1), sde)
    seen = []

    def spy(model, sde, x0, *, target=None, weighting=None, generator=None, **kw):
        assert weighting is None  # the target fixes the weight
        t = sd.losses.sample_time(sde, x0.shape[0], generator=generator, dtype=x0.dtype)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        loss = sd.dsm_loss(model, sde, x0, target=target, t=t, **{**kw, "noise": eps})
        alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        x_t = alpha * x0 + sigma * eps
        with torch.no_grad():
            s = model(x_t, t)
        eps_hat, x0_hat = -sigma * s, (x_t + sigma**2 * s) / alpha
        pred, truth = {"eps": (eps_hat, eps), "x0": (x0_hat, x0),
                       "v": (alpha * eps_hat - sigma * x0_hat, alpha * eps - sigma * x0)}[target]  # fmt: skip
        seen.append((target, loss.item(), (pred - truth).square().mean().item()))
        return loss

    monkeypatch.setattr(train_module, "dsm_loss", spy)
    before = params(model)
    trainer = Trainer(model, sde, torch.randn(64, 2), out_dir=tmp_path, steps=2, batch_size=16, warmup_steps=0,
                      device="cpu", target=target)  # fmt: skip
    result = trainer.train()
    assert trainer.hparams["target"] == target and [t for t, _, _ in seen] == [target, target]
    assert result.losses == pytest.approx([loss for _, loss, _ in seen], rel=1e-6)
    assert [loss for _, loss, _ in seen] == pytest.approx([direct for _, _, direct in seen], rel=1e-5)
    assert not torch.equal(params(model), before)  # it trained


def test_train_config_is_the_one_list_of_training_defaults(tmp_path):
    defaults = TrainConfig()
    assert (defaults.lr, defaults.warmup_steps, defaults.checkpoint_every) == (1e-3, 200, 500)
    assert DEFAULT_CONFIG["train"] == defaults.as_dict()  # the config file's [train] table

    def trainer(**kw):
        sde = sd.VPSDE()
        model = sd.EpsilonScore(sd.nn.MLP(dim=2, hidden=8, depth=1), sde)
        return Trainer(model, sde, torch.randn(128, 2), out_dir=tmp_path, device="cpu", **kw)

    plain = trainer()
    assert plain.settings == defaults and plain.hparams == defaults.as_dict()
    check_plain(plain.hparams)  # what a checkpoint stores under "trainer"
    custom = TrainConfig(steps=5, lr=1)  # ints pass for floats and are stored as floats
    assert custom.lr == 1.0 and isinstance(custom.lr, float)
    with pytest.raises(AttributeError):
        custom.lr = 2.0  # frozen: a setting cannot change after its check
    overridden = trainer(settings=custom, lr=5e-4, batch_size=16)  # keywords set single fields
    assert overridden.settings == TrainConfig(steps=5, lr=5e-4, batch_size=16)
    assert overridden.optimizer.param_groups[0]["lr"] == 5e-4


def test_the_evaluation_grid_is_the_probability_flow_solve_of_sample_ode_and_decode(tmp_path):
    trainer = make_trainer(tmp_path, steps=1, num_grid_samples=3)
    record = trainer.train().evaluations[-1]
    g = torch.Generator().manual_seed(_stream_seed(trainer.settings.seed, 0, 2))
    z = trainer.sde.prior_sample((3, *TRAIN.image_shape), generator=g)
    with torch.no_grad():
        ode = sd.sample_ode(trainer.ema.module, trainer.sde, x_init=z, method="dopri5", rtol=1e-3, atol=1e-3)
        dec = sd.decode(trainer.ema.module, trainer.sde, z, rtol=1e-3, atol=1e-3)
    assert record["sample_nfe"] == ode.nfe == dec.nfe  # decode's solve, as evaluate used before
    assert torch.equal(ode.x, dec.x)
