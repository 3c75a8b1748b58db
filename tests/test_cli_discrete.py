"""The command line's discrete-time samplers and variational bounds (issue 16) on a tiny run."""

import json

import pytest
import torch

from scoresde.cli import main
from tests.test_cli import TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    (out / "tiny.toml").write_text(TINY)
    assert main(["train", "--config", str(out / "tiny.toml"), "--out", str(out / "run"), "--no-progress"]) == 0
    return str(out / "run" / "checkpoint.pt")


@pytest.mark.parametrize(
    ("sampler", "extra", "stem", "nfe"),
    [("ddpm", ["--steps", "4"], "ddpm-ddpm-4steps", 4),
     ("ddim", ["--steps", "3", "--eta", "0.5"], "ddim-eta0.5-3steps", 3),
     ("ncsn", ["--steps", "2"], "ncsn-ncsn-2steps", 201)],
)  # fmt: skip
def test_sample_discrete(checkpoint, tmp_path, capsys, sampler, extra, stem, nfe):
    args = ["sample", "--checkpoint", checkpoint, "--sampler", sampler, "--num", "3", "--out", str(tmp_path),
            "--device", "cpu", *extra]  # fmt: skip
    assert main(args) == 0
    saved = torch.load(tmp_path / f"{stem}-n3-seed0-ckpt3.pt", weights_only=True)
    assert saved["x"].shape == (3, 1, 8, 8) and saved["nfe"] == nfe and torch.isfinite(saved["x"]).all()
    assert f"3 samples ({sampler}, NFE {nfe})" in capsys.readouterr().out
    assert main(args) == 0  # seeded: the same samples again
    assert torch.equal(torch.load(tmp_path / f"{stem}-n3-seed0-ckpt3.pt", weights_only=True)["x"], saved["x"])


@pytest.mark.parametrize(("bound", "nfe"), [("elbo", 2 * 2), ("ddpm", 2 * 2)])  # 1 time draw + decoder per batch
def test_likelihood_bound(checkpoint, tmp_path, capsys, bound, nfe):
    out = tmp_path / "bpd.json"
    args = ["likelihood", "--checkpoint", checkpoint, "--num-images", "4", "--batch-size", "2", "--bound", bound,
            "--steps", "5", "--json", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["bound"] == bound and record["images"] == 4 and record["bpd"] > 0 and record["nfe"] == nfe
    assert f"{bound} bound" in capsys.readouterr().out


def test_bad_bound_is_one_line(checkpoint, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["likelihood", "--checkpoint", checkpoint, "--bound", "vlb"])
    assert exc.value.code == 2 and "invalid choice: 'vlb'" in capsys.readouterr().err


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", "4"), ("ddim", "3"), ("ncsn", "2")])
def test_discrete_samples_do_not_depend_on_the_batch_size(checkpoint, tmp_path, sampler, steps):
    """Per-sample seeds (sample_in_shards' indices): 5 samples in batches of 2 are those of one batch of 5, to
    the float32 round-off of the U-Net's batched convolutions (bit for bit with a batch-invariant score:
    test_ddpm); with one generator per batch they would be other draws altogether."""
    args = ["sample", "--checkpoint", checkpoint, "--sampler", sampler, "--steps", steps, "--eta", "1",
            "--num-samples", "5", "--device", "cpu"]  # fmt: skip
    for batch in ("5", "2"):
        assert main([*args, "--batch-size", batch, "--out", str(tmp_path / batch)]) == 0
    (whole,), (parts,) = (list((tmp_path / name).glob("*.pt")) for name in ("5", "2"))
    x_whole, x_parts = (torch.load(path, weights_only=True)["x"] for path in (whole, parts))
    torch.testing.assert_close(x_parts, x_whole, rtol=1e-5, atol=1e-5)
    assert not torch.equal(x_whole[0], x_whole[1])


def test_train_each_target_from_the_command_line(tmp_path, capsys):
    """--target is TrainConfig.target's flag: a 2-step run stores it with the run; a bad value or a clash
    with --weighting is one line, exit code 2, before any work."""
    from scoresde.checkpoint import load_checkpoint
    from tests.test_cli import one_line_error

    (tmp_path / "tiny.toml").write_text(TINY)
    base = ["train", "--config", str(tmp_path / "tiny.toml"), "--steps", "2", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "v"), "--target", "v"]) == 0
    state = load_checkpoint(tmp_path / "v" / "checkpoint.pt")
    assert state["trainer"]["target"] == "v" and state["step"] == 2
    bad = ((["--target", "score_v"], "target must be one of"),
           (["--target", "x0", "--weighting", "likelihood"], "target='x0' fixes the loss's weight"))  # fmt: skip
    for flags, message in bad:
        assert main([*base, "--out", str(tmp_path / "bad"), *flags]) == 2
        assert message in one_line_error(capsys, "scoresde train: error:")[-1]
        assert not (tmp_path / "bad" / "checkpoint.pt").exists()
