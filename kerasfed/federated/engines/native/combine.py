"""Combining a round's client results: weighted sums, gathering, the aggregator chain.

A plain weighted mean needs only sums, taken chunk by chunk and then over the
replicas (one all-reduce), so a round holds one chunk's updates at a time.
Robust, private and secure combiners and attacks need every client's update:
those are gathered in the round's client order and handed to the chain as the
rows of one array. TFF's semantics are kept (``model_delta_client_work``,
``fed_sgd``, ``mime`` and ``mean``): a non-finite client update is zeroed and
weighted 0 (the unweighted mean still counts it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


def finite_clients(updates: Sequence[tf.Tensor]) -> tf.Tensor:
    """[C] booleans: whether each client's update (stacked [C, ...]) is all finite."""
    flags = [
        tf.reduce_all(tf.math.is_finite(tf.reshape(u, [tf.shape(u)[0], -1])), axis=1)
        for u in updates
    ]
    return tf.reduce_all(tf.stack(flags), axis=0)


def weighted_sum(stacked: tf.Tensor, weight: tf.Tensor,
                 finite: tf.Tensor | None = None) -> tf.Tensor:
    """``sum_i weight_i * stacked_i``; clients not ``finite`` count as zeros."""
    shape = [-1] + [1] * (len(stacked.shape) - 1)
    if finite is not None:
        ok = tf.reshape(finite > 0, shape)
        stacked = tf.where(ok, stacked, tf.zeros_like(stacked))
    w = tf.reshape(tf.cast(weight, stacked.dtype), shape)
    return tf.reduce_sum(stacked * w, axis=0)


def client_weights(examples: tf.Tensor, finite: tf.Tensor, weighted: bool) -> tf.Tensor:
    """Each client's weight in the mean: its examples (0 if not finite), or 1."""
    return examples * finite if weighted else tf.ones_like(examples)


def chunk_sums(out: dict, *, weighted: bool, counts_non_finite: bool,
               non_trainable_positions: Sequence[int | None], holds_first: bool) -> dict:
    """A chunk's clients' weighted update sums, weights, example and loss totals."""
    finite = tf.cast(out["finite"], tf.float32)
    examples = out["examples"]
    weight = client_weights(examples, finite, weighted)
    good = examples * finite
    counted = tf.ones_like(finite) if counts_non_finite else finite
    return {
        "weight": tf.reduce_sum(weight),
        "good": tf.reduce_sum(good),
        "examples": tf.reduce_sum(examples * counted),
        "loss": tf.reduce_sum(tf.where(counted > 0, out["loss_sum"], 0.0)),
        "update": [weighted_sum(u, weight, finite) for u in out["update"]],
        # The algorithm's other values: the same weights, not masked (as TFF's
        # Mime-lite averages the full gradients).
        "extras": tf.nest.map_structure(lambda e: weighted_sum(e, weight), out["extras"]),
        # Beyond TFF (which keeps them frozen): float non-trainable weights
        # (BatchNormalization's moving statistics) are averaged over the clients
        # by examples; a seed state moves on to the round's first client's.
        "state": [
            weighted_sum(s, good, finite) if s.dtype.is_floating and i is not None
            else (s[0] if holds_first else tf.zeros_like(s[0]))
            if s.dtype.is_integer and i is None else tf.zeros_like(s[0])
            for s, i in zip(out["state"], non_trainable_positions)
        ],
    }


def zero_sums(like: dict) -> dict:
    """Sums of a replica without clients: ``like``'s structure, zeros."""
    return tf.nest.map_structure(tf.zeros_like, like)


def unflatten(flat: np.ndarray, like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """``flat`` (one vector) cut into tensors of ``like``'s shapes and dtypes."""
    out, start = [], 0
    for t in like:
        size = int(np.prod(t.shape))
        out.append(tf.constant(flat[start:start + size].reshape(tuple(t.shape)), dtype=t.dtype))
        start += size
    return out


def gather_in_order(replicas, outs: list[dict | None], shares: list[list[int]],
                    trainable: Sequence[tf.Tensor]) -> dict:
    """Every client's update, example count and finiteness, in the round's order."""
    if not replicas.distributed:  # one replica holds the round, in order
        out = outs[0]
        return {"update": out["update"], "examples": out["examples"],
                "finite": tf.cast(out["finite"], tf.float32)}
    width = max(len(s) for s in shares)
    local = []
    for out in outs:
        if out is None:
            local.append({
                "update": [tf.zeros([width, *t.shape], t.dtype) for t in trainable],
                "examples": tf.zeros([width]), "finite": tf.zeros([width])})
            continue
        pad = width - int(out["examples"].shape[0])
        grow = lambda t: tf.pad(t, [[0, pad]] + [[0, 0]] * (t.shape.rank - 1))  # noqa: E731
        local.append({"update": [grow(u) for u in out["update"]],
                      "examples": grow(out["examples"]),
                      "finite": grow(tf.cast(out["finite"], tf.float32))})
    stacked = replicas.all_gather(local)
    position = np.empty(sum(len(s) for s in shares), np.int64)
    for r, share in enumerate(shares):
        for j, i in enumerate(share):
            position[i] = r * width + j
    return tf.nest.map_structure(lambda t: tf.gather(t, position), stacked)
