"""Child process for the MirroredStrategy tests: `python dist_mirrored.py OUT.json`.

The CPU must be split into two logical devices before TensorFlow initialises, which
a pytest process that already ran TensorFlow cannot do; so this script splits it,
trains with fit_distributed(strategy="mirrored") in several ways and with plain
``model.fit`` on one device, and writes what the tests check to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasfed.distributed.devices import use_logical_cpus  # noqa: E402

use_logical_cpus(2)  # before anything runs in TensorFlow

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dist_common  # noqa: E402
from kerasfed.distributed.fit import fit_distributed  # noqa: E402
from kerasfed.distributed.strategies import get_strategy  # noqa: E402

EPOCHS, BATCH = 3, 16


def max_diff(a, b) -> float:
    return float(max(np.abs(u - v).max() for u, v in zip(a, b)))


def reference(x, y, **kwargs):
    """Plain model.fit on one device (CPU:0), no shuffling."""
    model = dist_common.build_model()
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, **kwargs)
    return model.get_weights(), history.history


def main() -> None:
    out = {}
    x, y = dist_common.make_data(64)
    ref_weights, ref_history = reference(x, y)
    strategy = get_strategy("mirrored")
    out["replicas"] = strategy.num_replicas_in_sync
    out["devices"] = list(strategy.extended.worker_devices)

    # A model built outside any scope: rebuilt inside, the original untouched.
    original = dist_common.build_model()
    history = fit_distributed(
        original, x, y, strategy="mirrored", batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0
    )
    out["outside_diff"] = max_diff(history.model.get_weights(), ref_weights)
    out["outside_loss_diff"] = float(np.abs(np.subtract(history.history["loss"], ref_history["loss"])).max())
    out["outside_is_rebuilt"] = history.model is not original
    out["outside_trained_strategy_is_mirrored"] = history.model.distribute_strategy is strategy
    out["original_unchanged"] = max_diff(original.get_weights(), dist_common.initial_weights()) == 0.0
    out["original_usable_loss"] = float(original.evaluate(x, y, verbose=0)[0])
    fresh = dist_common.build_model()
    out["fresh_loss"] = float(fresh.evaluate(x, y, verbose=0)[0])

    # A function: called inside the scope.
    history = fit_distributed(
        dist_common.build_model, x, y, strategy="mirrored", batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0
    )
    out["function_diff"] = max_diff(history.model.get_weights(), ref_weights)

    # A model built under the strategy's scope: trained as it is.
    with strategy.scope():
        inside = dist_common.build_model()
    history = fit_distributed(
        inside, x, y, strategy="mirrored", batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0
    )
    out["inside_is_same"] = history.model is inside
    out["inside_diff"] = max_diff(inside.get_weights(), ref_weights)

    # A tf.data.Dataset of global batches, with validation data.
    vx, vy = dist_common.make_data(16, seed=5)
    ref_val_weights, ref_val_history = reference(x, y, validation_data=(vx, vy))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    history = fit_distributed(
        dist_common.build_model, dataset, strategy="mirrored", epochs=EPOCHS, verbose=0,
        validation_data=tf.data.Dataset.from_tensor_slices((vx, vy)).batch(BATCH),
    )
    out["dataset_diff"] = max_diff(history.model.get_weights(), ref_val_weights)
    out["dataset_val_loss_diff"] = float(
        np.abs(np.subtract(history.history["val_loss"], ref_val_history["val_loss"])).max()
    )

    # A dataset_fn: each replica's pipeline takes every second example.
    def dataset_fn(context):
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        return ds.batch(context.get_per_replica_batch_size(BATCH))

    history = fit_distributed(
        dist_common.build_model, dataset_fn, strategy="mirrored", epochs=EPOCHS, steps_per_epoch=64 // BATCH, verbose=0
    )
    out["dataset_fn_diff"] = max_diff(history.model.get_weights(), ref_weights)

    # Sample weights and validation_split pass through with their Keras meaning.
    weights = np.random.default_rng(3).uniform(0.5, 2.0, size=64).astype("float32")
    ref_sw_weights, ref_sw_history = reference(x, y, sample_weight=weights, validation_split=0.25)
    history = fit_distributed(
        dist_common.build_model, x, y, strategy="mirrored", batch_size=BATCH, epochs=EPOCHS, shuffle=False,
        verbose=0, sample_weight=weights, validation_split=0.25,
    )
    out["sample_weight_diff"] = max_diff(history.model.get_weights(), ref_sw_weights)
    out["sample_weight_val_loss_diff"] = float(
        np.abs(np.subtract(history.history["val_loss"], ref_sw_history["val_loss"])).max()
    )

    # A global batch smaller than the number of replicas leaves some idle: warned.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_distributed(dist_common.build_model, x[:4], y[:4], strategy="mirrored", batch_size=1, verbose=0)
    out["small_batch_warning"] = any("smaller than the 2 replicas" in str(w.message) for w in caught)

    with open(sys.argv[1], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
