"""Secure aggregation, simulated down to its arithmetic (Bonawitz et al. 2017,
"Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS;
the sparse pairing of SecAgg+, Bell et al. 2020, CCS).

Each client clips its update to ``[-clip_range, clip_range]``, quantizes it
stochastically to ``bits``-bit integers (``Quantize(bits, clip_range=...)``,
the same draws), and adds pairwise masks: for each pair of neighbouring clients
``(a, b)`` a mask drawn from the pair's own seed, which ``a`` adds and ``b``
subtracts. The server only ever holds these masked vectors; their sum modulo
``2**(bits + ceil(log2 n))`` (the smallest power of two that holds a sum of n
``bits``-bit values, as SecAgg sizes its field; n the round's sampled clients)
is the sum of the quantized updates exactly, because every mask cancels. Every
client counts once: the result is the mean of the quantized updates. Clients
are paired with their ``ceil(log2 n)`` nearest neighbours on each side of a
ring (all pairs for small rounds), as SecAgg+ does to keep the cost at
O(n log n).

Dropouts (``RoundContext.dropped``) are handled as SecAgg handles them: the
masks are agreed among all the sampled clients (the ring holds survivors and
dropouts, sorted by client id, so a client's neighbours do not depend on who
drops out), each survivor masks with every neighbour, dropped ones included,
and the server, after summing the survivors' masked vectors, removes the
masks between survivors and dropped clients, as SecAgg's unmasking step does
with the dropped clients' pairwise seeds rebuilt from the survivors' secret
shares. The total is then exactly the sum of the survivors' quantized updates,
and the result their mean. What is assumed: enough survivors to rebuild the
seeds (SecAgg's threshold ``t``; a round below it would abort, which is not
simulated); SecAgg's second, per-client "self" mask (against an update that
arrives after its sender was declared dropped) is not simulated, as the server
removes it for every survivor. SecureSum runs on the native engine only: TFF
0.87's worker cannot run the secure-sum intrinsics of its ``SecureSumFactory``.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
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


def ring(context: RoundContext) -> list[tuple[str, int | None]]:
    """The round's sampled clients in the order of the masks' ring, as ``(id,
    row)``: the row of a survivor's update, None for a dropped client. Sorted
    by id, so that the pairs are the same whoever drops out."""
    members = [(str(cid), 0, row) for row, cid in enumerate(context.cids)]
    members += [(str(cid), 1, None) for cid in context.dropped]
    return [(cid, row) for cid, _, row in sorted(members, key=lambda m: m[:2])]


def pair_mask(first: str, second: str, context: RoundContext, modulus: int,
              size: int) -> np.ndarray:
    """The mask a pair of clients agreed on (``first`` adds it, ``second`` subtracts it)."""
    pair_seed = zlib.crc32(f"{first}\x00{second}".encode())
    rng = np.random.default_rng([context.seed, context.round_num, pair_seed])
    return rng.integers(0, modulus, size=size, dtype=np.int64)


def masked_vectors(levels: np.ndarray, context: RoundContext, modulus: int) -> np.ndarray:
    """What each surviving client sends (rows as ``context.cids``): its integer
    levels plus its pairwise masks with every neighbour, dropped ones included,
    mod ``modulus``."""
    masked = levels.astype(np.int64) % modulus
    members = ring(context)
    for a, b in mask_pairs(len(members)):
        (first, row_a), (second, row_b) = members[a], members[b]
        if row_a is None and row_b is None:
            continue  # two dropped clients: neither sends anything
        mask = pair_mask(first, second, context, modulus, levels.shape[1])
        if row_a is not None:
            masked[row_a] = (masked[row_a] + mask) % modulus
        if row_b is not None:
            masked[row_b] = (masked[row_b] - mask) % modulus
    return masked


def dropout_masks(context: RoundContext, modulus: int, size: int) -> np.ndarray:
    """The survivors' masks with dropped clients, summed mod ``modulus``: what the
    server rebuilds from the survivors' shares of the dropped clients' seeds and
    subtracts (zeros without dropouts)."""
    left = np.zeros(size, np.int64)
    members = ring(context)
    for a, b in mask_pairs(len(members)):
        (first, row_a), (second, row_b) = members[a], members[b]
        if (row_a is None) == (row_b is None):
            continue  # both reported (the masks cancel in the sum) or neither did
        mask = pair_mask(first, second, context, modulus, size)
        left = (left + (mask if row_a is not None else -mask)) % modulus
    return left


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
        n = updates.shape[0]  # the survivors
        levels, low, high = self.quantizer.levels(updates.astype(np.float64),
                                                  context.rng("quantize"))
        # The field is agreed before anyone drops out: sized for every sampled client.
        modulus = 2 ** field_bits(self.bits, n + len(context.dropped))
        masked = masked_vectors(levels, context, modulus)
        total = masked.sum(axis=0) % modulus  # the server's only view: masked vectors
        total = (total - dropout_masks(context, modulus, levels.shape[1])) % modulus
        mean = from_levels(total.astype(np.float64) / n, low[0], high[0], self.bits)
        return mean.astype(updates.dtype), state, {}
