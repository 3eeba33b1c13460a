"""A small federated training with a checkpoint_dir, run as a child process.

Usage: ``fed_resume.py CHECKPOINT_DIR OUT.npz``. Prints ``ROUND k`` (flushed)
after each completed round, from a callback, so that a test can SIGKILL it after
a chosen round; at the end saves the final weights to OUT.npz and prints
``DONE n`` with the number of rounds in the returned History.

``make_problem`` and ``FIT_KWARGS`` are imported by tests/test_federated_checkpoint.py
to run the same training uninterrupted in the test process.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

FIT_KWARGS = dict(
    rounds=5, clients_per_round=3, local_epochs=2, batch_size=4, seed=7, verbose=0
)


def make_problem():
    """A compiled model with fixed initial weights and 6 clients of different sizes."""
    from kerasfed._compat import keras  # noqa: PLC0415

    rng = np.random.default_rng(0)
    clients = {}
    for i, n in enumerate((5, 9, 12, 4, 7, 10)):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
        clients[f"client_{i}"] = (x, y)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)]
    )
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in model.weights])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model, clients


def main(checkpoint_dir: str, out: str) -> None:
    from kerasfed._compat import keras  # noqa: PLC0415
    from kerasfed.federated.fit import fit_federated  # noqa: PLC0415

    class PrintRounds(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(f"ROUND {epoch + 1}", flush=True)

    model, clients = make_problem()
    history = fit_federated(
        model, clients, checkpoint_dir=checkpoint_dir, callbacks=[PrintRounds()], **FIT_KWARGS
    )
    np.savez(out, *model.get_weights())
    print(f"DONE {len(history.history['loss'])}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
