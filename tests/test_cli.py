import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde import cli
from scoresde.checkpoint import load_checkpoint, save_checkpoint
from scoresde.cli import main
from scoresde.train import TrainConfig, Trainer

TINY = """
[model]
channels = 8
channel_mults = [1, 2]
num_res_blocks = 1
dropout = 0.0

[train]
steps = 3
batch_size = 32
warmup_steps = 0
num_eval_images = 4
num_grid_samples = 4
log_every = 1
checkpoint_every = 2

[run]
device = "cpu"
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny training run shared by the sample and likelihood tests."""
    out = tmp_path_factory.mktemp("run")
    (out / "tiny.toml").write_text(TINY)
    assert main(["train", "--config", str(out / "tiny.toml"), "--out", str(out / "run"), "--no-progress"]) == 0
    return out


def test_train_writes_checkpoint_metrics_and_grid(run_dir, capsys):
    run = run_dir / "run"
    assert (run / "checkpoint.pt").is_file() and (run / "samples" / "step_0000003.png").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert records[-1]["kind"] == "eval" and records[-1]["bpd_images"] == 4
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["config"]["model"]["channels"] == 8 and state["config"]["train"]["steps"] == 3


def test_train_resume_extends_the_run(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir / "run", run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert "trained to step 4" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--steps", "5"]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sampler", "extra", "stem"),
    [("pc", ["--steps", "3"], "pc-langevin-snr0.16-3steps"), ("ode", ["--rtol", "1e-2"], "ode-dopri5-rtol0.01"),
     ("ode", ["--method", "dpmpp_2m", "--steps", "3"], "ode-dpmpp_2m-3steps"),
     ("sde", ["--steps", "3"], "sde-euler_maruyama-3steps")],
)  # fmt: skip
def test_sample(run_dir, tmp_path, capsys, sampler, extra, stem):
    args = ["sample", "--checkpoint", str(run_dir / "run" / "checkpoint.pt"), "--sampler", sampler, "--num", "5",
            "--out", str(tmp_path), "--device", "cpu", *extra]  # fmt: skip
    assert main(args) == 0
    stem = f"{stem}-n5-seed0-ckpt3"
    saved = torch.load(tmp_path / f"{stem}.pt", weights_only=True)
    assert saved["x"].shape == (5, 1, 8, 8) and saved["levels"].dtype == torch.uint8 and saved["nfe"] > 0
    assert saved["sampler"] == sampler and saved["step"] == 3 and saved["num"] == 5 and saved["ema"] is True
    assert (tmp_path / f"{stem}.png").stat().st_size > 100
    assert f"5 samples ({sampler}, NFE {saved['nfe']})" in capsys.readouterr().out
    assert main(args) == 0
    assert torch.equal(torch.load(tmp_path / f"{stem}.pt", weights_only=True)["x"], saved["x"])  # seeded
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.png", f"{stem}.pt"]


