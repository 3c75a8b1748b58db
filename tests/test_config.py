import pytest
import torch

import scoresde as sd
from scoresde.checkpoint import checkpoint_mismatch
from scoresde.config import DEFAULT_CONFIG, build_sde, load_config

T = torch.tensor([1e-3, 0.3, 0.9])


def sde_section(**kw):
    return {**DEFAULT_CONFIG["sde"], **kw}


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_build_sde_passes_the_beta_schedule_to_vp_and_subvp(name):
    cls = {"vp": sd.VPSDE, "subvp": sd.SubVPSDE}[name]
    for schedule, expected in (("cosine", cls(schedule="cosine")), ("linear", cls(0.2, 10.0, schedule="linear"))):
        sde = build_sde(sde_section(name=name, schedule=schedule, beta_min=0.2, beta_max=10.0))
        assert type(sde) is cls and repr(sde) == repr(expected)
        assert torch.equal(sde.sigma(T), expected.sigma(T))
    assert not torch.equal(build_sde(sde_section(name=name, schedule="cosine")).sigma(T), cls().sigma(T))
    with pytest.raises(ValueError, match="schedule must be 'linear' or 'cosine', got 'quadratic'"):
        build_sde(sde_section(name=name, schedule="quadratic"))


def test_load_config_checks_the_train_section_as_a_train_config():
    with pytest.raises(ValueError, match=r"^config key train.lr must be a finite number > 0, got 0.0$"):
        load_config(None, {"train": {"lr": 0.0}})
    with pytest.raises(ValueError, match=r"^config key train.lr_schedule must be one of \('constant', 'cosine'\)"):
        load_config(None, {"train": {"lr_schedule": "step"}})
    with pytest.raises(ValueError, match=r"^config key train.steps must be int, got 'many'$"):  # the type, first
        load_config(None, {"train": {"steps": "many"}})
    assert load_config(None, {"train": {"lr": 3e-4}})["train"]["lr"] == 3e-4


def test_checkpoint_mismatch_is_one_line():
    message = "checkpoint c.pt does not fit this model: it has no 'ema' entry"
    assert str(checkpoint_mismatch("c.pt", KeyError("ema"))) == message
    err = RuntimeError("Error(s) in loading state_dict for UNet:\n\tsize mismatch for a.weight\n\tsize mismatch for b")
    assert str(checkpoint_mismatch("c.pt", err, "the U-Net")) == (
        "checkpoint c.pt does not fit the U-Net: size mismatch for a.weight (and 1 more)"
    )
