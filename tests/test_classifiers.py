"""Classifier checkpoints (scoresde.classifiers) and the command's classifier guidance:
`train-classifier --checkpoint RUN --out CLF` and `sample --class K --guidance S --classifier CLF`."""

import pytest
import torch

import scoresde as sd
from scoresde.checkpoint import CheckpointError, load_checkpoint
from scoresde.classifiers import build_classifier, load_classifier, save_classifier
from scoresde.cli import main

from .test_cli import TINY

VP = {"name": "vp", "schedule": "linear", "beta_min": 0.1, "beta_max": 20.0, "sigma_min": 0.01, "sigma_max": 50.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An unconditional tiny run, a classifier trained on its data, and a VE run beside them."""
    out = tmp_path_factory.mktemp("clf")
    (out / "tiny.toml").write_text(TINY)
    for name, extra in (("vp", []), ("ve", ["--sde", "ve"])):
        args = ["train", "--config", str(out / "tiny.toml"), "--out", str(out / name), "--no-progress", *extra]
        assert main(args) == 0
    clf = out / "clf.pt"
    args = ["train-classifier", "--checkpoint", str(out / "vp" / "checkpoint.pt"), "--out", str(clf), "--steps", "150",
            "--hidden", "32", "--depth", "1", "--batch-size", "64", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return out


def test_train_classifier_writes_a_weights_only_file_of_plain_values(runs):
    state = torch.load(runs / "clf.pt", weights_only=True)
    assert state["kind"] == "noisy-classifier" and state["num_classes"] == 10
    assert state["network"] == {"name": "ClassifierMLP", "dim": 64, "hidden": 32, "depth": 1}
    assert state["sde"]["name"] == "vp" and state["time_range"] == [1e-5, 1.0] and state["event_shape"] == [1, 8, 8]
    assert state["info"]["steps"] == 150 and state["info"]["run_step"] == 3
    loaded = load_classifier(runs / "clf.pt")
    clf = loaded.classifier
    assert isinstance(clf.sde, sd.VPSDE) and clf.time_range == (1e-5, 1.0) and not clf.training
    for key, value in clf.net.state_dict().items():  # the weights round-trip exactly
        assert torch.equal(value, state["weights"][key])


def test_trained_classifier_beats_chance_on_clean_digits(runs):
    from scoresde.config import load_data

    clf = load_classifier(runs / "clf.pt").classifier
    data = load_data({"name": "digits", "root": "", "download": False}, "test")
    x = data.to_model(data.levels, dequantize=False)
    with torch.no_grad():
        accuracy = (clf(x, 1e-3).argmax(1) == data.labels).float().mean().item()
    assert accuracy > 0.5  # 150 steps of a tiny MLP; chance is 0.1


def test_save_load_round_trip_and_its_errors(tmp_path):
    net = {"dim": 2, "hidden": 16, "depth": 1}
    clf = build_classifier(net, 3, VP)
    path = save_classifier(clf, tmp_path / "c.pt", network=net, sde_config=VP, event_shape=(2,), info={"a": 1})
    loaded = load_classifier(path)
    x = torch.randn(5, 2)
    assert torch.equal(loaded.classifier(x, 0.3), clf(x, 0.3)) and loaded.info == {"a": 1}
    with pytest.raises(ValueError, match=r"sde_config .* builds VESDE.*not the classifier's VPSDE"):
        save_classifier(clf, tmp_path / "d.pt", network=net, sde_config={**VP, "name": "ve"}, event_shape=(2,))
    with pytest.raises(ValueError, match="classifier network must be 'ClassifierMLP', got 'UNet'"):
        build_classifier({**net, "name": "UNet"}, 3, VP)
    state = load_checkpoint(path)
    state["weights"].pop("inp.weight")
    sd.checkpoint.save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit the classifier its config describes"):
        load_classifier(tmp_path / "bad.pt")


def test_sample_with_classifier_guidance_moves_samples_towards_the_class(runs, tmp_path, capsys):
    base = ["sample", "--checkpoint", str(runs / "vp" / "checkpoint.pt"), "--sampler", "ode", "--method", "heun",
            "--steps", "4", "--num", "4", "--out", str(tmp_path), "--device", "cpu", "--class", "3"]  # fmt: skip
    assert main([*base, "--guidance", "0", "--classifier", str(runs / "clf.pt")]) == 0
    assert main([*base, "--guidance", "5", "--classifier", str(runs / "clf.pt")]) == 0
    plain = torch.load(tmp_path / "ode-heun-4steps-class3-s0-clf_clf-n4-seed0-ckpt3.pt", weights_only=True)
    guided = torch.load(tmp_path / "ode-heun-4steps-class3-s5-clf_clf-n4-seed0-ckpt3.pt", weights_only=True)
    assert guided["classifier"] == "clf" and guided["label"] == 3 and guided["guidance"] == 5.0
    assert guided["nfe"] == plain["nfe"] == 8 and not torch.equal(guided["x"], plain["x"])  # heun: 2 per step
    clf = load_classifier(runs / "clf.pt").classifier
    with torch.no_grad():  # guidance raises the classifier's log p(3 | x) at the end of the solve
        log_p = [torch.log_softmax(clf(r["x"], 1e-3), 1)[:, 3].mean() for r in (plain, guided)]
    assert log_p[1] > log_p[0]


def test_classifier_guidance_errors_are_one_line(runs, tmp_path, capsys):
    def fails(checkpoint, *extra):
        args = ["sample", "--checkpoint", str(checkpoint), "--sampler", "pc", "--steps", "2", "--num", "2",
                "--out", str(tmp_path), "--device", "cpu", *extra]  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        return err

    clf = str(runs / "clf.pt")
    vp, ve = runs / "vp" / "checkpoint.pt", runs / "ve" / "checkpoint.pt"
    assert "label 10 is outside [0, 10) (num_classes=10)" in fails(vp, "--class", "10", "--classifier", clf)
    assert "label -1 is outside [0, 10)" in fails(vp, "--class", "-1", "--classifier", clf)
    assert f"classifier {clf} was trained under VPSDE(beta_min=0.1" in fails(ve, "--class", "1", "--classifier", clf)
    err = fails(vp, "--class", "1", "--guidance", "2")
    assert "classifier-free guidance needs a class-conditional model, but EpsilonScore has no classes" in err
    assert "--classifier CKPT" in err
    assert f"--classifier {clf} needs --class K" in fails(vp, "--classifier", clf)
    assert "is not a classifier checkpoint" in fails(vp, "--class", "1", "--classifier", str(vp))


def test_classifier_of_other_classes_than_a_conditional_model_is_refused(runs, tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY.replace("steps = 3", "steps = 1"))
    train = ["train", "--config", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "run"), "--conditional",
             "--no-progress"]  # fmt: skip
    assert main(train) == 0
    three = build_classifier({"dim": 64, "hidden": 8, "depth": 1}, 3, VP)
    path = save_classifier(three, tmp_path / "three.pt", network={"dim": 64, "hidden": 8, "depth": 1}, sde_config=VP,
                           event_shape=(1, 8, 8))  # fmt: skip
    capsys.readouterr()
    args = ["sample", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--sampler", "pc", "--steps", "2",
            "--num", "2", "--out", str(tmp_path), "--device", "cpu", "--class", "1",
            "--classifier", str(path)]  # fmt: skip
    assert main(args) == 2
    assert f"classifier {path} has 3 classes, the model 10" in capsys.readouterr().err


def test_train_classifier_refuses_a_run_file_that_is_not_there(tmp_path, capsys):
    assert main(["train-classifier", "--checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"]) == 2
    assert "none.pt not found" in capsys.readouterr().err


def test_load_classifier_refuses_a_wrong_time_range(tmp_path):
    net = {"dim": 2, "hidden": 8, "depth": 1}
    path = save_classifier(build_classifier(net, 2, VP), tmp_path / "c.pt", network=net, sde_config=VP,
                           event_shape=(2,))  # fmt: skip
    state = load_checkpoint(path)
    state["time_range"] = [1e-3, 1.0]
    sd.checkpoint.save_checkpoint({k: v for k, v in state.items() if k != "format"}, path)
    with pytest.raises(CheckpointError, match=r"records the time range \(0.001, 1.0\), but its SDE"):
        load_classifier(path)
