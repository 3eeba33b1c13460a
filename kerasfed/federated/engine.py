"""The one place where kerasfed builds and runs TensorFlow Federated computations.

``FederatedEngine`` turns a compiled Keras model (as a ``ModelRecipe``) into a TFF
``LearningProcess`` (and, when asked, a federated evaluation process), and runs
them: initial server state from the user's weights, one call per round, global
weights out of the state, state to and from plain numpy arrays for checkpoints,
and the bytes each round moves, read from the round computation's TFF types.
Everything above this module (``fit.py``) deals in Keras weights, numpy arrays
and ``tf.data`` datasets only.

Keras 2 keeps one *global* switch per Keras class: creating a layer, model or
metric inside a ``tf.compat.v1.Graph`` (as TFF's tracing does) rewrites the
``__bases__`` of its class and of every Keras class on the way to ``Layer`` to
the graph-mode (v1) versions (``keras/src/utils/version_utils.py``). Every
existing eager model of those classes then dispatches to v1 methods and raises
"Your Layer or Model is in an invalid state ... interleaving ... tf.compat.v1.Graph"
on ``evaluate``/``predict``/``fit``, until an instance is next created eagerly.
``_keras_classes_kept`` snapshots those bases before TFF traces and restores them
afterwards, so no model the user holds changes behaviour. The traced graphs
are already serialized when the block ends and never touch the classes again.

All methods must run inside ``federated_runtime`` (a TFF execution context).
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed._compat import keras, require_tff

# Keras names that `compile()` resolves by the labels' and outputs' shapes.
_SHAPE_RESOLVED_METRICS = ("accuracy", "acc", "crossentropy", "ce")


class UnsupportedModelError(ValueError):
    """The model's outputs, loss or metrics cannot be trained with TFF."""


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """What one training round returns besides the new state.

    Attributes:
      metrics: Training loss and compiled metrics, averaged by TFF over every
        example the round's clients trained on (Keras names).
      num_examples: Examples processed, summed over clients and local epochs.
      update_non_finite: True when the aggregated update had NaN/inf values; TFF
        then keeps the previous global weights.
    """

    metrics: dict[str, float]
    num_examples: int
    update_non_finite: bool


