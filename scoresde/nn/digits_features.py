"""A small classifier of sklearn's 8x8 digits whose penultimate layer is a feature space for
the Fréchet distance between digit samples (:func:`scoresde.metrics.digits_frechet_distance`).

The weights ship with the package (``digits_features.pt``, trained by :func:`train` on the
1500 training images; ``python -m scoresde.nn.digits_features`` rewrites them), so nothing is
downloaded. It plays for digits the part the Inception network plays for FID on natural
images: the numbers compare models on this data set only.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

WEIGHTS = Path(__file__).with_name("digits_features.pt")
NUM_FEATURES = 64
NUM_LEVELS = 17


class DigitsFeatures(nn.Module):
    """Two convolutions and two linear layers: ``(batch, 1, 8, 8)`` integer levels ``0..16``
    -> class logits ``(batch, 10)``; :meth:`features` gives the ``(batch, 64)`` layer below."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),  # 8x8 -> 4x4
            nn.Flatten(), nn.Linear(32 * 4 * 4, NUM_FEATURES), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(NUM_FEATURES, 10)

    def features(self, levels: Tensor) -> Tensor:
        """Penultimate activations ``(batch, 64)`` of digit images given as levels."""
        if levels.ndim != 4 or tuple(levels.shape[1:]) != (1, 8, 8):
            raise ValueError(f"levels must be (batch, 1, 8, 8) digit images, got shape {tuple(levels.shape)}")
        weight = self.head.weight
        return self.body(levels.to(device=weight.device, dtype=weight.dtype) / (NUM_LEVELS - 1))

    def forward(self, levels: Tensor) -> Tensor:
        return self.head(self.features(levels))


@cache
def _bundled(device: torch.device) -> DigitsFeatures:
    net = DigitsFeatures()
    net.load_state_dict(torch.load(WEIGHTS, map_location=device, weights_only=True))
    return net.to(device).eval().requires_grad_(False)


def pretrained(device: torch.device | str | None = None) -> DigitsFeatures:
    """The bundled network in eval mode, without gradients, on ``device`` (default CPU); one
    shared instance per device."""
    return _bundled(torch.device(device or "cpu"))


def train(*, steps: int = 1500, batch_size: int = 128, seed: int = 0) -> DigitsFeatures:
    """Train on the digits training split: AdamW (lr 3e-3, cosine decay), cross-entropy, random
    one-pixel shifts as augmentation. A few seconds on one CPU thread."""
    from scoresde.data import load_digits

    data = load_digits("train")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitsFeatures()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
        levels = data.levels[idx].roll(shift, dims=(2, 3))
        loss = nn.functional.cross_entropy(net(levels), data.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)


if __name__ == "__main__":
    from scoresde._atomic import atomic_write
    from scoresde.data import load_digits

    torch.set_num_threads(1)
    model = train()
    test = load_digits("test")
    accuracy = (model(test.levels).argmax(1) == test.labels).double().mean().item()
    atomic_write(WEIGHTS, lambda f: torch.save(model.state_dict(), f))
    print(f"wrote {WEIGHTS}: test accuracy {accuracy:.3f}")
