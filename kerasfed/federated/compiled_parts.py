"""The compiled loss and metrics of a Keras model, as fresh objects for any engine.

Engines need new loss and metric objects (TFF builds them inside its own graphs;
the native engine keeps its own metric state per round), equal to what
``compile()`` made: strings and functions become objects named as Keras names
them in ``History`` (``"accuracy"`` stays ``"accuracy"``), and
``"accuracy"``/``"acc"``/``"crossentropy"``/``"ce"`` resolve by the labels' and
outputs' shapes exactly as ``compile()`` does (binary if one output unit,
sparse if the labels have a lower rank or one column, else categorical).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from kerasfed._compat import KERAS_3, keras
from kerasfed._keras_model import ModelError

# Keras names that `compile()` resolves by the labels' and outputs' shapes.
_SHAPE_RESOLVED_METRICS = ("accuracy", "acc", "crossentropy", "ce")


def _loss_function_wrapper() -> type:
    # Not public in either generation; its place moved in Keras 3.
    if KERAS_3:
        from keras.src.losses.losses import LossFunctionWrapper  # noqa: PLC0415
    else:
        from keras.src.losses import LossFunctionWrapper  # noqa: PLC0415

    return LossFunctionWrapper


@dataclasses.dataclass(frozen=True)
class CompiledParts:
    """Factories of the model's compiled loss and metrics.

    Attributes:
      loss: Returns a fresh ``keras.losses.Loss`` equal to the compiled loss (mean
        over the batch, as ``compile()`` reduces it).
      loss_per_example: Returns the same loss without reduction.
      metrics: Functions each returning a fresh ``keras.metrics.Metric``.
    """

    loss: Callable[[], Any]
    loss_per_example: Callable[[], Any]
    metrics: tuple[Callable[[], Any], ...]

    @classmethod
    def of(cls, recipe: Any, label_spec: Any, output_shape: Any, *,
           layout: Any = None, structured: bool = False) -> CompiledParts:
        """Reads ``recipe``'s compiled loss and metrics.

        Args:
          recipe: The model's ``ModelRecipe``.
          label_spec: The labels' spec (a tuple of them in ``layout`` order for
            several outputs).
          output_shape: The model's output shape (a tuple of them likewise).
          layout: The model's ``OutputLayout`` (None: one output).
          structured: Build what the native engine takes beyond TFF: per-output
            losses and metrics, ``loss_weights`` and ``weighted_metrics``.

        Raises:
          ModelError: A loss or metrics that do not fit the outputs, or ones Keras
            cannot rebuild; per-output ones where not ``structured``.
        """
        if structured:
            from kerasfed.federated import output_parts  # noqa: PLC0415

            return output_parts.structured_parts(cls, recipe, label_spec, output_shape, layout)
        loss, loss_per_example = _loss_constructors(recipe.new_loss())
        metrics = _metric_constructors(recipe.compile_args.get("metrics"), label_spec, output_shape)
        return cls(loss=loss, loss_per_example=loss_per_example, metrics=tuple(metrics))


def _loss_constructors(loss: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    if isinstance(loss, (dict, list, tuple)):
        raise ModelError(
            "fit_federated's TFF engine supports models with one output and one loss. "
            f"Received a per-output loss: {loss!r}. Use engine='native'."
        )
    none = "none" if KERAS_3 else keras.losses.Reduction.NONE
    if isinstance(loss, keras.losses.Loss):
        cls, config = type(loss), loss.get_config()

        def unreduced():
            try:
                return cls.from_config({**config, "reduction": none})
            except (TypeError, ValueError):  # a custom Loss without `reduction`
                obj = cls.from_config(dict(config))
                obj.reduction = none
                return obj

        return (lambda: cls.from_config(dict(config))), unreduced
    if callable(loss):
        wrapper = _loss_function_wrapper()
        name = getattr(loss, "__name__", "loss")
        return (
            lambda: wrapper(loss, name=name),
            lambda: wrapper(loss, name=name, reduction=none),
        )
    raise ModelError(
        f"fit_federated: cannot use the compiled loss {loss!r}. Compile with a Keras loss "
        f"name, function or keras.losses.Loss."
    )


def _metric_constructors(
    metrics: Any, label_spec: tf.TensorSpec, output_shape: Any
) -> list[Callable[[], Any]]:
    if metrics is None:
        return []
    if isinstance(metrics, dict) or (
        isinstance(metrics, (list, tuple))
        and any(isinstance(m, (list, tuple, dict)) for m in metrics)
    ):
        raise ModelError(
            f"fit_federated's TFF engine supports one list of metrics for a single-output "
            f"model. Received per-output metrics: {metrics!r}. Use engine='native'."
        )
    if not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    return [_metric_constructor(m, label_spec, output_shape) for m in metrics]


def _metric_constructor(metric: Any, label_spec: tf.TensorSpec, output_shape: Any) -> Callable[[], Any]:
    if isinstance(metric, keras.metrics.Metric):
        cls, config = type(metric), metric.get_config()
        return lambda: cls.from_config(dict(config))
    if isinstance(metric, str):
        fn = _resolve_by_shape(metric, label_spec, output_shape) or keras.metrics.get(metric)
        if isinstance(fn, keras.metrics.Metric):
            # Keras 3 resolves "mae" to MeanAbsoluteError() and names it "mae" in History.
            cls, config = type(fn), {**fn.get_config(), "name": metric}
            return lambda: cls.from_config(dict(config))
        name = metric
    elif callable(metric):
        fn, name = metric, getattr(metric, "__name__", "metric")
    else:
        raise ModelError(
            f"fit_federated: cannot use the compiled metric {metric!r}. Compile with "
            f"metric names, functions or keras.metrics.Metric objects."
        )
    return lambda: keras.metrics.MeanMetricWrapper(fn, name=name)


def _resolve_by_shape(name: str, label_spec: tf.TensorSpec, output_shape: Any) -> Any:
    """Keras' ``compile()`` rule for accuracy/crossentropy by shapes."""
    if name not in _SHAPE_RESOLVED_METRICS:
        return None
    y_rank = len(label_spec.shape)
    y_last = label_spec.shape[-1] if label_spec.shape.rank else None
    p_rank, p_last = len(output_shape), output_shape[-1]
    binary = p_last == 1
    sparse = y_rank < p_rank or (y_last == 1 and p_last != 1)
    kind = "binary" if binary else "sparse_categorical" if sparse else "categorical"
    suffix = "accuracy" if name in ("accuracy", "acc") else "crossentropy"
    return getattr(keras.metrics, f"{kind}_{suffix}")
