"""How many clients one compiled call trains, and where their updates go.

A round's clients are trained in chunks: one chunk is one call of the compiled
client work, its clients padded to common shapes (``packing.py``). Chunks bound
a round's memory (the stacked weights and updates of a chunk's clients) and,
in the lockstep form, keep the stacked weights near the CPU's caches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed.federated.clients.structure import leaves, num_rows
from kerasfed.federated.engines.base import ClientRound
from kerasfed.federated.engines.native import forward as fwd

# The default chunk may use this share of the memory that is free at the start.
_MEMORY_SHARE = 0.25
_MAX_DEFAULT_CHUNK = 256
# Lockstep chunks are memory-bound once the stacked weights outgrow the CPU's
# caches: measured here on the 2NN (800 KB of weights per client), 100 clients
# per round took 6.2x the time of 20 in one chunk and 4.7-5x in chunks of 20.
LOCKSTEP_CHUNK_BYTES = 16 << 20
# The sequential form gains nothing from long chunks (it trains one client at a
# time) but holds a chunk's stacked updates: CNN (6.6 MB of update per client), 100
# clients of 40 examples, peak 810 MiB above the round's start in one chunk, 24-31
# MiB in chunks of 25, at the same speed.
SEQUENTIAL_CHUNK_BYTES = 64 << 20


def default_parallel_clients(model, clients: Sequence[ClientRound], batch_size: int) -> int:
    """How many clients one chunk may hold in about a quarter of the free memory."""
    params = sum(int(np.prod(v.shape)) for v in fwd.variables(model.weights))
    rows = max(num_rows(c.x) for c in clients)
    example = sum(int(np.prod(a.shape[1:])) for a in [*leaves(clients[0].x),
                                                      *leaves(clients[0].y)])
    activations = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is not None:
            activations += int(np.prod([d or 1 for d in shape[1:]]))
    per_client = 4 * (6 * params + rows * example + 3 * batch_size * max(activations, 1))
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        free = 4 << 30
    return int(max(1, min(_MAX_DEFAULT_CHUNK, free * _MEMORY_SHARE // per_client)))


def chunk_size(clients: int, cap: int, in_flight: int) -> int:
    """Clients per chunk: at most ``cap``, in whole groups of the ``in_flight``
    clients the sequential form trains side by side, and about equal across the
    round (a last chunk of a few clients would leave most of its slots empty).
    A cap below one group keeps the cap (the chunk's slots are padded)."""
    if cap < in_flight:
        return cap
    groups = math.ceil(clients / in_flight)
    chunks = math.ceil(groups / (cap // in_flight))
    return math.ceil(groups / chunks) * in_flight


def fill_rows(rows: np.ndarray | None, updates: Sequence[tf.Tensor], start: int,
              total: int) -> np.ndarray:
    """Writes a chunk's stacked updates ([k, ...] per weight) as rows start..start+k
    of the flat [total, weights] array (made on the first chunk)."""
    k = int(updates[0].shape[0])
    if rows is None:
        width = sum(int(np.prod(u.shape[1:])) for u in updates)
        rows = np.empty((total, width), updates[0].dtype.as_numpy_dtype)
    column = 0
    for u in updates:
        size = int(np.prod(u.shape[1:]))
        rows[start:start + k, column:column + size] = u.numpy().reshape(k, size)
        column += size
    return rows


def concat(values: list) -> Any:
    """The chunks' per-client values joined along the client axis (any structure)."""
    return tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *values)
