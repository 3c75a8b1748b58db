import pytest
import torch

import scoresde as sd
from scoresde.data import ring_mixture
from scoresde.metrics import relative_score_error


@pytest.mark.timeout(240)
def test_short_training_learns_the_mixture_score():
    """An MLP trained for 1000 steps on an 8-mode ring gets the score of p_t to within a
    relative squared L2 error of 2% at t = 0.25 and 0.5 (measured: 0.5% and 0.1%). Smaller t
    needs longer training: the error at t = 0.1 stays near 30% until about 3000 steps."""
    torch.manual_seed(0)
    sde, gmm = sd.VPSDE(), ring_mixture()
    model = sd.EpsilonScore(sd.nn.MLP(dim=2, hidden=128, depth=3), sde)
    gen = torch.Generator().manual_seed(0)
    result = sd.fit(model, sde, lambda n, g: gmm.sample(n, generator=g), steps=1000, batch_size=256, generator=gen)
    assert sum(result.losses[-100:]) < sum(result.losses[:100])
    for t in (0.25, 0.5):
        x = gmm.marginal(sde, t).sample(4096, generator=gen)
        err = relative_score_error(model, gmm.score_fn(sde), x, torch.full((len(x),), t))
        assert err < 0.02, f"t={t}: relative score error {err:.4f}"


def test_fit_from_a_tensor_reduces_the_loss():
    torch.manual_seed(1)
    sde = sd.VESDE(sigma_max=5.0)
    data = ring_mixture().sample(512, generator=torch.Generator().manual_seed(1))
    model = sd.EpsilonScore(sd.nn.MLP(dim=2, hidden=64, depth=2), sde)
    result = sd.fit(model, sde, data, steps=300, batch_size=128, generator=torch.Generator().manual_seed(2))
    assert len(result.losses) == 300
    assert sum(result.losses[-50:]) < sum(result.losses[:50])


def test_fit_is_reproducible():
    def run():
        torch.manual_seed(3)
        model = sd.EpsilonScore(sd.nn.MLP(dim=2, hidden=16, depth=1), sd.VPSDE())
        data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
        return sd.fit(model, sd.VPSDE(), data, steps=20, batch_size=16, generator=torch.Generator().manual_seed(4))

    assert run().losses == run().losses


def test_non_finite_loss_stops_with_a_clear_error():
    model = sd.EpsilonScore(sd.nn.MLP(dim=2, hidden=8, depth=1), sd.VPSDE())
    with torch.no_grad():
        model.net.out[1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"the loss became nan at step 1"):
        sd.fit(model, sd.VPSDE(), torch.zeros(8, 2), steps=5, batch_size=4)


@pytest.mark.parametrize(
    ("data", "kwargs", "exc", "match"),
    [
        (torch.zeros(8, 2), {"steps": 0}, ValueError, r"steps must be a positive int, got 0"),
        (torch.zeros(8, 2), {"batch_size": -2}, ValueError, r"batch_size must be a positive int, got -2"),
        (torch.zeros(8, 2), {"generator": 42}, TypeError, r"generator must be a torch.Generator .* got int 42"),
        (torch.zeros(8), {}, ValueError, r"data must be \(n, \*event\) with n >= 1, got shape \(8,\)"),
        (torch.full((8, 2), float("inf")), {}, ValueError, r"data holds NaN or inf"),
        ([1, 2, 3], {}, TypeError, r"data must be a tensor or a callable .* got list"),
        (torch.zeros(8, 2, dtype=torch.long), {}, TypeError,
         r"x0 must be a floating-point tensor, got dtype torch.int64"),
        (torch.zeros(8, 2), {"sde": sd.VESDE()}, ValueError,
         r"the model converts its output with VPSDE\(.* sde=VESDE"),
    ],
)
def test_bad_arguments(data, kwargs, exc, match):
    model = sd.EpsilonScore(sd.nn.MLP(dim=2, hidden=8, depth=1), sd.VPSDE())
    sde = kwargs.get("sde", sd.VPSDE())
    with pytest.raises(exc, match=match):
        sd.fit(model, sde, data, **{k: v for k, v in kwargs.items() if k != "sde"})