class FederatedEngine:
    """A compiled Keras model's TFF learning process (and federated evaluation).

    Args:
      model: The eager Keras model whose architecture the recipe holds; only its
        weight order and output shape are read. It is never traced.
      recipe: ``ModelRecipe`` of ``model``: TFF rebuilds the model from it.
      algorithm: A kerasfed ``Algorithm`` (``get_algorithm(...)``).
      client_optimizer: ``tff.learning.optimizers.Optimizer`` or None (FedSGD).
      server_optimizer: ``tff.learning.optimizers.Optimizer``.
      element_spec: ``(x, y)`` ``tf.TensorSpec`` of the clients' batches.
      federated_evaluation: Whether to build TFF's federated evaluation too.
    """

    def __init__(
        self,
        model: keras.Model,
        recipe: Any,
        *,
        algorithm: Any,
        client_optimizer: Any,
        server_optimizer: Any,
        element_spec: tuple[tf.TensorSpec, tf.TensorSpec],
        federated_evaluation: bool = False,
    ):
        self._tff = tff = require_tff()
        self._layout = _WeightLayout.of(model)
        loss_fn = loss_constructor(recipe)
        metric_fns = metric_constructors(
            recipe.compile_args.get("metrics"), element_spec[1], model.output_shape
        )

        def model_fn():
            # A fresh, uncompiled model in TFF's graph; the weights it starts with
            # are replaced by `initial_state`, so random initialisation is fine.
            keras_model = recipe.build(compile=False, weights=False)
            return tff.learning.models.from_keras_model(
                keras_model, loss=loss_fn(), input_spec=element_spec, metrics=metric_fns
            )

        with _keras_classes_kept():
            self._process = algorithm.build(
                model_fn=model_fn,
                client_optimizer=client_optimizer,
                server_optimizer=server_optimizer,
            )
            self._eval_process = (
                tff.learning.algorithms.build_fed_eval(model_fn) if federated_evaluation else None
            )
        self._template = self._process.initialize()
        self._eval_state = self._eval_process.initialize() if self._eval_process else None
        self.bytes_to_client, self.bytes_from_client = round_payload_bytes(
            tff, self._process.next
        )

    # -- State -------------------------------------------------------------------
    def initial_state(self, weights: Sequence[np.ndarray]) -> Any:
        """The server state TFF initialises, holding ``weights`` (Keras order)."""
        return self.set_weights(self._template, weights)

    def set_weights(self, state: Any, weights: Sequence[np.ndarray]) -> Any:
        """``state`` with its global model weights replaced by ``weights``."""
        return self._process.set_model_weights(state, self._layout.to_tff(self._tff, weights))

    def get_weights(self, state: Any) -> list[np.ndarray]:
        """The global model weights in ``state``, in Keras ``get_weights()`` order."""
        return self._layout.to_keras(self._process.get_model_weights(state))

    def state_to_arrays(self, state: Any) -> list[np.ndarray]:
        """The whole server state (weights, optimizer and aggregator state) as arrays."""
        return [np.asarray(leaf) for leaf in tf.nest.flatten(state)]

    def state_from_arrays(self, arrays: Sequence[np.ndarray]) -> Any:
        """Inverse of ``state_to_arrays``.

        Raises:
          ValueError: The arrays do not fit this process's state (e.g. they were
            saved by a different model or algorithm).
        """
        leaves = tf.nest.flatten(self._template)
        if len(arrays) != len(leaves):
            raise ValueError(
                f"the saved state has {len(arrays)} arrays, this training's state "
                f"has {len(leaves)}"
            )
        for i, (saved, leaf) in enumerate(zip(arrays, leaves)):
            leaf = np.asarray(leaf)
            if saved.shape != leaf.shape or saved.dtype != leaf.dtype:
                raise ValueError(
                    f"state array {i} was saved with shape {saved.shape} and dtype "
                    f"{saved.dtype}; this training needs {leaf.shape} {leaf.dtype}"
                )
        return tf.nest.pack_sequence_as(self._template, list(arrays))

    # -- Rounds ------------------------------------------------------------------
    def train_round(self, state: Any, datasets: list[tf.data.Dataset]) -> tuple[Any, RoundResult]:
        """Runs one round of the learning process on the clients' datasets."""
        output = self._process.next(state, datasets)
        train = dict(output.metrics["client_work"]["train"])
        num_examples = int(train.pop("num_examples"))
        train.pop("num_batches", None)
        finalizer = output.metrics.get("finalizer")
        non_finite = isinstance(finalizer, collections.abc.Mapping) and bool(
            finalizer.get("update_non_finite", 0)
        )
        return output.state, RoundResult(
            metrics=_loss_first(train),
            num_examples=num_examples,
            update_non_finite=non_finite,
        )

    def evaluate(self, state: Any, datasets: list[tf.data.Dataset]) -> dict[str, float]:
        """TFF's federated evaluation of the global model in ``state``.

        Returns:
          Loss and compiled metrics over all examples of ``datasets`` (Keras names).
        """
        if self._eval_process is None:
            raise RuntimeError("this engine was built without federated_evaluation=True")
        eval_state = self._eval_process.set_model_weights(
            self._eval_state, self._process.get_model_weights(state)
        )
        output = self._eval_process.next(eval_state, datasets)
        metrics = dict(output.metrics["client_work"]["eval"]["current_round_metrics"])
        metrics.pop("num_examples", None)
        metrics.pop("num_batches", None)
        return _loss_first(metrics)


def _loss_first(metrics: dict) -> dict[str, float]:
    # Keras lists the loss before the metrics; TFF appends it after them.
    ordered = {"loss": float(metrics["loss"])} if "loss" in metrics else {}
    ordered.update((k, float(v)) for k, v in metrics.items() if k != "loss")
    return ordered


def check_model(model: keras.Model, recipe: Any, element_spec: tuple) -> None:
    """Raises ``UnsupportedModelError`` now for what ``FederatedEngine`` would refuse later.

    Cheap (no TFF): resolves the loss and metrics and the weight layout.
    """
    _WeightLayout.of(model)
    loss_constructor(recipe)
    metric_constructors(recipe.compile_args.get("metrics"), element_spec[1], model.output_shape)


