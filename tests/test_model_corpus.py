"""A corpus of ordinary Keras models through ``fit_federated``'s native engine.

Each model is one a Keras user trains with ``model.fit`` every day. One client,
one round, ``local_epochs=E``, ``shuffle=False`` and the default server SGD at
rate 1.0 is exactly ``model.fit(shuffle=False, epochs=E)`` on that client's data:
the weights must agree to 1e-5 in both Keras generations. Models with random
layers (Dropout) cannot agree draw for draw, so they only have to train to
finite weights that differ from the start.
"""

from __future__ import annotations

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import KERAS_3, keras

pytestmark = pytest.mark.native

ROWS, BATCH = 26, 8  # a last batch of 2: uneven batches count


def _rng(seed=0):
    return np.random.default_rng(seed)


def _dense_data(features=6, classes=3):
    rng = _rng()
    return (rng.normal(size=(ROWS, features)).astype("float32"),
            rng.integers(0, classes, ROWS).astype("int32"))


def _mlp_sparse():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, _dense_data()


def _mlp_onehot_adam():
    x, y = _dense_data()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.CategoricalCrossentropy(from_logits=True), metrics=[keras.metrics.CategoricalAccuracy()])
    return model, (x, np.eye(3, dtype="float32")[y])


def _regression_mse():
    rng = _rng(1)
    x = rng.normal(size=(ROWS, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 2))).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"),
                              keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse", metrics=["mae"])
    return model, (x, y)


def _binary_sigmoid():
    rng = _rng(2)
    x = rng.normal(size=(ROWS, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss="binary_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc")])
    return model, (x, y)


def _cnn():
    rng = _rng(3)
    x = rng.normal(size=(ROWS, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, ROWS).astype("int32")
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 3, activation="relu"),
        keras.layers.MaxPooling2D(), keras.layers.Flatten(),
        keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, (x, y)


def _embedding_pooling():
    rng = _rng(4)
    x = rng.integers(0, 20, (ROWS, 7)).astype("int32")
    y = rng.integers(0, 2, ROWS).astype("int32")
    model = keras.Sequential([
        keras.Input((7,), dtype="int32"), keras.layers.Embedding(20, 4),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, (x, y)


def _gru_sequence():
    rng = _rng(5)
    x = rng.normal(size=(ROWS, 5, 3)).astype("float32")
    y = rng.integers(0, 3, ROWS).astype("int32")
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, (x, y)


def _l2_regularized():
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.l2(0.01)),
        keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, _dense_data()


def _batchnorm():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8),
                              keras.layers.BatchNormalization(), keras.layers.Activation("relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, _dense_data()


def _custom_loss_function():
    def squared_hinge_sum(y_true, y_pred):  # a plain function, as users write them
        return keras.ops.sum(keras.ops.square(keras.ops.maximum(1.0 - y_true * y_pred, 0.0)),
                             axis=-1) if KERAS_3 else \
            keras.backend.sum(keras.backend.square(keras.backend.maximum(1.0 - y_true * y_pred, 0.0)),
                              axis=-1)

    rng = _rng(6)
    x = rng.normal(size=(ROWS, 4)).astype("float32")
    y = np.sign(rng.normal(size=(ROWS, 2))).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=squared_hinge_sum)
    return model, (x, y)


