"""Shared data for the aggregation benchmarks: digits (in scikit-learn), or MNIST."""

from __future__ import annotations

import numpy as np


def iid_clients(data_dir: str | None, num_clients: int, per_client: int | None = None):
    """(clients {id: (x, y)}, test (x, y), name): IID shards, flat features in [0, 1]."""
    if data_dir:
        from kerasfed.datasets import load_mnist

        (x, y), (xt, yt) = load_mnist(data_dir)
        x, xt = x.reshape(len(x), -1) / 255.0, xt.reshape(len(xt), -1) / 255.0
        name = "MNIST"
    else:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x, y, xt, yt = x[:1400] / 16.0, y[:1400], x[1400:] / 16.0, y[1400:]
        name = "digits"
    x, xt = x.astype("float32"), xt.astype("float32")
    y, yt = y.astype("int32"), yt.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    if per_client:
        order = order[:num_clients * per_client]
    clients = {f"c{i:03d}": (x[order[i::num_clients]], y[order[i::num_clients]])
               for i in range(num_clients)}
    return clients, (xt, yt), name


def mlp(features: int, seed: int = 0, learning_rate: float = 0.3):
    from kerasfed._compat import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