@dataclasses.dataclass(frozen=True)
class _WeightLayout:
    """Where TFF's trainable / non-trainable lists sit in Keras' ``get_weights()``."""

    trainable: tuple[int, ...]
    non_trainable: tuple[int, ...]

    @classmethod
    def of(cls, model: keras.Model) -> _WeightLayout:
        position = {id(v): i for i, v in enumerate(model.weights)}
        layout = cls(
            trainable=tuple(position[id(v)] for v in model.trainable_weights),
            non_trainable=tuple(position[id(v)] for v in model.non_trainable_weights),
        )
        if sorted(layout.trainable + layout.non_trainable) != list(range(len(position))):
            raise UnsupportedModelError(
                f"fit_federated: the model {model.name!r} lists some weights twice or "
                f"outside its trainable/non-trainable weights; TFF cannot map them."
            )
        return layout

    def to_tff(self, tff: Any, weights: Sequence[np.ndarray]) -> Any:
        return tff.learning.models.ModelWeights(
            trainable=[np.asarray(weights[i]) for i in self.trainable],
            non_trainable=[np.asarray(weights[i]) for i in self.non_trainable],
        )

    def to_keras(self, model_weights: Any) -> list[np.ndarray]:
        weights: list[Any] = [None] * (len(self.trainable) + len(self.non_trainable))
        for i, w in zip(self.trainable, model_weights.trainable):
            weights[i] = np.asarray(w)
        for i, w in zip(self.non_trainable, model_weights.non_trainable):
            weights[i] = np.asarray(w)
        return weights


# -- Loss and metrics as TFF wants them ------------------------------------------------


def loss_constructor(recipe: Any) -> Callable[[], keras.losses.Loss]:
    """A function returning a fresh ``keras.losses.Loss`` equal to the compiled loss.

    TFF's ``from_keras_model`` takes only ``Loss`` objects; a loss compiled as a
    string or function is wrapped as ``compile()`` does (mean over the batch).

    Raises:
      UnsupportedModelError: A per-output (dict/list) loss.
    """
    loss = recipe.new_loss()
    if isinstance(loss, (dict, list, tuple)):
        raise UnsupportedModelError(
            "fit_federated supports models with one output and one loss. Received a "
            f"per-output loss: {loss!r}. Compile a single-output model with one loss."
        )
    if isinstance(loss, keras.losses.Loss):
        cls, config = type(loss), loss.get_config()
        return lambda: cls.from_config(dict(config))
    if callable(loss):
        from keras.src.losses import LossFunctionWrapper  # noqa: PLC0415  (Keras 2 only)

        name = getattr(loss, "__name__", "loss")
        return lambda: LossFunctionWrapper(loss, name=name)
    raise UnsupportedModelError(
        f"fit_federated: cannot use the compiled loss {loss!r}. Compile with a Keras loss "
        f"name, function or keras.losses.Loss."
    )


def metric_constructors(
    metrics: Any, label_spec: tf.TensorSpec, output_shape: Any
) -> list[Callable[[], keras.metrics.Metric]]:
    """Zero-argument functions building fresh Metric objects for the compiled metrics.

    Strings and functions become Metric objects named as Keras names them in
    ``History`` (``"accuracy"`` stays ``"accuracy"``); ``"accuracy"``/``"acc"`` and
    ``"crossentropy"``/``"ce"`` resolve by the labels' and outputs' shapes exactly
    as ``compile()`` does (binary if one output unit, sparse if the labels have a
    lower rank or one column, else categorical).

    Raises:
      UnsupportedModelError: Per-output (dict / nested list) metrics.
    """
    if metrics is None:
        return []
    if isinstance(metrics, dict) or (
        isinstance(metrics, (list, tuple)) and any(isinstance(m, (list, tuple, dict)) for m in metrics)
    ):
        raise UnsupportedModelError(
            f"fit_federated supports one list of metrics for a single-output model. "
            f"Received per-output metrics: {metrics!r}."
        )
    if not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    return [_metric_constructor(m, label_spec, output_shape) for m in metrics]


def _metric_constructor(
    metric: Any, label_spec: tf.TensorSpec, output_shape: Any
) -> Callable[[], keras.metrics.Metric]:
    if isinstance(metric, keras.metrics.Metric):
        cls, config = type(metric), metric.get_config()
        return lambda: cls.from_config(dict(config))
    if isinstance(metric, str):
        fn = _resolve_by_shape(metric, label_spec, output_shape) or keras.metrics.get(metric)
        if isinstance(fn, keras.metrics.Metric):
            cls, config = type(fn), fn.get_config()
            return lambda: cls.from_config(dict(config))
        name = metric
    elif callable(metric):
        fn, name = metric, getattr(metric, "__name__", "metric")
    else:
        raise UnsupportedModelError(f"fit_federated: cannot use the compiled metric {metric!r}.")
    return lambda: keras.metrics.MeanMetricWrapper(fn, name=name)


