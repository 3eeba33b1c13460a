"""Unbiased stochastic uniform quantization (Suresh, Yu, Kumar, McMahan 2017,
"Distributed Mean Estimation with Limited Communication", ICML).

Each client's update is mapped to ``2**bits`` evenly spaced levels between its
own minimum and maximum (or over a fixed range ``[-clip_range, clip_range]``),
each value rounded up or down at random with the probabilities that keep its
expectation: ``E[Q(x)] = x``. With ``rotation=True`` the update is first turned
by a random Hadamard rotation (random signs, then the normalised Walsh-Hadamard
transform), which spreads its energy over all coordinates and shrinks the
range, so the error falls from O(d) to O(log d) (Suresh et al., section 4); the
server turns it back. The TFF engine uses TFF's ``EncodedSumFactory``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import (
    RoundContext,
    State,
    Transform,
    check_bool,
    check_number,
)


def stochastic_levels(values: np.ndarray, low: np.ndarray, high: np.ndarray, bits: int,
                      uniform: np.ndarray) -> np.ndarray:
    """Integer levels in ``[0, 2**bits - 1]`` of ``values`` over ``[low, high]`` (per
    row), rounded up with probability equal to the remainder (``uniform`` in [0, 1))."""
    top = float(2**bits - 1)
    span = np.where(high > low, high - low, 1.0)
    scaled = np.clip((values - low) / span * top, 0.0, top)
    down = np.floor(scaled)
    return np.minimum(down + (uniform < scaled - down), top)


def from_levels(levels: np.ndarray, low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
    top = float(2**bits - 1)
    return low + levels * ((high - low) / top)


def hadamard(x: np.ndarray) -> np.ndarray:
    """The normalised Walsh-Hadamard transform of each row (length a power of 2);
    it is its own inverse."""
    n, d = x.shape
    out = x.astype(np.float64).copy()
    h = 1
    while h < d:
        blocks = out.reshape(n, d // (2 * h), 2, h)
        a, b = blocks[:, :, 0, :].copy(), blocks[:, :, 1, :]
        blocks[:, :, 0, :] += b
        blocks[:, :, 1, :] = a - b
        h *= 2
    return out / np.sqrt(d)


@dataclasses.dataclass(frozen=True)
class Quantize(Transform):
    """Stochastic ``bits``-bit quantization of each update (unbiased).

    Attributes:
      bits: Bits per value, in [1, 16] (default 8).
      rotation: Apply a random Hadamard rotation first (default False).
      clip_range: None (default: each update's own min and max, sent along as two
        floats) or r > 0: values clipped to ``[-r, r]``, the same levels for every
        client (what ``SecureSum`` uses).

    Example:
      >>> Quantize(bits=8).update_bytes(1000, clients=10)
      1008
    """

    bits: int = 8
    rotation: bool = False
    clip_range: float | None = None
    name: ClassVar[str] = "quantize"

    def __post_init__(self) -> None:
        check_number("Quantize", "bits", self.bits, low=1, high=16, integer=True)
        check_bool("Quantize", "rotation", self.rotation)
        if self.clip_range is not None:
            check_number("Quantize", "clip_range", self.clip_range, low=0.0, low_open=True)

    def update_bytes(self, num_values: int, clients: int) -> int:
        length = _padded(num_values) if self.rotation else num_values
        range_bytes = 8 if self.clip_range is None else 0
        return -(-self.bits * length // 8) + range_bytes

    def apply(self, updates: np.ndarray, context: RoundContext,
              state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        return self.quantize(updates, context.rng("quantize")), state, {}

    def quantize(self, updates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The dequantized values the server receives (same shape as ``updates``)."""
        n, d = updates.shape
        values = updates.astype(np.float64)
        signs = None
        if self.rotation:
            signs = rng.choice(np.array([-1.0, 1.0]), size=(n, _padded(d)))
            padded = np.zeros((n, _padded(d)))
            padded[:, :d] = values
            values = hadamard(padded * signs)
        levels, low, high = self.levels(values, rng)
        out = from_levels(levels, low, high, self.bits)
        if signs is not None:
            out = (hadamard(out) * signs)[:, :d]
        return out.astype(updates.dtype)

    def levels(self, values: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(integer levels as floats, low, high) of each row of ``values``."""
        low, high = self.range_of(values)
        uniform = rng.random(values.shape)
        return stochastic_levels(values, low, high, self.bits, uniform), low, high

    def range_of(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.clip_range is not None:
            r = float(self.clip_range)
            return np.full((len(values), 1), -r), np.full((len(values), 1), r)
        if values.shape[1] == 0:
            return np.zeros((len(values), 1)), np.zeros((len(values), 1))
        return values.min(axis=1, keepdims=True), values.max(axis=1, keepdims=True)


def _padded(d: int) -> int:
    return 1 << max(0, int(d - 1).bit_length())

