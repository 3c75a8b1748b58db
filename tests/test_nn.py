import pytest
import torch

import scoresde as sd
from scoresde.nn import GaussianFourierEmbedding, SinusoidalEmbedding


@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
@pytest.mark.parametrize("event", [(2,), (16,), (1, 8, 8)])
def test_mlp_shapes(event, embedding):
    d = 1
    for n in event:
        d *= n
    net = sd.nn.MLP(dim=d, hidden=32, depth=2, embedding=embedding)
    x = torch.randn(5, *event)
    assert net(x, torch.rand(5)).shape == x.shape
    net64 = net.double()
    out = net64(x.double(), torch.rand(5, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_time_embedding_depends_on_t():
    for emb in (GaussianFourierEmbedding(16), SinusoidalEmbedding(16)):
        out = emb(torch.tensor([0.1, 0.2]))
        assert out.shape == (2, 16)
        assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: sd.nn.MLP(dim=0), r"dim must be a positive int, got 0"),
        (lambda: sd.nn.MLP(dim=2, depth=-1), r"depth must be a positive int, got -1"),
        (lambda: sd.nn.MLP(dim=2, embedding="learned"), r"'fourier' or 'sinusoidal', got 'learned'"),
        (lambda: GaussianFourierEmbedding(7), r"embedding dim must be even, got 7"),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_input_size():
    with pytest.raises(ValueError, match=r"MLP\(dim=2\) got x of shape \(3, 5\)"):
        sd.nn.MLP(dim=2)(torch.zeros(3, 5), torch.zeros(3))
