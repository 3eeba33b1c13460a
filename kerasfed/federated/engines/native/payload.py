"""Bytes a round moves per client on the native engine, counted as TFF's round moves them.

Out: the model weights, the client optimizer's hyper-parameters (float32 each)
and what the algorithm broadcasts (FedProx's mu, Mime-lite's optimizer state,
SCAFFOLD's control variate). Back: the update as the aggregator chain encodes
it and its weight, the algorithm's other values (each with its weight), and the
metric sums (the loss total and count, int64 num_examples and num_batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


def nbytes(tensors: Sequence) -> int:
    """Bytes of ``tensors`` (variables or tensors, any nesting)."""
    return sum(int(np.prod(t.shape)) * np.dtype(tf.as_dtype(t.dtype).as_numpy_dtype).itemsize
               for t in tf.nest.flatten(tensors))


def payload_bytes(*, model_weights, trainable, chain, expected_clients: int, client_rule,
                  broadcast: dict, extras: dict, metrics: list) -> tuple[int, int]:
    """``(bytes to a client, bytes from a client)`` per round."""
    to_client = nbytes(model_weights) + nbytes(list(broadcast.values()))
    if client_rule is not None:
        to_client += 4 * client_rule.num_hyperparameters()
    values = sum(int(np.prod(v.shape)) for v in trainable)
    from_client = chain.update_bytes(values, expected_clients) + 4
    from_client += sum(nbytes(v) + 4 for v in extras.values())
    from_client += sum(nbytes(m.variables) for m in metrics) + 8 + 16
    return to_client, from_client
