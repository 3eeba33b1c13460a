"""A user's algorithm tried once on the model's weights, before any training.

The engine calls every piece of the algorithm eagerly on the global weights
(zero learning rate, one step) and checks what comes back: an update per
trainable weight with its shape, a client state in the layout ``client_state``
gave, extras as a dict of tensors. A mistake then fails with a message naming
the piece, instead of deep inside a traced round.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from kerasfed.errors import AlgorithmError
from kerasfed.federated.algorithms import Algorithm, ClientContext, ClientOutput


@dataclasses.dataclass(frozen=True)
class Probe:
    """What the algorithm's pieces return on the global weights."""

    broadcast: dict  # what the server sends besides the weights
    client_state: list  # a new client's state
    extras: dict  # the other values a client sends back


def probe_algorithm(algorithm: Algorithm, trainable: list, client_rule: Any) -> Probe:
    """Runs ``algorithm``'s pieces once on ``trainable``; raises ``AlgorithmError`` on a mistake."""
    name = type(algorithm).__name__

    def call(piece: str, *args):
        try:
            return getattr(algorithm, piece)(*args)
        except Exception as e:  # noqa: BLE001  (re-raised with the piece named)
            raise AlgorithmError(
                f"{name}.{piece} failed on the model's weights before training: "
                f"{type(e).__name__}: {e}") from e

    state = call("client_state", trainable)
    _check_tensors(f"{name}.client_state", state)
    server = call("server_init", trainable, client_rule)
    if not isinstance(server, dict):
        raise AlgorithmError(f"Expected {name}.server_init to return a dict of tensors. "
                             f"Received: {type(server).__name__}.")
    broadcast = call("broadcast", server)
    if not isinstance(broadcast, dict):
        raise AlgorithmError(f"Expected {name}.broadcast to return a dict of tensors. "
                             f"Received: {type(broadcast).__name__}.")
    ctx = ClientContext(broadcast_weights=trainable, server=broadcast, state=list(state),
                        learning_rate=tf.constant(0.0), local_steps=tf.constant(1.0),
                        examples=tf.constant(1.0), full_gradient=list(trainable))
    zeros = [tf.zeros_like(t) for t in trainable]
    if algorithm.trains_locally:
        start = call("client_start", ctx)
        _check_like(f"{name}.client_start", start, trainable)
        opt_state = client_rule.init(trainable) if client_rule is not None else {}
        rule = (dataclasses.replace(client_rule, learning_rate=tf.constant(0.0))
                if client_rule is not None else None)
        stepped = call("local_step", ctx, list(trainable), zeros, rule, opt_state)
        if not (isinstance(stepped, tuple) and len(stepped) == 2):
            raise AlgorithmError(
                f"Expected {name}.local_step to return (weights, optimizer_state). "
                f"Received: {type(stepped).__name__}.")
        _check_like(f"{name}.local_step's weights", stepped[0], trainable)
    out = call("client_end", ctx, list(trainable))
    if not isinstance(out, ClientOutput):
        raise AlgorithmError(
            f"Expected {name}.client_end to return a kerasfed.ClientOutput(update=..., "
            f"state=..., extras=...). Received: {type(out).__name__}.")
    _check_like(f"{name}.client_end's update", out.update, trainable)
    _check_like(f"{name}.client_end's state", out.state, state)
    if not isinstance(out.extras, dict):
        raise AlgorithmError(f"Expected {name}.client_end's extras to be a dict of lists of "
                             f"tensors. Received: {type(out.extras).__name__}.")
    return Probe(broadcast=broadcast, client_state=list(state), extras=dict(out.extras))


def _check_tensors(what: str, values: Any) -> None:
    if not isinstance(values, (list, tuple)) or not all(tf.is_tensor(v) for v in values):
        raise AlgorithmError(f"Expected {what} to be a list of tensors. Received: {values!r:.200}.")


def _check_like(what: str, values: Any, like: list) -> None:
    _check_tensors(what, values)
    got = [(tuple(v.shape), v.dtype.name) for v in values]
    want = [(tuple(t.shape), t.dtype.name) for t in like]
    if got != want:
        raise AlgorithmError(
            f"Expected {what} to hold {len(want)} tensors shaped {want}. Received {len(got)}: "
            f"{got}.")
