"""Per-output losses and metrics as Keras' ``compile()`` makes them (native engine).

``compile(loss=..., loss_weights=..., metrics=..., weighted_metrics=...)`` takes a
single loss for every output, a list by position or a dict by output name, and
the same for metrics. Here they become:

* one per-example loss, ``sum_i loss_weight_i * mean over elements of loss_i``,
  so that its masked, sample-weighted sum over a batch divided by the batch's
  real examples is Keras' ``sum_over_batch_size`` total loss (both generations);
* metric objects that pick their output's labels and predictions, take the
  sample weights when they are ``weighted_metrics``, and carry the names Keras
  gives them in ``History`` (``out1_accuracy``, ``out1_weighted_accuracy``, and
  ``out1_loss`` for each output's own loss when there are several).

A single-output model without ``loss_weights`` and ``weighted_metrics`` gets the
plain objects of ``compiled_parts`` (the path every existing model takes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from kerasfed._compat import KERAS_3, keras
from kerasfed._keras_model import ModelError
from kerasfed.federated import compiled_parts as cp


def match_rank(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Labels of shape [B] against predictions [B, k] become [B, 1], as Keras'
    ``compile`` losses and metrics see them (``match_dtype_and_rank``)."""
    if y_true.shape.rank == 1 and y_pred.shape.rank == 2:
        return tf.expand_dims(y_true, -1)
    return y_true


def per_example(values: tf.Tensor) -> tf.Tensor:
    """A per-example loss ([B]) from an unreduced one ([B] or [B, T, ...])."""
    if values.shape.rank is not None and values.shape.rank > 1:
        return tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    return values


class StructuredLoss:
    """``(y, pred, sample_weight) -> [B]``: the weighted sum of the outputs' losses.

    ``y`` and ``pred`` are tuples in output order (or single tensors for one output).
    """

    def __init__(self, losses: Sequence[Any], weights: Sequence[float], single: bool):
        self._losses = list(losses)
        self._weights = list(weights)
        self._single = single

    def __call__(self, y_true, y_pred, sample_weight=None):
        ys = (y_true,) if self._single else tuple(y_true)
        preds = (y_pred,) if self._single else tuple(y_pred)
        total = None
        for loss, weight, yt, yp in zip(self._losses, self._weights, ys, preds):
            if loss is None or weight == 0:
                continue
            values = per_example(loss(match_rank(yt, yp), yp, sample_weight=sample_weight))
            values = tf.cast(values, tf.float32) * weight
            total = values if total is None else total + values
        if total is None:
            raise ModelError("fit_federated: the model is compiled with no loss for any output.")
        return total


class OutputMetric:
    """A Keras metric on one output (or the whole output), named as ``History`` names it.

    Keeps the interface the engines use: ``name``, ``variables``, ``reset_state()``,
    ``result()``; ``update(y, pred, weight, sample_weight)`` replaces
    ``update_state``. ``weight`` is the engine's mask (padding rows and dropped
    clients count 0); ``sample_weight`` the user's, taken by weighted metrics and
    by per-output losses only, as Keras does.
    """

    def __init__(self, metric: Any, *, index: int | None, weighted: bool, name: str,
                 loss: Any = None):
        self.metric = metric
        self.index = index
        self.weighted = weighted
        self.name = name
        self.loss = loss  # set for an output's loss tracker (metric is then a Mean)

    @property
    def variables(self):
        return self.metric.variables

    def reset_state(self) -> None:
        self.metric.reset_state()

    def result(self):
        return self.metric.result()

    def update(self, y, pred, weight, sample_weight=None) -> None:
        if self.index is not None:
            y, pred = y[self.index], pred[self.index]
        y = match_rank(y, pred)
        if self.loss is not None:
            values = tf.cast(per_example(self.loss(y, pred)), tf.float32)
            if sample_weight is not None:
                values = values * sample_weight
            self.metric.update_state(values, sample_weight=weight)
            return
        if self.weighted and sample_weight is not None:
            weight = sample_weight if weight is None else weight * sample_weight
        self.metric.update_state(y, pred, sample_weight=weight)


def update_metrics(metrics: Sequence[Any], y, pred, weight, sample_weight=None) -> None:
    """Updates the engine's metric objects with one batch (or one client's batches)."""
    for metric in metrics:
        if isinstance(metric, OutputMetric):
            metric.update(y, pred, weight, sample_weight)
        else:
            metric.update_state(match_rank(y, pred), pred, sample_weight=weight)