def _functional_residual():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(6, activation="relu")(inputs)
    h = keras.layers.Add()([inputs, h])
    h = keras.layers.LayerNormalization()(h)
    outputs = keras.layers.Dense(3, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, _dense_data()


def _dropout():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, _dense_data()


def _sequence_tagging():
    rng = _rng(8)
    x = rng.integers(1, 30, (ROWS, 6)).astype("int32")
    y = rng.integers(0, 3, (ROWS, 6)).astype("int32")  # one class per time step
    model = keras.Sequential([
        keras.Input((6,), dtype="int32"), keras.layers.Embedding(30, 4),
        keras.layers.LSTM(5, return_sequences=True),
        keras.layers.TimeDistributed(keras.layers.Dense(3, activation="softmax"))])
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model, (x, y)


def _hashing_category_encoding():
    rng = _rng(9)
    x = rng.integers(0, 1000, (ROWS, 1)).astype("int64")
    y = rng.integers(0, 2, ROWS).astype("float32")
    model = keras.Sequential([
        keras.Input((1,), dtype="int64"), keras.layers.Hashing(num_bins=8),
        keras.layers.CategoryEncoding(num_tokens=8, output_mode="one_hot"),
        keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model, (x, y)


def _mixed_string_and_numeric_inputs():
    rng = _rng(10)
    words = np.array(["red", "green", "blue", "cyan"])
    colour = words[rng.integers(0, 4, ROWS)]
    size = rng.normal(size=(ROWS, 2)).astype("float32")
    y = rng.integers(0, 2, ROWS).astype("int32")
    colour_in = keras.Input((), dtype="string", name="colour")
    size_in = keras.Input((2,), name="size")
    lookup = keras.layers.StringLookup(vocabulary=list(words[:3]), output_mode="one_hot")
    h = keras.layers.Concatenate()([lookup(colour_in), size_in])
    out = keras.layers.Dense(2, activation="softmax")(h)
    model = keras.Model({"colour": colour_in, "size": size_in}, out)
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model, ({"colour": colour, "size": size}, y)


def _two_heads_dict_with_sample_weights():
    rng = _rng(11)
    x = rng.normal(size=(ROWS, 5)).astype("float32")
    y = {"kind": rng.integers(0, 3, ROWS).astype("int32"),
         "amount": rng.normal(size=(ROWS, 1)).astype("float32")}
    w = rng.uniform(0.2, 2.0, ROWS).astype("float32")
    inputs = keras.Input((5,))
    h = keras.layers.Dense(6, activation="relu")(inputs)
    model = keras.Model(inputs, {
        "kind": keras.layers.Dense(3, activation="softmax", name="kind")(h),
        "amount": keras.layers.Dense(1, name="amount")(h)})
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss={"kind": "sparse_categorical_crossentropy", "amount": "mse"},
                  loss_weights={"kind": 1.0, "amount": 0.5},
                  metrics={"kind": ["accuracy"], "amount": ["mae"]})
    return model, (x, y, w)


EXACT = {
    "mlp_sparse": _mlp_sparse,
    "mlp_onehot_adam_logits": _mlp_onehot_adam,
    "regression_mse_momentum": _regression_mse,
    "binary_sigmoid_auc": _binary_sigmoid,
    "cnn": _cnn,
    "embedding_pooling": _embedding_pooling,
    "gru_sequence": _gru_sequence,
    "l2_regularized": _l2_regularized,
    "batchnorm": _batchnorm,
    "custom_loss_function": _custom_loss_function,
    "functional_residual": _functional_residual,
    "sequence_tagging_lstm": _sequence_tagging,
    "hashing_category_encoding": _hashing_category_encoding,
    "mixed_string_and_numeric_inputs": _mixed_string_and_numeric_inputs,
    "two_heads_dict_sample_weights": _two_heads_dict_with_sample_weights,
}


def _twins(build, seed=7):
    """Two copies of the same model (same initial weights) and its data."""
    keras.utils.set_random_seed(seed)
    model, data = build()
    keras.utils.set_random_seed(seed)
    twin, _ = build()
    twin.set_weights(model.get_weights())
    return model, twin, data


def _max_diff(a, b):
    return max(float(np.abs(np.asarray(p) - np.asarray(q)).max()) for p, q in zip(a, b))


@pytest.mark.parametrize("name", sorted(EXACT))
def test_one_client_round_equals_model_fit(name):
    model, twin, data = _twins(EXACT[name])
    history = kerasfed.fit_federated(
        model, {"only": data}, rounds=1, local_epochs=2, batch_size=BATCH, shuffle=False,
        engine="native", verbose=0)
    x, y, *w = data
    if KERAS_3:  # Keras 3's fit takes strings as tensors, not numpy arrays (NOTES.md)
        import tensorflow as tf  # noqa: PLC0415

        x = {k: tf.constant(v) if getattr(v, "dtype", None) is not None and v.dtype.kind == "U"
             else v for k, v in x.items()} if isinstance(x, dict) else x
    keras_history = twin.fit(x, y, sample_weight=w[0] if w else None, batch_size=BATCH,
                             epochs=2, shuffle=False, verbose=0)
    assert _max_diff(history.model.get_weights(), twin.get_weights()) < 1e-5
    # Each training metric Keras reports is reported too (the round's mean over
    # both local epochs, so only its presence and finiteness are compared here).
    for key in keras_history.history:
        assert key in history.history, (key, sorted(history.history))
        assert np.isfinite(history.history[key][0])


def test_dropout_model_trains():
    model, _, data = _twins(_dropout)
    start = model.get_weights()
    history = kerasfed.fit_federated(model, {"a": data, "b": data}, rounds=2, batch_size=BATCH,
                                     engine="native", seed=0, verbose=0)
    weights = history.model.get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    assert _max_diff(weights, start) > 0
