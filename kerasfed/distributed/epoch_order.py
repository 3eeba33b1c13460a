"""Global batches of in-memory arrays whose order depends only on ``(seed, epoch)``.

``tf.data``'s ``shuffle(reshuffle_each_iteration=True)`` and Keras's own array
shuffling both draw epoch ``e``'s order from a generator that has already drawn
``e`` orders in this process. A job restarted from its backup at epoch ``e`` starts
that generator again, so it trains on epoch 0's order once more and its weights
drift away from an uninterrupted run's. Here epoch ``e``'s order is a stateless
function of ``(seed, e)``, and the stream simply starts at the epoch Keras resumes
at: a resumed run sees exactly the batches an uninterrupted run would have seen.

The stream is endless (``model.fit`` then keeps one iterator over all epochs and
needs ``steps_per_epoch``, which :func:`training_batches` returns). Each epoch's
last, partial batch is kept, as ``model.fit`` keeps it.
"""

from __future__ import annotations

import math
import warnings

import tensorflow as tf

from kerasfed._compat import keras
from kerasfed.distributed.data import Inputs, element_tensors

_PAD = -1  # index of a padding slot: dropped before the examples are gathered
_ENDLESS = 2**62


def training_batches(
    inputs: Inputs,
    *,
    batch_size: int,
    shuffle: bool | str,
    seed: int,
    first_epoch: int = 0,
    steps_per_epoch: int | None = None,
) -> tuple[tf.data.Dataset, int]:
    """The endless stream of global batches from ``first_epoch`` on, and the steps per epoch.

    Args:
        inputs: Checked arrays.
        batch_size: The global batch size.
        shuffle: ``True`` permutes the examples every epoch, ``"batch"`` permutes
            the full batches (the partial one stays last), ``False`` keeps the order.
        seed: Shuffle seed; the same on every worker.
        first_epoch: The epoch ``model.fit`` starts at (after a restore from a backup).
        steps_per_epoch: The user's ``steps_per_epoch``; ``None`` means one pass
            over the data, as in Keras.

    Returns:
        The dataset (sharded by data across workers) and the steps per epoch to
        give ``model.fit``.
    """
    n = inputs.num_examples
    batches_per_pass = math.ceil(n / batch_size)
    steps = steps_per_epoch or batches_per_pass
    # The user's steps_per_epoch may cut passes anywhere: start at the pass holding
    # the first step of first_epoch and skip the steps before it.
    first_pass, skip = divmod(first_epoch * steps, batches_per_pass)
    order = _pass_order(n, batch_size, shuffle, seed)
    elements = element_tensors(inputs)

    def gather(indices: tf.Tensor):
        indices = tf.boolean_mask(indices, indices != _PAD)
        return tf.nest.map_structure(lambda t: tf.gather(t, indices), elements)

    dataset = (
        tf.data.Dataset.range(first_pass, _ENDLESS)
        .flat_map(lambda p: tf.data.Dataset.from_tensor_slices(order(p)))
        .batch(batch_size)
        .skip(skip)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE), steps


def _pass_order(n: int, batch_size: int, shuffle: bool | str, seed: int):
    """``order(p)``: the example indices of pass ``p``, padded to whole batches."""
    full = n // batch_size
    pad = tf.fill([math.ceil(n / batch_size) * batch_size - n], tf.constant(_PAD, tf.int64))

    def order(p: tf.Tensor) -> tf.Tensor:
        key = tf.stack([tf.constant(seed, tf.int64), p])
        if shuffle is True:
            indices = tf.argsort(tf.random.stateless_uniform([n], seed=key), stable=True)
        elif shuffle == "batch":
            chunks = tf.argsort(tf.random.stateless_uniform([full], seed=key), stable=True)
            body = tf.reshape(chunks[:, None] * batch_size + tf.range(batch_size)[None, :], [-1])
            indices = tf.concat([body, tf.range(full * batch_size, n)], 0)
        else:
            indices = tf.range(n)
        return tf.concat([tf.cast(indices, tf.int64), pad], 0)

    return order


class FirstEpochCheck(keras.callbacks.Callback):
    """Warns when ``model.fit`` starts at another epoch than the stream was built for.

    The stream starts where :func:`kerasfed.distributed.backup.resume_epoch` read
    that Keras would resume; should Keras restore another backup (say, a damaged
    file made it fall back to the previous copy), the run still trains but on
    other batches than an uninterrupted run, and the user should know.
    """

    def __init__(self, first_epoch: int):
        super().__init__()
        self.first_epoch = first_epoch
        self._checked = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._checked:
            return
        self._checked = True
        if epoch != self.first_epoch:
            warnings.warn(
                f"fit_distributed prepared the training batches from epoch {self.first_epoch}, "
                f"but training resumed at epoch {epoch}; this run's data order differs from "
                f"an uninterrupted run's.",
                stacklevel=2,
            )
