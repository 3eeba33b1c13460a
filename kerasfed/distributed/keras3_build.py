"""Keras 3: build the model's state from one replica's batch, not a cross-replica mean.

Before training, Keras 3's TensorFlow trainer (``_maybe_symbolic_build``) takes the
first distributed batch and averages it across replicas with
``strategy.reduce("MEAN", batch)``, only to learn the input shapes for building
metrics, loss and optimizer state. That average needs every replica's slice to
have the same shape, so ``fit`` fails whenever the global batch does not divide
evenly (plain Keras 3.15: ``MirroredStrategy`` over 2 devices with
``batch_size=5`` raises "Inputs to operation AddN ... must have the same size and
shape"), and under ``MultiWorkerMirroredStrategy`` the nested reduce is rejected
outright (keras-team/keras#20585). Any one replica's batch has the shapes
needed, so during fit_distributed's ``fit`` the model builds from the first
non-empty local slice instead. Keras 2 has no such step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import tensorflow as tf

from kerasfed._compat import KERAS_3, keras


@contextlib.contextmanager
def build_from_local_batch(model: "keras.Model", strategy: tf.distribute.Strategy) -> Iterator[None]:
    """While active, ``model`` builds its state from a local batch (Keras 3, >1 replica)."""
    applies = (
        KERAS_3
        and strategy.num_replicas_in_sync > 1
        and hasattr(model, "_maybe_symbolic_build")
        and hasattr(model, "_symbolic_build")
    )
    if not applies:
        yield
        return

    def maybe_symbolic_build(iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(lambda v: _local_part(v, strategy), next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build  # shadows the method on this instance
    try:
        yield
    finally:
        del model._maybe_symbolic_build


def _local_part(value: Any, strategy: tf.distribute.Strategy) -> Any:
    if not isinstance(value, tf.distribute.DistributedValues):
        return value
    parts = strategy.experimental_local_results(value)
    for part in parts:  # a replica may have an empty slice of a partial batch
        if part.shape.rank and part.shape[0] != 0:
            return part
    return parts[0]
