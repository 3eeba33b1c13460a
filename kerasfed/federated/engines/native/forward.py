"""The Keras model as a function of its weights: ``loss_and_grads(params, state, x, y, mask, sw)``.

``x`` and ``y`` may be structures (several inputs; several outputs as a tuple in
``OutputLayout`` order); the predictions come back in that same form, and ``sw``
(None, or one sample weight per row) weighs the loss.

Training many clients in one computation needs the model's forward pass with the
weights as *inputs* rather than as the model's variables. Two ways to get it:

* ``StatelessForward``: no variable is read or written, so it can run under
  ``tf.vectorized_map`` with a different set of weights per client. Keras 3 has
  this built in (``Model.stateless_call``). Keras 2 has not; there the layers'
  weight attributes (``Dense.kernel`` ...) are pointed at the given tensors while
  the model is traced, the technique of TFF's ``functional_model_from_keras``
  without cloning the model. Keras 2 models whose layers update variables in the
  forward pass (BatchNormalization) or hold weights where no attribute points
  (weight regularizers capture the variable itself) cannot be made stateless.
* ``VariableForward``: writes the given weights into the model's variables, runs
  the model, and differentiates with respect to the variables. Works for every
  model (BatchNormalization, regularizers, subclassed), one client at a time.

Both return the same things, so the client-training code above them is one.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import tensorflow as tf

from kerasfed._compat import KERAS_3, keras
from kerasfed.federated.output_parts import match_rank  # noqa: F401  (re-exported)

# Layers whose output for one example depends only on that example (and the
# weights): padding a batch with masked rows leaves the real rows' results as
# they are. Lockstep training pads clients to a common length, so it is limited
# to models made of these.
PER_EXAMPLE_LAYERS = frozenset({
    "InputLayer", "Dense", "EinsumDense", "Activation", "Flatten", "Reshape", "Permute",
    "RepeatVector", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Embedding",
    "LayerNormalization", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "Concatenate", "Dot", "Rescaling", "Identity", "Conv1D", "Conv2D", "Conv3D",
    "DepthwiseConv2D", "SeparableConv2D", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
    "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D",
    "UpSampling2D", "CategoryEncoding", "Normalization", "Sequential", "Functional",
})
CONVOLUTION_LAYERS = frozenset({
    "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D",
})


def variables(weights: Sequence[Any]) -> list:
    """The variables among a model's weights. Keras 2 lookup layers (StringLookup,
    TextVectorization) list a vocabulary handler there, which is no variable: the
    vocabulary is fixed, and travels with the model outside the training state."""
    return [w for w in weights if hasattr(w, "shape") and hasattr(w, "dtype")]


def layer_classes(model: keras.Model) -> list[str]:
    """Class names of every layer inside ``model`` (nested models included)."""
    names = []
    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        names.append(type(layer).__name__)
    return names


def batch_loss_fn(loss: Any) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """``(y, pred, mask, sw) -> (sum of per-example loss over real rows, elements per example)``.

    ``loss`` is a ``keras.losses.Loss`` rebuilt with no reduction (or an
    ``output_parts.StructuredLoss``). Keras' ``SUM_OVER_BATCH_SIZE`` mean of a
    batch is then ``sum / (count * elements)``, whatever the loss's per-example
    shape ([B] for classification, [B, T] per time step); sample weights ``sw``
    multiply the examples' losses, and ``count`` stays the number of real rows,
    as Keras divides by the batch size, not by the weights' sum.
    """

    def per_example(y_true, y_pred, mask, sw=None):
        if not tf.nest.is_nested(y_true):
            y_true = match_rank(y_true, y_pred)
        weight = mask if sw is None else mask * sw
        if not tf.nest.is_nested(y_pred) and y_pred.shape.rank is not None and y_pred.shape.rank > 2:
            # A loss per time step ([B, T] from [B, T, C]): the row weights as [B, 1], so
            # that no broadcast is left to Keras (its gradient fails on a [B] weight
            # inside the sequential form's loop).
            weight = tf.reshape(weight, [-1] + [1] * (y_pred.shape.rank - 2))
        values = loss(y_true, y_pred, sample_weight=weight)
        first = tf.nest.flatten(y_pred)[0]
        elements = tf.cast(tf.size(values), values.dtype) / tf.cast(
            tf.maximum(tf.shape(first)[0], 1), values.dtype
        )
        if values.shape.rank == 0:  # a loss that reduced itself: nothing to mask
            return values * tf.reduce_sum(mask), tf.ones((), values.dtype)
        return tf.reduce_sum(values), elements

    return per_example


class StatelessForward:
    """Loss and gradients of a model at weights given as tensors (no variables)."""

    def __init__(self, model: keras.Model, loss: Any, flatten: Callable[[Any], Any] = None):
        self.model = model
        self._loss = batch_loss_fn(loss)
        self._flatten = flatten or (lambda pred: pred)
        self.trainable = variables(model.trainable_variables)
        # Keras 3 counts seed generators' states among the non-trainable
        # variables (not among `weights`); they ride along unchanged.
        self.non_trainable = variables(model.non_trainable_variables)
        self._slots = None if KERAS_3 else _weight_attributes(model)
        self._call_takes_training = "training" in inspect.signature(model.call).parameters

    @classmethod
    def supported(cls, model: keras.Model) -> str | None:
        """None if ``model`` can run statelessly, else the reason it cannot."""
        if KERAS_3:
            return None
        for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
            if type(layer).__name__ == "BatchNormalization" or "BatchNorm" in type(layer).__name__:
                return "Keras 2 BatchNormalization updates variables in the forward pass"
            config = layer.get_config() if hasattr(layer, "get_config") else {}
            for key, value in config.items():
                if key.endswith("regularizer") and value is not None:
                    return f"Keras 2 {key} on layer {layer.name!r} reads the variable itself"
        try:
            _weight_attributes(model)
        except ValueError as e:
            return str(e)
        return None

    def loss_and_grads(self, params, state, x, y, mask, sw=None):
        """Returns (grads, new_state, loss_sum, elements, predictions).

        ``loss_sum / (count * elements)`` is the batch's mean loss over its real
        rows; the gradient is that of the mean plus the model's regularization
        losses.
        """
        count = tf.reduce_sum(mask)
        with tf.GradientTape() as tape:
            tape.watch(params)
            pred, new_state, reg = self.call(params, state, x, training=True)
            loss_sum, elements = self._loss(y, pred, mask, sw)
            loss = loss_sum / (tf.maximum(count, 1.0) * elements) + reg
        grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return _dense(grads), new_state, loss_sum, elements, pred

    def call(self, params, state, x, *, training: bool):
        if KERAS_3:
            # stateless_call hands `training` to `call` as is; a subclassed model's
            # `call` may not take it (Model.__call__ would drop it).
            kwargs = {"training": training} if self._call_takes_training else {}
            pred, new_state, losses = self.model.stateless_call(
                list(params), list(state), x, return_losses=True, **kwargs
            )
            pred = self._flatten(pred)
            dtype = tf.nest.flatten(pred)[0].dtype
            reg = tf.add_n(losses) if losses else tf.zeros((), dtype)
            return pred, list(new_state), reg
        with _pointed_at(self._slots, [*params, *state]):
            pred = self._flatten(self.model(keras_inputs(x), training=training))
        return pred, list(state), tf.zeros((), tf.nest.flatten(pred)[0].dtype)


class VariableForward:
    """Loss and gradients of a model at given weights, through its own variables."""

    def __init__(self, model: keras.Model, loss: Any, flatten: Callable[[Any], Any] = None):
        self.model = model
        self._loss = batch_loss_fn(loss)
        self._flatten = flatten or (lambda pred: pred)
        self.trainable = variables(model.trainable_variables)
        self.non_trainable = variables(model.non_trainable_variables)

    def assign(self, params, state) -> None:
        for v, t in zip(self.trainable, params):
            v.assign(t)
        for v, t in zip(self.non_trainable, state):
            v.assign(t)

    def loss_and_grads(self, params, state, x, y, mask, sw=None):
        self.assign(params, state)
        count = tf.reduce_sum(mask)
        with tf.GradientTape() as tape:
            pred = self._flatten(self.model(keras_inputs(x), training=True))
            loss_sum, elements = self._loss(y, pred, mask, sw)
            loss = loss_sum / (tf.maximum(count, 1.0) * elements)
            if self.model.losses:
                loss = loss + tf.add_n(self.model.losses)
        grads = tape.gradient(
            loss, self.trainable, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        new_state = [tf.identity(v) for v in self.non_trainable]
        return _dense(grads), new_state, loss_sum, elements, pred


def keras_inputs(x: Any) -> Any:
    """``x`` as the model sees it in ``Model.fit``: Keras 2's fit turns every rank-1
    input ([B], one scalar per example) into [B, 1] (``data_adapter.expand_1d``);
    Keras 3's does not."""
    if KERAS_3:
        return x
    return tf.nest.map_structure(
        lambda t: tf.expand_dims(t, -1) if t.shape.rank == 1 else t, x)


