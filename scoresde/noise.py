r"""Where a sampler's randomness comes from: a ``torch.Generator`` for the whole batch, or
per-sample seeds, so that sample ``i`` is the same whatever the batch size, the batch it lands in
or the number of processes.

:class:`SampleNoise` is a counter-based generator (in the spirit of Salmon et al. 2011, "Parallel
random numbers: as easy as 1, 2, 3"): the ``k``-th draw of sample ``i`` is a pure function of
``(seed, i, k)`` and of the element's position in the event, computed with integer tensor ops (a
SplitMix64 hash, Steele et al. 2014) and Box-Muller, so it runs on any device with no host sync and
no state to carry between processes. A fixed-step sampler makes the same sequence of draws for
every sample, so its output for sample ``i`` is the same bits on the same device and dtype,
whichever batch holds it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BatchNoise", "Noise", "SampleNoise", "noise_source"]

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(state: Tensor, position: Tensor | int) -> Tensor:
    """Output ``position`` (>= 0) of the SplitMix64 stream started at ``state``: the finaliser of
    ``state + (position + 1) * gamma``, on int64 tensors (arithmetic wraps modulo 2^64)."""
    position = torch.as_tensor(position, dtype=torch.int64, device=state.device)
    z = state + (position + 1) * _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def _uniform_open(bits: Tensor) -> Tensor:
    """float64 uniforms in (0, 1) from the top 53 bits."""
    return (_shift_right(bits, 11).to(torch.float64) + 0.5) * 2.0**-53


class Noise(ABC):
    """A source of standard normal and uniform draws shaped like a state ``(batch, *event)``."""

    @abstractmethod
    def randn_like(self, x: Tensor) -> Tensor:
        """A fresh standard normal tensor shaped like ``x``, in its dtype on its device."""

    @abstractmethod
    def rand_like(self, x: Tensor) -> Tensor:
        """A fresh tensor of uniforms on ``[0, 1)`` shaped like ``x``, in its dtype on its device."""

    def randn(self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
        """A fresh standard normal tensor of ``shape``, in ``dtype`` on ``device``."""
        return self.randn_like(torch.empty(tuple(shape), dtype=dtype, device=device))


class BatchNoise(Noise):
    """Draws from one ``torch.Generator`` (or torch's global one) for the whole batch."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator

    def randn_like(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def rand_like(self, x: Tensor) -> Tensor:
        return torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)


class SampleNoise(Noise):
    r"""Per-sample seeds: draw ``k`` of sample ``indices[b]`` is a function of ``(seed, indices[b], k)``.

    Args:
        seed: a non-negative int (the run's seed).
        indices: ``(batch,)`` the global index of each sample of the batch (default
            ``0..batch-1``, set by the first draw). Sample ``i`` of a run of 64 and sample ``i`` of
            a batch ``[i, ...]`` of another run with the same seed get the same noise.
        stream: independent streams of one seed, for draws that must not share bits (e.g.
            dequantization noise and Hutchinson probes of the same sample).
    """

    def __init__(self, seed: int, indices: Tensor | Sequence[int] | None = None, stream: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 63:
            raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}")
        if indices is not None:
            indices = torch.as_tensor(indices)
            if indices.ndim != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
                raise ValueError(f"indices must be a 1-D integer tensor, got {indices!r}")
            if indices.numel() and (indices.min() < 0):
                raise ValueError(f"indices must be >= 0, got {indices.tolist()}")
            indices = indices.to(torch.int64)
        if not isinstance(stream, int) or isinstance(stream, bool) or stream < 0:
            raise ValueError(f"stream must be an int >= 0, got {stream!r}")
        self.seed = seed
        self.indices = indices
        self.stream = stream
        self.draws = 0

    def _keys(self, batch: int, device: torch.device) -> Tensor:
        if self.indices is None:
            self.indices = torch.arange(batch)
        if self.indices.shape[0] != batch:
            raise ValueError(f"{self.indices.shape[0]} sample indices for a batch of {batch}")
        base = _splitmix64(torch.tensor(self.seed, dtype=torch.int64, device=device), self.stream)
        per_sample = _splitmix64(base, self.indices.to(device))  # a stream per sample ...
        return _splitmix64(per_sample, self.draws)  # ... and in it one per draw: (batch,)

    def _bits(self, x: Tensor, count: int) -> Tensor:
        """``(batch, count)`` hashes for the next draw: the sample's stream at that draw."""
        keys = self._keys(x.shape[0], x.device)
        self.draws += 1
        return _splitmix64(keys[:, None], torch.arange(count, dtype=torch.int64, device=x.device))

    def randn_like(self, x: Tensor) -> Tensor:
        size = x[0].numel()
        half = (size + 1) // 2  # Box-Muller gives two normals per pair of uniforms
        u1, u2 = _uniform_open(self._bits(x, 2 * half)).view(x.shape[0], half, 2).unbind(-1)
        radius, angle = (-2 * u1.log()).sqrt(), (2 * math.pi) * u2
        z = torch.cat([radius * angle.cos(), radius * angle.sin()], dim=1)[:, :size]
        return z.reshape(x.shape).to(x.dtype)

    def rand_like(self, x: Tensor) -> Tensor:
        u = _uniform_open(self._bits(x, x[0].numel())) - 2.0**-54  # the 2^53 points k 2^-53, k < 2^53
        below_one = 1 - torch.finfo(x.dtype).eps / 2  # float32 would round the top ones up to 1
        return u.reshape(x.shape).to(x.dtype).clamp(max=below_one)


def noise_source(
    generator: torch.Generator | None, seed: int | None, indices: Tensor | Sequence[int] | None, stream: int = 0
) -> Noise:
    """The noise a sampler draws from: per-sample seeds if ``seed`` is given (then no ``generator``),
    else ``generator``'s. ``indices`` need a ``seed``."""
    if seed is None:
        if indices is not None:
            raise ValueError("sample_indices need a seed")
        return BatchNoise(generator)
    if generator is not None:
        raise ValueError("give generator or seed (per-sample seeds), not both")
    return SampleNoise(seed, indices, stream)
