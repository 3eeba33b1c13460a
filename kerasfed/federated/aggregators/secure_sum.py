"""Secure aggregation, simulated down to its arithmetic (Bonawitz et al. 2017,
"Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS;
the sparse pairing of SecAgg+, Bell et al. 2020, CCS).

Each client clips its update to ``[-clip_range, clip_range]``, quantizes it
stochastically to ``bits``-bit integers (``Quantize(bits, clip_range=...)``,
the same draws), and adds pairwise masks: for each pair of neighbouring clients
``(a, b)`` a mask drawn from the pair's own seed, which ``a`` adds and ``b``
subtracts. The server only ever holds these masked vectors; their sum modulo
``2**(bits + ceil(log2 n))`` (the smallest power of two that holds a sum of n
``bits``-bit values, as SecAgg sizes its field) is the sum of the quantized
updates exactly, because every mask cancels. Every client counts once: the
result is the mean of the quantized updates. Clients are paired with their
``ceil(log2 n)`` nearest neighbours on each side of a ring (all pairs for small
rounds), as SecAgg+ does to keep the cost at O(n log n). Dropouts are not
simulated. The TFF engine uses TFF's ``SecureSumFactory``.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import Combiner, RoundContext, State, check_number
from kerasfed.federated.aggregators.quantize import Quantize, from_levels


def field_bits(bits: int, clients: int) -> int:
    return bits + max(1, math.ceil(math.log2(max(clients, 2))))


def mask_pairs(n: int) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of clients that share a mask."""
    reach = max(1, math.ceil(math.log2(max(n, 2))))
    pairs = set()
    for a in range(n):
        for step in range(1, reach + 1):
            b = (a + step) % n
            if a != b:
                pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


def masked_vectors(levels: np.ndarray, cids: Sequence[str], context: RoundContext,
                   modulus: int) -> np.ndarray:
    """What each client sends: its integer levels plus its pairwise masks, mod ``modulus``."""
    masked = levels.astype(np.int64) % modulus
    for a, b in mask_pairs(len(cids)):
        pair_seed = zlib.crc32(f"{cids[a]}\x00{cids[b]}".encode())
        rng = np.random.default_rng([context.seed, context.round_num, pair_seed])
        mask = rng.integers(0, modulus, size=levels.shape[1], dtype=np.int64)
        masked[a] = (masked[a] + mask) % modulus
        masked[b] = (masked[b] - mask) % modulus
    return masked


@dataclasses.dataclass(frozen=True)
class SecureSum(Combiner):
    """The mean of the updates, through a simulated secure-aggregation sum.

    Attributes:
      bits: Bits of each quantized value, in [1, 24] (default 16).
      clip_range: Values are clipped to ``[-clip_range, clip_range]`` (> 0,
        default 1.0).

    Example:
      >>> SecureSum(bits=16).update_bytes(1000, clients=10)
      2500
    """

    bits: int = 16
    clip_range: float = 1.0
    name: ClassVar[str] = "secure_sum"

    def __post_init__(self) -> None:
        check_number("SecureSum", "bits", self.bits, low=1, high=24, integer=True)
        check_number("SecureSum", "clip_range", self.clip_range, low=0.0, low_open=True)

    @property
    def quantizer(self) -> Quantize:
        return Quantize(bits=self.bits, clip_range=self.clip_range)

    def update_bytes(self, num_values: int, clients: int) -> int:
        return -(-field_bits(self.bits, clients) * num_values // 8)

    def combine(self, updates: np.ndarray, context: RoundContext,
                state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        n = updates.shape[0]
        levels, low, high = self.quantizer.levels(updates.astype(np.float64),
                                                  context.rng("quantize"))
        modulus = 2 ** field_bits(self.bits, n)
        masked = masked_vectors(levels, context.cids, context, modulus)
        total = masked.sum(axis=0) % modulus  # the server's only view: masked vectors
        mean = from_levels(total.astype(np.float64) / n, low[0], high[0], self.bits)
        return mean.astype(updates.dtype), state, {}