def structured_parts(parts_cls: type, recipe: Any, label_spec: Any, output_shape: Any,
                     layout: Any) -> Any:
    """``CompiledParts`` with per-output losses and metrics (see the module docstring)."""
    names = list(layout.names) if layout is not None else ["output"]
    single = len(names) == 1
    label_specs = [label_spec] if single else list(label_spec)
    output_shapes = [output_shape] if single else list(output_shape)
    args = recipe.compile_args
    losses = _per_output_losses(recipe, names)
    weights = _per_output_weights(args.get("loss_weights"), names)
    metrics = _per_output_items(args.get("metrics"), names, "metrics")
    weighted = _per_output_items(args.get("weighted_metrics"), names, "weighted_metrics")
    plain = single and all(w == 1.0 for w in weights) and not any(weighted)
    if plain:
        reduced, unreduced = cp._loss_constructors(losses[0])  # noqa: SLF001
        makers = [cp._metric_constructor(m, label_specs[0], output_shapes[0])  # noqa: SLF001
                  for m in metrics[0]]
        return parts_cls(loss=reduced, loss_per_example=unreduced, metrics=tuple(makers))

    unreduced = [None if loss is None else cp._loss_constructors(loss)[1]  # noqa: SLF001
                 for loss in losses]

    def loss_per_example():
        return StructuredLoss([None if u is None else u() for u in unreduced], weights, single)

    makers: list[Callable[[], Any]] = []
    used: set[str] = set()
    if not single:  # Keras reports each output's own loss, before its weight
        for i, (name, make) in enumerate(zip(names, unreduced)):
            if make is not None:
                used.add(f"{name}_loss")
                makers.append(_tracker(i, f"{name}_loss", make))
    for kind, items_per_output in (("metrics", metrics), ("weighted_metrics", weighted)):
        for i, items in enumerate(items_per_output):
            for item in items:
                make = cp._metric_constructor(item, label_specs[i], output_shapes[i])  # noqa: SLF001
                # Keras names a metric given as a string by that string ("mae").
                base = item if isinstance(item, str) else make().name
                prefix = "" if single else f"{names[i]}_"
                name = prefix + base
                if kind == "weighted_metrics" and name in used:
                    name = f"{prefix}weighted_{base}"
                used.add(name)
                makers.append(_output_metric(make, None if single else i,
                                             kind == "weighted_metrics", name))
    return parts_cls(loss=loss_per_example, loss_per_example=loss_per_example,
                     metrics=tuple(makers))


def _tracker(index: int, name: str, make_loss: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: OutputMetric(keras.metrics.Mean(name=name), index=index, weighted=True,
                                name=name, loss=make_loss())


def _output_metric(make: Callable[[], Any], index: int | None, weighted: bool,
                   name: str) -> Callable[[], Any]:
    return lambda: OutputMetric(make(), index=index, weighted=weighted, name=name)


def _per_output_losses(recipe: Any, names: list[str]) -> list[Any]:
    live = recipe.compile_args.get("loss")
    n = len(names)
    if isinstance(live, dict):
        unknown = [k for k in live if k not in names]
        if unknown:
            raise ModelError(
                f"fit_federated: the model is compiled with losses for {unknown}, which are "
                f"not among its outputs {names}. Key the loss dict by output name.")
        items = [live.get(name) for name in names]
    elif isinstance(live, (list, tuple)):
        if len(live) != n:
            raise ModelError(
                f"fit_federated: the model has {n} outputs {names} but is compiled with "
                f"{len(live)} losses. Pass one loss per output, or one loss for all.")
        items = list(live)
    else:
        items = [recipe.new_loss()] * n
    return [_resolve_loss(item) for item in items]


def _resolve_loss(item: Any) -> Any:
    if item is None:
        return None
    if isinstance(item, (str, dict)):
        return keras.losses.get(item)
    return item


def _per_output_weights(loss_weights: Any, names: list[str]) -> list[float]:
    if loss_weights is None:
        return [1.0] * len(names)
    if isinstance(loss_weights, dict):
        return [float(loss_weights.get(name, 1.0)) for name in names]
    if isinstance(loss_weights, (list, tuple)):
        if len(loss_weights) != len(names):
            raise ModelError(
                f"fit_federated: the model has {len(names)} outputs {names} but is compiled "
                f"with {len(loss_weights)} loss_weights {list(loss_weights)}. Pass one per output.")
        return [float(w) for w in loss_weights]
    return [float(loss_weights)] * len(names)


def _per_output_items(metrics: Any, names: list[str], argument: str) -> list[list[Any]]:
    """The compiled metrics as one list per output, as Keras' ``compile()`` reads them."""
    n = len(names)

    def as_list(value):
        if value is None:
            return []
        return list(value) if isinstance(value, (list, tuple)) else [value]

    if not metrics:
        return [[] for _ in names]
    if isinstance(metrics, dict):
        unknown = [k for k in metrics if k not in names]
        if unknown:
            raise ModelError(
                f"fit_federated: `{argument}` has entries for {unknown}, which are not among "
                f"the model's outputs {names}. Key `{argument}` by output name.")
        return [as_list(metrics.get(name)) for name in names]
    if not isinstance(metrics, (list, tuple)):
        return [[metrics] for _ in names]
    if n == 1:
        return [[m for m in tf.nest.flatten(list(metrics)) if m is not None]]
    nested = any(m is None or isinstance(m, (list, tuple, dict)) for m in metrics)
    if nested or (KERAS_3 and len(metrics) == n):
        if len(metrics) != n:
            raise ModelError(
                f"fit_federated: `{argument}` is a list of {len(metrics)} entries, but the "
                f"model has {n} outputs {names}. Pass one list per output, or a dict.")
        return [as_list(m) for m in metrics]
    return [list(metrics) for _ in names]  # Keras 2 applies a flat list to every output
