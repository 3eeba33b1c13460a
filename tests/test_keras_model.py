"""The compiled-model recipe both halves of kerasfed rebuild models from."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kerasfed._compat import keras
from kerasfed._keras_model import ModelError, ModelRecipe, ModelTypeError, resolve_compiled_model

pytestmark = pytest.mark.distributed  # no TFF needed: runs under both TF versions


def _model(compile: bool = True) -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    if compile:
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.5),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    return model


def test_rebuild_has_same_weights_and_compile_settings_but_new_variables():
    original = _model()
    rebuilt = ModelRecipe.from_model(original, caller="t").build()
    for a, b in zip(original.get_weights(), rebuilt.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert rebuilt.optimizer is not original.optimizer
    config = rebuilt.optimizer.get_config()
    assert config["momentum"] == pytest.approx(0.5)
    assert config["learning_rate"] == pytest.approx(0.05)
    x, y = np.ones((4, 3), "float32"), np.array([0, 1, 0, 1])
    rebuilt.fit(x, y, verbose=0)
    assert not np.allclose(original.get_weights()[0], rebuilt.get_weights()[0])  # shares nothing


def test_unregistered_custom_loss_falls_back_to_the_live_function():
    def my_loss(y_true, y_pred):  # not registered: its serialized name cannot be resolved
        return tf.reduce_mean(tf.square(y_true - y_pred), axis=-1) * 2.0

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=my_loss)
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 1), "float32")
    rebuilt = ModelRecipe.from_model(model, caller="t").build()
    expected = 2.0 * float(np.mean(np.square(model.predict(x, verbose=0))))
    assert rebuilt.evaluate(x, y, verbose=0) == pytest.approx(expected, rel=1e-5)


def test_function_returning_a_model_is_called():
    assert isinstance(resolve_compiled_model(_model, caller="t"), keras.Model)


def test_not_a_model():
    with pytest.raises(ModelTypeError, match=r"t: expected `model` to be a compiled keras.Model.*int"):
        resolve_compiled_model(3, caller="t")


def test_function_returning_something_else():
    with pytest.raises(ModelTypeError, match=r"the `model` function must return.*Received a function returning str"):
        resolve_compiled_model(lambda: "model", caller="t")


def test_uncompiled_model():
    with pytest.raises(ModelError, match=r"is not compiled. Call `model.compile"):
        resolve_compiled_model(_model(compile=False), caller="t")


def test_unbuilt_model():
    model = keras.Sequential([keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ModelError, match=r"has no weights yet.*keras.Input"):
        resolve_compiled_model(model, caller="t")


def test_subclassed_model_without_config_is_refused_clearly():
    class Custom(keras.Model):
        def __init__(self, layer, **kwargs):  # a layer object: Keras cannot serialize it
            super().__init__(**kwargs)
            self.inner = layer

        def call(self, inputs):
            return self.inner(inputs)

    model = Custom(keras.layers.Dense(2))
    model(np.ones((1, 3), "float32"))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ModelError, match=r"(?s)cannot rebuild the model.*Subclassed models need `get_config\(\)`"):
        ModelRecipe.from_model(model, caller="t")
