import json
import re

import pytest
import torch

from scoresde.cli import main

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
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir / "run", run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert "trained to step 4" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--steps", "5"]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sampler", "extra"),
    [("pc", ["--steps", "3"]), ("ode", ["--rtol", "1e-2"]), ("ode", ["--method", "dpmpp_2m", "--steps", "3"]),
     ("sde", ["--steps", "3"])],
)  # fmt: skip
def test_sample(run_dir, tmp_path, capsys, sampler, extra):
    args = ["sample", "--checkpoint", str(run_dir / "run" / "checkpoint.pt"), "--sampler", sampler, "--num", "5",
            "--out", str(tmp_path), "--device", "cpu", *extra]  # fmt: skip
    assert main(args) == 0
    saved = torch.load(tmp_path / f"{sampler}_seed0.pt", weights_only=True)
    assert saved["x"].shape == (5, 1, 8, 8) and saved["levels"].dtype == torch.uint8 and saved["nfe"] > 0
    assert (tmp_path / f"{sampler}_seed0.png").stat().st_size > 100
    assert f"5 samples ({sampler}, NFE {saved['nfe']})" in capsys.readouterr().out
    assert main(args) == 0
    assert torch.equal(torch.load(tmp_path / f"{sampler}_seed0.pt", weights_only=True)["x"], saved["x"])  # seeded


def test_likelihood(run_dir, tmp_path, capsys):
    out = tmp_path / "bpd.json"
    args = ["likelihood", "--checkpoint", str(run_dir / "run" / "checkpoint.pt"), "--num-images", "3", "--rtol", "1e-2",
            "--json", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["images"] == 3 and record["bpd"] > 0 and record["nfe"] > 0 and record["split"] == "test"
    assert capsys.readouterr().out.startswith(f"test bits/dim: {record['bpd']:.4f} ± ")


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
        ("", ["--sde", "ou"], "config key sde.name must be 'vp', 'subvp' or 've', got 'ou'"),
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


def test_bench_subcommand_reaches_the_harness(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "usage: scoresde bench" in capsys.readouterr().out
