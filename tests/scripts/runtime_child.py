"""A training process for tests/test_runtime.py: one FedAvg round in ``federated_runtime``.

Usage: ``python runtime_child.py MODE QUIET``. It prints ``ready <worker pid>`` after
the round, then, by MODE:

* ``wait``: blocks on stdin inside the block, so that the test can SIGKILL it there;
* ``exit``: leaves the block, runs one computation in the execution context TFF
  installs by itself (which starts TFF's own worker), and exits normally.

QUIET is ``1`` or ``0`` (the ``quiet`` argument). Nothing else is printed to stdout, so
the test can tell the worker's output apart from the child's.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from kerasfed.federated.engines.tff.runtime import federated_runtime


def main(mode: str, quiet: bool) -> None:
    rng = np.random.default_rng(0)
    data = [
        tf.data.Dataset.from_tensor_slices(
            (rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 1)).astype(np.float32))
        ).batch(4)
        for _ in range(2)
    ]

    def model_fn():
        keras_model = tf.keras.Sequential(
            [tf.keras.layers.InputLayer((3,)), tf.keras.layers.Dense(1)]
        )
        return tff.learning.models.from_keras_model(
            keras_model, input_spec=data[0].element_spec, loss=tf.keras.losses.MeanSquaredError()
        )

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1)
    )
    with federated_runtime(quiet=quiet) as info:
        process.next(process.initialize(), data)
        print(f"ready {info.pid}", flush=True)
        if mode == "wait":
            sys.stdin.readline()

    @tff.tensorflow.computation(tf.int32)
    def add_one(x):
        return x + 1

    assert add_one(1) == 2


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1")
