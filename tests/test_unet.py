import pytest
import torch

import scoresde as sd
from scoresde.nn import UNet


def tiny(**kw):
    args = {"channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1, "attention_levels": (1,), "dropout": 0.0}
    return UNet(**{**args, **kw})


def randomize(net):
    """Move the zero-initialised layers away from zero so the output depends on the input."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize(
    ("shape", "kw"),
    [
        ((3, 1, 8, 8), {}),
        ((2, 1, 16, 16), {"channel_mults": (1, 2, 2), "attention_levels": (1, 2)}),
        ((2, 1, 12, 20), {}),
        ((2, 3, 32, 32), {"in_channels": 3, "channel_mults": (1, 1, 2, 2), "num_heads": 2}),
        ((1, 1, 5, 7), {"channel_mults": (1,), "attention_levels": (0,)}),
    ],
)
@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
def test_output_shape_equals_input_shape(shape, kw, embedding):
    net = randomize(tiny(embedding=embedding, **kw))
    x = torch.randn(shape)
    out = net(x, torch.rand(shape[0]))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_starts_at_zero_and_follows_dtype():
    net = tiny()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(net(x, torch.rand(2)), torch.zeros_like(x))  # zero-init output layer
    net64 = randomize(tiny()).double()
    assert net64(x.double(), torch.rand(2, dtype=torch.float64)).dtype == torch.float64


def test_class_conditioning_and_null_label():
    net = randomize(tiny(num_classes=10))
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    y = torch.tensor([0, 3, 3, 9])
    out = net(x, t, y)
    assert not torch.allclose(out, net(x, t, torch.tensor([1, 3, 3, 9])))
    assert torch.allclose(out[1:3], net(x[1:3], t[1:3], y[1:3]), atol=1e-6)  # per-sample, batch-independent
    assert net.null_label == 10
    assert torch.equal(net(x, t), net(x, t, torch.full((4,), net.null_label)))
    with pytest.raises(ValueError, match=r"y must be \(batch,\) integer labels"):
        net(x, t, torch.zeros(4))
    with pytest.raises(ValueError, match="not class-conditional"):
        tiny()(x, t, y)


def test_trains_as_an_epsilon_score_model():
    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = sd.EpsilonScore(tiny(), sde)
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = sd.dsm_loss(model, sde, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"channels": 0}, "channels must be a positive int, got 0"),
        ({"channel_mults": ()}, "channel_mults must be a non-empty sequence"),
        ({"attention_levels": (2,)}, r"attention_levels must be level indices in \[0, 1\], got \(2,\)"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"num_classes": 0}, "num_classes must be a positive int or None, got 0"),
        ({"num_heads": 3}, "attention channels 16 are not divisible by num_heads=3"),
        ({"embedding": "learned"}, "time embedding must be 'fourier' or 'sinusoidal'"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_bad_inputs():
    net = tiny(channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match=r"image size 6x8 is not divisible by 4"):
        net(torch.randn(1, 1, 6, 8), torch.rand(1))
    with pytest.raises(ValueError, match=r"needs x of shape \(batch, 1, H, W\), got \(1, 3, 8, 8\)"):
        net(torch.randn(1, 3, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match=r"t must be a \(batch,\) tensor with batch=2"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))
