import pytest
import torch
from torch import nn

import scoresde as sd

from .conftest import mixture


class Oracle(nn.Module):
    """A 'network' that outputs the exact target of one parameterisation."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x, t):
        return self.target(x, t)


@pytest.mark.parametrize("event", [(2,), (1, 2, 2)])
def test_every_parameterisation_recovers_the_exact_score(sde, event):
    d = 1
    for n in event:
        d *= n
    base = mixture(d)
    gmm = sd.GaussianMixture(base.means, base.covs, base.weights, event_shape=event)
    score = gmm.score_fn(sde)
    denoise = gmm.denoiser_fn(sde)

    def coefs(x, t):
        return sde.alpha(t).view(-1, *[1] * len(event)), sde.sigma(t).view(-1, *[1] * len(event))

    def eps(x, t):
        return -coefs(x, t)[1] * score(x, t)

    def velocity(x, t):
        a, s = coefs(x, t)
        return a * eps(x, t) - s * denoise(x, t)

    x = gmm.marginal(sde, 0.3 * sde.T).sample(16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64) * sde.T
    for adapter, target in [
        (sd.DirectScore, score),
        (sd.EpsilonScore, eps),
        (sd.DataScore, denoise),
        (sd.VelocityScore, velocity),
    ]:
        got = adapter(Oracle(target), sde)(x, t)
        torch.testing.assert_close(got, score(x, t), rtol=1e-9, atol=1e-9, msg=adapter.__name__)


def test_adapter_parameters_are_the_nets():
    net = sd.nn.MLP(dim=2)
    model = sd.EpsilonScore(net, sd.VPSDE())
    assert list(model.parameters()) == list(net.parameters())


def test_adapter_errors():
    with pytest.raises(TypeError, match=r"EpsilonScore needs a LinearSDE \(alpha, sigma\), got str"):
        sd.EpsilonScore(nn.Identity(), "vp")
    model = sd.EpsilonScore(Oracle(lambda x, t: x[:, :1]), sd.VPSDE())
    with pytest.raises(ValueError, match=r"net output shape \(3, 1\) differs from input shape \(3, 2\)"):
        model(torch.zeros(3, 2), 0.5)


def test_adapters_check_number_times_and_states():
    model = sd.EpsilonScore(Oracle(lambda x, t: x), sd.VPSDE())
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1.0\], got 2.0"):
        model(torch.zeros(4, 2), 2.0)
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor, got dtype torch.int64"):
        model(torch.zeros(4, 2, dtype=torch.long), 0.5)
