"""Model and data shared by the data-parallel test scripts and their tests.

Deterministic on purpose: the tests compare weights trained by fit_distributed
(several replicas or workers) with plain ``model.fit`` on one device.
"""

from __future__ import annotations

import numpy as np

from kerasfed._compat import keras

FEATURES = 6
CLASSES = 3
LEARNING_RATE = 0.1


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples of a 3-class problem, features float32, labels int32."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    w = rng.normal(size=(FEATURES, CLASSES))
    y = np.argmax(x @ w + 0.3 * rng.normal(size=(n, CLASSES)), axis=1).astype("int32")
    return x, y


def initial_weights() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    shapes = [(FEATURES, 8), (8,), (8, CLASSES), (CLASSES,)]
    return [(0.5 * rng.normal(size=s)).astype("float32") for s in shapes]


def build_model(model_class: type | None = None) -> "keras.Model":
    """A compiled MLP with fixed initial weights (plain SGD: no optimizer state)."""
    cls = model_class or keras.Sequential
    model = cls(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.set_weights(initial_weights())
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def save_weights(path: str, model: "keras.Model", **extra) -> None:
    np.savez(path, *model.get_weights(), **extra)


def load_weights(path: str) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len([k for k in f.files if k.startswith("arr_")]))]
