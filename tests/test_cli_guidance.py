"""The command's guidance paths: `train --conditional`, `sample --class K --guidance S`, `sample --inpaint MASK`."""

import pytest
import torch

from scoresde.cli import main
from scoresde.guidance import image_mask

from .test_cli import TINY


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("conditional")
    (out / "tiny.toml").write_text(TINY)
    args = ["train", "--config", str(out / "tiny.toml"), "--out", str(out / "run"), "--conditional",
            "--label-dropout", "0.2", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    return out / "run" / "checkpoint.pt"


def test_train_conditional_records_the_classes_and_sample_guides(conditional_run, tmp_path, capsys):
    state = torch.load(conditional_run, weights_only=True)
    assert state["num_classes"] == 10 and state["config"]["model"]["conditional"] is True
    assert state["trainer"]["label_dropout"] == 0.2
    base = ["sample", "--checkpoint", str(conditional_run), "--sampler", "ode", "--method", "heun", "--steps", "3",
            "--num", "4", "--out", str(tmp_path), "--device", "cpu"]  # fmt: skip
    assert main([*base, "--class", "3", "--guidance", "2"]) == 0
    saved = torch.load(tmp_path / "ode-heun-3steps-class3-s2-n4-seed0-ckpt3.pt", weights_only=True)
    assert saved["x"].shape == (4, 1, 8, 8) and saved["label"] == 3 and saved["guidance"] == 2.0
    assert main([*base, "--class", "3"]) == 0  # s = 1: the conditional model alone, other files
    assert (tmp_path / "ode-heun-3steps-class3-s1-n4-seed0-ckpt3.png").is_file()
    capsys.readouterr()
    assert main([*base, "--class", "10"]) == 2
    assert "label 10 is outside [0, 10) (num_classes=10)" in capsys.readouterr().err
    assert main([*base, "--guidance", "2"]) == 2
    assert "--guidance 2 needs --class K" in capsys.readouterr().err


def test_guidance_on_an_unconditional_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY.replace("steps = 3", "steps = 1"))
    train = ["train", "--config", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(train) == 0
    capsys.readouterr()
    args = ["sample", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--steps", "2", "--sampler", "pc",
            "--num", "2", "--out", str(tmp_path), "--device", "cpu", "--class", "1", "--guidance", "3"]  # fmt: skip
    assert main(args) == 2
    assert "classifier-free guidance needs a class-conditional model, but EpsilonScore has no classes" in (
        capsys.readouterr().err
    )


def test_sample_inpaint_keeps_the_observed_half_of_test_images(conditional_run, tmp_path):
    from scoresde.config import load_data, load_run

    args = ["sample", "--checkpoint", str(conditional_run), "--sampler", "pc", "--steps", "3", "--num", "3",
            "--out", str(tmp_path), "--device", "cpu", "--inpaint", "bottom"]  # fmt: skip
    assert main(args) == 0
    saved = torch.load(tmp_path / "pc-langevin-snr0.16-3steps-inpaintbottom-n3-seed0-ckpt3.pt", weights_only=True)
    run = load_run(conditional_run)
    test = load_data(run.config["data"], "test")
    mask = image_mask(run.event_shape, "bottom")
    assert torch.equal(saved["levels"][:, mask], test.levels[:3][:, mask].to(saved["levels"].dtype))
    assert main([*args[:4], "sde", *args[5:]]) == 2


def test_image_mask_halves():
    mask = image_mask((1, 4, 6), "right")
    assert mask.dtype == torch.bool and mask.shape == (1, 4, 6)
    assert mask[..., :3].all() and not mask[..., 3:].any()
    assert image_mask((4, 4), "top")[2:].all() and not image_mask((4, 4), "top")[:2].any()
    with pytest.raises(ValueError, match=r"the region to inpaint must be one of \('top', 'bottom', 'left', 'right'\)"):
        image_mask((1, 4, 4), "middle")