def _dense(grads) -> list[tf.Tensor]:
    # An Embedding's gradient is IndexedSlices (the rows looked up); the update
    # rules and the stacked client outputs need dense tensors, as TFF's do.
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]


def _weight_attributes(model: keras.Model) -> list[tuple[Any, str]]:
    """(layer, attribute) holding each of the model's variables, in the order
    trainable then non-trainable; ValueError if one is held nowhere."""
    wanted = variables([*model.trainable_variables, *model.non_trainable_variables])
    where: dict[int, tuple[Any, str]] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        for name, value in vars(layer).items():
            if isinstance(value, tf.Variable) and id(value) not in where:
                where[id(value)] = (layer, name)
    missing = [v.name for v in wanted if id(v) not in where]
    if missing:
        raise ValueError(f"Keras 2 layers keep the weights {missing} where kerasfed cannot swap them")
    return [where[id(v)] for v in wanted]


@contextlib.contextmanager
def _pointed_at(slots: Sequence[tuple[Any, str]], tensors: Sequence[tf.Tensor]) -> Iterator[None]:
    # object.__setattr__: Keras 2's Layer.__setattr__ would track the tensor as a weight.
    saved = [getattr(layer, name) for layer, name in slots]
    try:
        for (layer, name), tensor in zip(slots, tensors):
            object.__setattr__(layer, name, tensor)
        yield
    finally:
        for (layer, name), value in zip(slots, saved):
            object.__setattr__(layer, name, value)
