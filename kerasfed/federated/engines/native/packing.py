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
from typing import Any

import numpy as np

from kerasfed.federated.clients.structure import empty_like, map_leaves, num_rows
from kerasfed.federated.engines.base import ClientRound


def bucket(n: int) -> int:
    """``n`` rounded up to the next of 1, 2, 3, 4, 5, 7, 9, 12, ... (25% steps)."""
    size = 1
    while size < n:
        size = max(size + 1, math.ceil(size * 1.25))
    return size


@dataclasses.dataclass(frozen=True)
class PackedChunk:
    x: Any  # [C, rows, *feature_shape] (a structure of them for several inputs)
    y: Any  # [C, rows, *label_shape] (a tuple of them for several outputs)
    w: np.ndarray | None  # [C, rows] float32 sample weights, or None
    batches: np.ndarray  # [C, steps, batch_size] int32 row indices
    counts: np.ndarray  # [C, steps] float32 real examples per step
    real_clients: int  # the first `real_clients` of C are clients; the rest padding


def pack_chunk(
    clients: Sequence[ClientRound], *, batch_size: int, num_slots: int,
    min_rows: int = 0, min_steps: int = 0, **_: Any,
) -> PackedChunk:
    """Packs ``clients`` (at most ``num_slots``) into ``num_slots`` padded slots,
    with at least ``min_rows`` rows and ``min_steps`` steps. Every leaf of the
    clients' ``x`` and ``y`` is padded (zeros, or empty strings)."""
    rows = max(num_rows(c.x) for c in clients)
    rows = min_rows if rows <= min_rows else bucket(rows)
    steps = max(len(c.step_sizes(batch_size)) for c in clients)
    steps = min_steps if steps <= min_steps else bucket(steps)

    def padded(leaves_of_first: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
        out = empty_like(leaves_of_first, (num_slots, rows, *leaves_of_first.shape[1:]))
        for slot, part in enumerate(parts):
            out[slot, :len(part)] = part
        return out

    first = clients[0]
    x = map_leaves(lambda ref, *parts: padded(ref, list(parts)), first.x, *[c.x for c in clients])
    y = map_leaves(lambda ref, *parts: padded(ref, list(parts)), first.y, *[c.y for c in clients])
    w = None
    if first.w is not None:
        w = padded(first.w, [c.w for c in clients])
    batches = np.zeros((num_slots, steps, batch_size), np.int32)
    counts = np.zeros((num_slots, steps), np.float32)
    for slot, client in enumerate(clients):
        n = num_rows(client.x)
        step, last = 0, len(client.step_sizes(batch_size))
        for epoch_order in client.order:
            for start in range(0, n, batch_size):
                if step == last:  # a step cap (local_steps, a straggler's partial work)
                    break
                part = epoch_order[start:start + batch_size]
                batches[slot, step, : len(part)] = part
                counts[slot, step] = len(part)
                step += 1
    return PackedChunk(x=x, y=y, w=w, batches=batches, counts=counts,
                       real_clients=len(clients))