def test_samples_with_other_settings_do_not_overwrite_each_other(run_dir, tmp_path):
    base = ["sample", "--checkpoint", str(run_dir / "run" / "checkpoint.pt"), "--sampler", "sde", "--steps", "2",
            "--num", "2", "--out", str(tmp_path), "--device", "cpu"]  # fmt: skip
    for extra in ([], ["--steps", "3"], ["--seed", "1"], ["--num", "3"], ["--no-ema"], ["--method", "srk"]):
        assert main([*base, *extra]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [
        "sde-euler_maruyama-2steps-n2-seed0-ckpt3-raw.pt", "sde-euler_maruyama-2steps-n2-seed0-ckpt3.pt",
        "sde-euler_maruyama-2steps-n2-seed1-ckpt3.pt", "sde-euler_maruyama-2steps-n3-seed0-ckpt3.pt",
        "sde-euler_maruyama-3steps-n2-seed0-ckpt3.pt", "sde-srk-2steps-n2-seed0-ckpt3.pt",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--steps", "0"], "argument --steps: must be a positive int, got 0"),
     (["--sampler", "sde", "--steps", "-3"], "argument --steps: must be a positive int, got -3"),
     (["--num", "0"], "argument --num/--num-samples: must be a positive int, got 0"),
     (["--steps", "1.5"], "argument --steps: expected a positive int, got '1.5'")],
)  # fmt: skip
def test_sample_steps_and_num_must_be_positive(run_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--checkpoint", str(run_dir / "run" / "checkpoint.pt"), "--out", str(tmp_path), *flags])
    assert exc.value.code == 2
    one_line_error(capsys, f"scoresde sample: error: {message}")
    assert list(tmp_path.iterdir()) == []


def test_likelihood(run_dir, tmp_path, capsys):
    out = tmp_path / "bpd.json"
    args = ["likelihood", "--checkpoint", str(run_dir / "run" / "checkpoint.pt"), "--num-images", "3", "--rtol", "1e-2",
            "--json", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["images"] == 3 and record["bpd"] > 0 and record["nfe"] > 0 and record["split"] == "test"
    assert record["divergence"] == "hutchinson"
    assert capsys.readouterr().out.startswith(f"test bits/dim: {record['bpd']:.4f} ± ")


def test_likelihood_divergence_flag_and_its_old_spelling(run_dir, tmp_path, capsys):
    args = ["likelihood", "--checkpoint", str(run_dir / "run" / "checkpoint.pt"), "--num-images", "2", "--rtol", "1e-2",
            "--device", "cpu"]  # fmt: skip
    records = {}
    for flag in ("--divergence", "--estimator"):
        assert main([*args, flag, "exact", "--json", str(tmp_path / f"{flag}.json")]) == 0
        records[flag] = json.loads((tmp_path / f"{flag}.json").read_text())
        captured = capsys.readouterr()
        assert "2 images, exact divergence" in captured.out
        note = "scoresde likelihood: note: --estimator is deprecated, use --divergence"
        assert captured.err.strip() == (note if flag == "--estimator" else "")
    assert records["--divergence"]["divergence"] == records["--estimator"]["divergence"] == "exact"
    assert records["--divergence"]["bpd"] == records["--estimator"]["bpd"]
    with pytest.raises(SystemExit):
        main([*args, "--divergence", "hutch"])
    one_line_error(capsys, "scoresde likelihood: error: argument --divergence: invalid choice: 'hutch'")


def _count_checkpoint_reads(monkeypatch, path):
    reads = []
    load = torch.load

    def counting_load(f, *args, **kwargs):
        if Path(f) == Path(path):
            reads.append(f)
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    return reads


@pytest.mark.parametrize("command", ["sample", "likelihood", "train --resume"])
def test_each_command_reads_its_checkpoint_once(run_dir, tmp_path, monkeypatch, command):
    checkpoint = run_dir / "run" / "checkpoint.pt"
    if command == "train --resume":
        shutil.copytree(run_dir / "run", tmp_path / "run")
        checkpoint = tmp_path / "run" / "checkpoint.pt"
        args = ["train", "--resume", str(checkpoint), "--steps", "4", "--no-progress"]
    elif command == "sample":
        args = ["sample", "--checkpoint", str(checkpoint), "--method", "euler", "--steps", "2", "--num", "2", "--out",
                str(tmp_path)]
    else:
        args = ["likelihood", "--checkpoint", str(checkpoint), "--num-images", "1", "--rtol", "1e-2"]
    reads = _count_checkpoint_reads(monkeypatch, checkpoint)
    assert main([*args, "--device", "cpu"] if command != "train --resume" else args) == 0
    assert len(reads) == 1


@pytest.mark.timeout(240)
def test_digits_demo_writes_report(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--steps", "2", "--channels", "8", "--pc-steps", "2", "--eval-images", "2",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    report = (tmp_path / "report.md").read_text()
    assert "test bits/dim" in report and "samples_pc.png" in report and "samples_ode.png" in report
    # two training steps cannot draw digits: both samplers are far above the two-sample floor
    fds = [float(v) for v in re.findall(r"digits FD (\d+)", report)]
    floor = float(re.search(r"64 training images score (\d+)", report)[1])
    assert len(fds) == 2 and floor < min(fds) / 2
    for name in ("samples_pc.png", "samples_ode.png", "data.png", "loss.png"):
        assert (tmp_path / name).stat().st_size > 100


@pytest.mark.timeout(120)
def test_toy_demo_writes_report_and_figure(tmp_path, capsys):
    assert main(["demo", "--toy", "--out", str(tmp_path), "--steps", "50"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Relative squared L2 error" in report and "score_field.png" in report
    assert (tmp_path / "score_field.png").stat().st_size > 1000


def one_line_error(capsys, prefix):
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(prefix), err
    assert "Traceback" not in "\n".join(err)
    return err


def test_bad_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--steps", "many"])
    assert exc.value.code == 2
    one_line_error(capsys, "scoresde demo: error: argument --steps: invalid int value")
    with pytest.raises(SystemExit):
        main(["train", "--channel-mults", "1,x"])
    one_line_error(capsys, "scoresde train: error: argument --channel-mults: expected comma-separated integers")


@pytest.mark.parametrize(
    ("toml", "flags", "message"),
    [
        ("[model]\nwidth = 3\n", [], "unknown config key model.width (known: channels"),
        ("[optim]\nlr = 1\n", [], "unknown config section 'optim'"),
        ("[train]\nsteps = 'many'\n", [], "config key train.steps must be int, got 'many'"),
        ("[train\n", [], "is not valid TOML"),
        ("", ["--sde", "ou"],
         "config key sde.name must be 'vp', 'subvp', 've', 'linear_path' or 'cosine_path', got 'ou'"),
        ("", ["--steps", "0"], "steps must be an int >= 1, got 0"),
        ("", ["--device", "tpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ("", ["--channel-mults", "1,2,2,2,2"], "do not fit 5 U-Net levels"),
        ("", ["--data", "mnist", "--data-root", "/nonexistent"], "not found (pass download=True"),
    ],
)
def test_bad_config_is_one_line(tmp_path, capsys, toml, flags, message):
    (tmp_path / "c.toml").write_text(toml)
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o"), *flags]) == 2
    err = one_line_error(capsys, "scoresde train: error: ")
    assert len(err) == 1 and message in err[0]


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["sample", "--checkpoint", str(bad)]) == 2
    assert one_line_error(capsys, f"scoresde sample: error: cannot read checkpoint {bad}: corrupted or truncated")
    assert main(["likelihood", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    one_line_error(capsys, f"scoresde likelihood: error: checkpoint {tmp_path / 'none.pt'} not found")
    assert main(["train", "--out", str(tmp_path), "--resume"]) == 2
    one_line_error(capsys, "scoresde train: error: --resume: no checkpoint at")


def test_bench_subcommand_reaches_the_harness(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "usage: scoresde bench" in capsys.readouterr().out
    import scoresde.bench

    seen = []
    monkeypatch.setattr(scoresde.bench, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--full", "--only", "sampling", "likelihood"]) == 0
    assert seen == [["--full", "--only", "sampling", "likelihood"]]  # its flags, passed on as given


def test_only_bench_passes_unknown_flags_on(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--toy", "--bogus", "1"])
    assert exc.value.code == 2
    one_line_error(capsys, "scoresde: error: unrecognized arguments: --bogus 1")


def test_train_has_a_flag_for_every_train_config_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = TrainConfig()
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')} {name.upper()}" in text
    assert f"peak learning rate (default {defaults.lr})" in text
    assert f"checkpoint every N steps (0: at the end only) (default {defaults.checkpoint_every})" in text


# ----------------------------------------------------------------------------- output paths, checked first


def _writable(folder):
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot write in: permission bits, or (root ignores them) /sys."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not _writable(folder):
            yield folder
        elif Path("/sys").is_dir() and not _writable("/sys"):
            yield Path("/sys")
        else:
            pytest.skip("no read-only folder to test with")
    finally:
        folder.chmod(0o755)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as loading its data or checkpoint."""

    def work(*args, **kwargs):
        raise AssertionError("the command started its work before checking its output path")

    monkeypatch.setattr(cli, "build_trainer", work)
    monkeypatch.setattr(cli, "load_run", work)


@pytest.mark.parametrize("case", ["train --out FILE", "train --out FILE/sub", "sample --out FILE",
                                  "likelihood --json FILE/x.json", "likelihood --json DIR"])  # fmt: skip
def test_a_bad_output_path_is_one_line_before_any_work(run_dir, tmp_path, capsys, no_work, case):
    file, folder = tmp_path / "file", tmp_path / "folder"
    file.write_text("mine")
    folder.mkdir()
    command, flag, target = case.split()
    target = Path(target.replace("FILE", str(file)).replace("DIR", str(folder)))
    args = [command, flag, str(target)]
    if command != "train":
        args += ["--checkpoint", str(run_dir / "run" / "checkpoint.pt")]
    assert main(args) == 2
    at_fault = "is a folder, not a file" if "DIR" in case else f"{file} is a file, not a folder"
    assert one_line_error(capsys, f"scoresde {command}: error: ") == [
        f"scoresde {command}: error: {flag} {target}{' ' if 'DIR' in case else ': '}{at_fault}"
    ]
    assert file.read_text() == "mine" and list(folder.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "sample", "likelihood", "demo"])
def test_a_read_only_output_folder_is_one_line_before_any_work(run_dir, capsys, no_work, read_only_folder, command):
    target = read_only_folder / "out"
    args = {
        "train": ["train", "--out", str(target)],
        "sample": ["sample", "--checkpoint", str(run_dir / "run" / "checkpoint.pt"), "--out", str(target)],
        "likelihood": ["likelihood", "--checkpoint", str(run_dir / "run" / "checkpoint.pt"), "--json",
                       str(target / "bpd.json")],
        "demo": ["demo", "--out", str(target)],
    }[command]  # fmt: skip
    assert main(args) == 2
    err = one_line_error(capsys, f"scoresde {command}: error: ")
    assert len(err) == 1 and f": cannot write in {read_only_folder} (" in err[0]
    assert not target.exists()


# ----------------------------------------------------------------------------- checkpoints that do not fit


@pytest.mark.parametrize(("key", "value"), [("channels", 16), ("channel_mults", [1, 2, 2])])
def test_a_checkpoint_whose_config_disagrees_with_its_weights_is_one_line(run_dir, tmp_path, capsys, key, value):
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(run_dir / "run" / "checkpoint.pt")
    state["config"]["model"][key] = value
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, path)
    described = {"channels": 8, "channel_mults": [1, 2], key: value}
    for command in ("sample", "likelihood"):
        assert main([command, "--checkpoint", str(path), "--out" if command == "sample" else "--json",
                     str(tmp_path / "out")]) == 2  # fmt: skip
        err = one_line_error(capsys, f"scoresde {command}: error: ")
        assert len(err) == 1 and err[0].startswith(
            f"scoresde {command}: error: checkpoint {path} does not fit the model its config describes (channels "
            f"{described['channels']}, channel_mults {described['channel_mults']}): "
        ), err  # fmt: skip
        assert ("size mismatch for" if key == "channels" else "key(s) in state_dict") in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_resume_with_a_model_that_does_not_fit_is_one_line(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir / "run", run)
    assert main(["train", "--out", str(run), "--resume", "--channels", "16", "--no-progress"]) == 2
    err = one_line_error(capsys, "scoresde train: error: ")
    assert len(err) == 1 and f"checkpoint {run / 'checkpoint.pt'} does not fit this model and trainer: size mismatch" \
        in err[0]  # fmt: skip


def test_resume_from_the_previous_checkpoint_reproduces_the_run(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir / "run", run)
    assert load_checkpoint(run / "checkpoint-previous.pt")["step"] == 2  # checkpoint_every = 2 of 3 steps
    assert main(["train", "--resume", str(run / "checkpoint-previous.pt"), "--no-progress"]) == 0  # --out: its folder
    assert "trained to step 3" in capsys.readouterr().out
    resumed, whole = (load_checkpoint(p / "checkpoint.pt") for p in (run, run_dir / "run"))
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())
    assert load_checkpoint(run / "checkpoint-previous.pt")["step"] == 3  # the one it replaced


# ----------------------------------------------------------------------------- Ctrl-C


def _interrupt_at(monkeypatch, index):
    train_step = Trainer._train_step

    def step(self, i):
        if i == index:
            raise KeyboardInterrupt
        return train_step(self, i)

    monkeypatch.setattr(Trainer, "_train_step", step)


def test_ctrl_c_in_train_says_how_to_resume_and_resuming_matches_the_whole_run(run_dir, tmp_path, capsys,
                                                                               monkeypatch):  # fmt: skip
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 2)  # during the third step, after the checkpoint of step 2
    assert main(["train", "--config", str(run_dir / "tiny.toml"), "--out", str(out), "--no-progress"]) == 130
    err = one_line_error(capsys, "scoresde train: interrupted; ")
    assert err == [
        f"scoresde train: interrupted; stopped after step 2 of 3; the last checkpoint, {out / 'checkpoint.pt'}, is "
        f"of step 2: continue with `scoresde train --out {out} --resume`"
    ]  # fmt: skip
    monkeypatch.undo()
    assert main([*re.search(r"`scoresde (.*)`", err[0])[1].split(), "--no-progress"]) == 0
    resumed, whole = (load_checkpoint(p / "checkpoint.pt") for p in (out, run_dir / "run"))
    assert resumed["step"] == 3 and all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())


def test_ctrl_c_before_the_first_checkpoint(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 1)
    assert main(["train", "--config", str(run_dir / "tiny.toml"), "--out", str(out), "--no-progress"]) == 130
    assert one_line_error(capsys, "scoresde train: interrupted; ") == [
        "scoresde train: interrupted; stopped after step 1 of 3, before the run's first checkpoint: the same command "
        "starts it afresh"
    ]  # fmt: skip
    assert not (out / "checkpoint.pt").exists()


def test_ctrl_c_in_sample_and_likelihood_writes_nothing(run_dir, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "draw_samples", interrupted)
    monkeypatch.setattr(sd, "evaluate_bpd", interrupted)
    checkpoint = str(run_dir / "run" / "checkpoint.pt")
    assert main(["sample", "--checkpoint", checkpoint, "--out", str(tmp_path)]) == 130
    assert one_line_error(capsys, "scoresde sample: ") == ["scoresde sample: interrupted; no samples were written"]
    assert main(["likelihood", "--checkpoint", checkpoint, "--json", str(tmp_path / "bpd.json")]) == 130
    assert one_line_error(capsys, "scoresde likelihood: ") == ["scoresde likelihood: interrupted; nothing was written"]
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_run_is_one_line_and_names_steps_as_the_log_does(run_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", str(run_dir / "tiny.toml"), "--out", str(out), "--lr", "1e6", "--steps", "6",
            "--checkpoint-every", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = one_line_error(capsys, "scoresde train: error: non-finite loss (nan) at step 3: ")
    assert len(err) == 1 and f"resume from the previous one, {out / 'checkpoint-previous.pt'} (step 1)," in err[0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]


def _torchrun_cli(args: list[str], nproc: int) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "scoresde.cli", *args]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.timeout(300)
def test_sample_and_likelihood_under_torchrun_match_one_process(run_dir, tmp_path):
    """torchrun --nproc_per_node=2 (gloo): the same samples, bit for bit (batches cut by index,
    per-sample seeds), and the same per-image bits/dim, written once by rank 0; a second
    likelihood run over the same --resume-dir recomputes nothing and reports the same."""
    checkpoint = str(run_dir / "run" / "checkpoint.pt")
    sample = ["sample", "--checkpoint", checkpoint, "--sampler", "ode", "--method", "dpmpp_2m", "--steps", "4",
              "--num-samples", "6", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    assert main([*sample, "--out", str(tmp_path / "one")]) == 0
    _torchrun_cli([*sample, "--out", str(tmp_path / "two")], 2)
    (one,), (two,) = (list((tmp_path / name).glob("*.pt")) for name in ("one", "two"))
    assert one.name == two.name
    assert torch.equal(torch.load(one, weights_only=True)["x"], torch.load(two, weights_only=True)["x"])
    likelihood = ["likelihood", "--checkpoint", checkpoint, "--num-images", "4", "--batch-size", "2", "--rtol", "1e-2",
                  "--device", "cpu"]  # fmt: skip
    assert main([*likelihood, "--json", str(tmp_path / "one.json")]) == 0
    resume = ["--resume-dir", str(tmp_path / "batches")]
    _torchrun_cli([*likelihood, *resume, "--json", str(tmp_path / "two.json")], 2)
    _torchrun_cli([*likelihood, *resume, "--json", str(tmp_path / "again.json")], 2)
    one_json, two_json, again = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two", "again"))
    assert two_json["bpd"] == one_json["bpd"] and two_json["nfe"] == one_json["nfe"]
    assert again["bpd"] == one_json["bpd"] and len(list((tmp_path / "batches").glob("batch-*.pt"))) == 2
