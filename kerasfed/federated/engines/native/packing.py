"""A chunk of a round's clients as padded tensors: what the compiled round reads.

Clients differ in size, but one computation needs one shape. Each client's
examples are padded to the chunk's longest client (``x``: [C, rows, ...]); its
batches become rows of example indices (``batches``: [C, steps, batch_size])
with the number of real examples in each (``counts``: [C, steps]). A client
with fewer steps has trailing steps of count 0, which change nothing. The row
and step counts are those of the run's largest client (or, when a chunk holds
a larger one, rounded up to a few sizes by ``bucket``), so that every round
reuses the same traced and compiled computation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from kerasfed.federated.engines.base import ClientRound


def bucket(n: int) -> int:
    """``n`` rounded up to the next of 1, 2, 3, 4, 5, 7, 9, 12, ... (25% steps)."""
    size = 1
    while size < n:
        size = max(size + 1, math.ceil(size * 1.25))
    return size


@dataclasses.dataclass(frozen=True)
class PackedChunk:
    x: np.ndarray  # [C, rows, *feature_shape]
    y: np.ndarray  # [C, rows, *label_shape]
    batches: np.ndarray  # [C, steps, batch_size] int32 row indices
    counts: np.ndarray  # [C, steps] float32 real examples per step
    real_clients: int  # the first `real_clients` of C are clients; the rest padding


def pack_chunk(
    clients: Sequence[ClientRound], *, batch_size: int, num_slots: int,
    feature_shape: tuple, feature_dtype: np.dtype, label_shape: tuple, label_dtype: np.dtype,
    min_rows: int = 0, min_steps: int = 0,
) -> PackedChunk:
    """Packs ``clients`` (at most ``num_slots``) into ``num_slots`` padded slots,
    with at least ``min_rows`` rows and ``min_steps`` steps."""
    rows = max(len(c.x) for c in clients)
    rows = min_rows if rows <= min_rows else bucket(rows)
    steps = max(c.order.shape[0] * math.ceil(c.order.shape[1] / batch_size) for c in clients)
    steps = min_steps if steps <= min_steps else bucket(steps)
    x = np.zeros((num_slots, rows, *feature_shape), feature_dtype)
    y = np.zeros((num_slots, rows, *label_shape), label_dtype)
    batches = np.zeros((num_slots, steps, batch_size), np.int32)
    counts = np.zeros((num_slots, steps), np.float32)
    for slot, client in enumerate(clients):
        n = len(client.x)
        x[slot, :n] = client.x
        y[slot, :n] = client.y
        step = 0
        for epoch_order in client.order:
            for start in range(0, n, batch_size):
                part = epoch_order[start:start + batch_size]
                batches[slot, step, : len(part)] = part
                counts[slot, step] = len(part)
                step += 1
    return PackedChunk(x=x, y=y, batches=batches, counts=counts, real_clients=len(clients))