def _resolve_by_shape(name: str, label_spec: tf.TensorSpec, output_shape: Any) -> Any:
    """Keras 2's ``MetricsContainer._get_metric_object`` rule for accuracy/crossentropy."""
    if name not in _SHAPE_RESOLVED_METRICS:
        return None
    y_rank, y_last = len(label_spec.shape), label_spec.shape[-1] if label_spec.shape.rank else None
    p_rank, p_last = len(output_shape), output_shape[-1]
    binary = p_last == 1
    sparse = y_rank < p_rank or (y_last == 1 and p_last != 1)
    kind = "binary" if binary else "sparse_categorical" if sparse else "categorical"
    suffix = "accuracy" if name in ("accuracy", "acc") else "crossentropy"
    return getattr(keras.metrics, f"{kind}_{suffix}")


# -- Bytes per round ------------------------------------------------------------------


def round_payload_bytes(tff: Any, next_computation: Any) -> tuple[int, int]:
    """Bytes one client receives and sends per round, from the round's TFF types.

    Walks the round computation's building block: every intrinsic that takes
    SERVER-placed values to CLIENTS (``federated_broadcast``) counts its server
    values as sent to each client; every intrinsic that takes CLIENTS-placed values
    to SERVER (``federated_sum``, ``federated_mean``, ``federated_aggregate``, secure
    sums) counts its client values as sent by each client. These are the dense,
    uncompressed tensor sizes (no protocol overhead; the clients' data never moves).
    """
    to_client = from_client = 0
    found: list[Any] = []

    def visit(comp):
        if isinstance(comp, tff.framework.Intrinsic) and isinstance(
            comp.type_signature, tff.FunctionType
        ):
            found.append(comp.type_signature)
        return comp, False

    tff.framework.transform_postorder(next_computation.to_building_block(), visit)
    for signature in found:
        param, result = signature.parameter, signature.result
        if param is None:
            continue
        if _has_placement(tff, result, tff.CLIENTS) and _has_placement(tff, param, tff.SERVER):
            to_client += _placed_bytes(tff, param, tff.SERVER)
        elif _has_placement(tff, result, tff.SERVER) and _has_placement(tff, param, tff.CLIENTS):
            from_client += _placed_bytes(tff, param, tff.CLIENTS)
    return to_client, from_client


def _has_placement(tff: Any, type_spec: Any, placement: Any) -> bool:
    if isinstance(type_spec, tff.FederatedType):
        return type_spec.placement is placement
    if isinstance(type_spec, tff.StructType):
        return any(_has_placement(tff, t, placement) for t in type_spec.children())
    return False


def _placed_bytes(tff: Any, type_spec: Any, placement: Any) -> int:
    if isinstance(type_spec, tff.FederatedType):
        return _tensor_bytes(tff, type_spec.member) if type_spec.placement is placement else 0
    if isinstance(type_spec, tff.StructType):
        return sum(_placed_bytes(tff, t, placement) for t in type_spec.children())
    return 0


def _tensor_bytes(tff: Any, type_spec: Any) -> int:
    if isinstance(type_spec, tff.TensorType):
        shape = type_spec.shape
        if shape is None or any(d is None for d in shape):
            return 0  # unknown size: not counted
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(type_spec.dtype).itemsize
    if isinstance(type_spec, tff.StructType):
        return sum(_tensor_bytes(tff, t) for t in type_spec.children())
    return 0


# -- Keras' global class state ----------------------------------------------------------


@contextlib.contextmanager
def _keras_classes_kept() -> Iterator[None]:
    """Restores every Keras layer/model/metric class's ``__bases__`` after the block."""
    roots = _layer_base_classes()
    before = {cls: cls.__bases__ for cls in _subclasses(roots)}
    try:
        yield
    finally:
        for cls, bases in before.items():
            if cls.__bases__ != bases:
                cls.__bases__ = bases


def _layer_base_classes() -> list[type]:
    roots: list[type] = [keras.layers.Layer]
    try:
        from keras.src.engine import base_layer_v1  # noqa: PLC0415  (Keras 2 internals)
    except ImportError:  # pragma: no cover - a Keras without v1 layers swaps nothing
        return roots
    return [*roots, base_layer_v1.Layer]


def _subclasses(roots: list[type]) -> set[type]:
    seen: set[type] = set()
    stack = list(roots)
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.add(cls)
            stack.extend(cls.__subclasses__())
    return seen
