"""Labels against the compiled loss, per output, before ``fit_distributed`` trains.

Keras reports one-hot labels with a sparse loss (or class indices with a
categorical one) as a rank or shape error from deep inside the loss, and an
out-of-range class index only when the batch runs (on GPU not at all: the loss
turns NaN). These checks read shapes only (numpy arrays, or a dataset's
``element_spec``), plus the label range of numpy arrays, so they cost nothing next
to training.

Structures follow Keras: ``y`` is one array, a list/tuple (one per output, in
order) or a dict by output name; the loss is one loss for every output, a list or
a dict by output name. Outputs whose loss is neither sparse nor categorical, or
whose labels cannot be matched to them, are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed.distributed import data
from kerasfed.errors import LabelError

SPARSE = "sparse"
CATEGORICAL = "categorical"

# Keras' class losses by name (function, class or string, lower case without "_").
_KERAS_LOSSES = {
    "sparsecategoricalcrossentropy": SPARSE,
    "categoricalcrossentropy": CATEGORICAL,
    "categoricalfocalcrossentropy": CATEGORICAL,
    "categoricalhinge": CATEGORICAL,
}


def check_inputs(model: Any, train: data.Inputs, validation: data.Inputs | None) -> None:
    """:func:`check_labels` for ``fit_distributed``'s checked training and validation data."""
    for inputs, what in ((train, "y"), (validation, "validation_data")):
        if inputs is None or inputs.kind == data.DATASET_FN:
            continue  # a dataset_fn's datasets exist only under the strategy
        check_labels(model, inputs.y if inputs.kind == data.ARRAYS else inputs.x, what=what)


def check_labels(model: Any, y: Any, *, what: str = "y") -> None:
    """Raises LabelError when labels cannot fit the model's loss.

    Args:
        model: A compiled Keras model (nothing is checked for one without
            ``loss`` or known output shapes, e.g. an unbuilt subclassed model).
        y: The labels: numpy arrays or tensors (one, a list/tuple or a dict by
            output name), or a ``tf.data.Dataset`` of batched ``(x, y)`` or
            ``(x, y, sample_weight)`` elements.
        what: How messages name the labels (``"y"``, ``"validation_data"``).

    Raises:
        LabelError: One-hot labels with a sparse loss, class indices with a
            categorical loss, or (numpy labels) a class index outside
            ``[0, units)`` of the output.

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy")  # doctest: +SKIP
        >>> check_labels(model, np.eye(10)[y])  # doctest: +SKIP
        LabelError: y looks one-hot ...
    """
    outputs = _outputs(model)
    if y is None or not outputs:
        return
    losses = _per_output(getattr(model, "loss", None), outputs, allow_single=True)
    batched = isinstance(y, tf.data.Dataset)
    if batched:
        y = _dataset_labels(y)
    labels = _per_output(y, outputs, allow_single=len(outputs) == 1)
    for name, output_shape in outputs:
        kind = _loss_kind(losses.get(name))
        label = labels.get(name)
        if kind is None or label is None:
            continue
        where = f"`{what}`" if len(outputs) == 1 else f"`{what}` for the output {name!r}"
        _check_one(where, kind, losses[name], label, output_shape, batched)


def _check_one(
    where: str, kind: str, loss: Any, label: Any, output: tuple, batched: bool
) -> None:
    shape = getattr(label, "shape", None)
    if shape is None or tf.TensorShape(shape).rank in (None, 0) or not output:
        return
    per_example = tuple(tf.TensorShape(shape).as_list()[1:])
    units = output[-1]
    loss_name = _loss_name(loss)
    same_rank = len(per_example) == len(output)
    if kind == SPARSE and same_rank and per_example[-1] not in (None, 1):
        looks = "looks one-hot" if per_example[-1] == units else "has a class axis"
        expected = (
            "shape (n,) or (n, 1)" if len(output) == 1 else f"per-example shape {output[:-1]}"
        )
        raise LabelError(
            f"{where} {looks} (per-example shape {per_example}; the output has per-example "
            f"shape {output}), but the loss {loss_name} expects class indices ({expected}). Use "
            f"loss='categorical_crossentropy' with one-hot labels, or pass class indices: "
            f"np.argmax(y, axis=-1)."
        )
    is_indices = len(per_example) == len(output) - 1 or (same_rank and per_example[-1] == 1)
    if kind == CATEGORICAL and units not in (None, 1) and is_indices:
        raise LabelError(
            f"{where} holds class indices (per-example shape {per_example}), but the loss "
            f"{loss_name} expects one-hot labels of per-example shape {output}. Use "
            f"loss='sparse_categorical_crossentropy' with class indices, or one-hot encode "
            f"them: keras.utils.to_categorical(y, {units})."
        )
    if kind == SPARSE and not batched and isinstance(label, np.ndarray) and units not in (None, 1):
        _check_range(where, label, units)


def _check_range(where: str, label: np.ndarray, units: int) -> None:
    if label.size == 0 or label.dtype.kind not in "iuf":
        return
    low, high = label.min().item(), label.max().item()
    if low < 0 or high >= units:
        bad = low if low < 0 else high
        raise LabelError(
            f"{where} has the class index {bad!r}, but the output has {units} units, so "
            f"class indices must be in [0, {units}). Give the output layer as many units as "
            f"there are classes, or remap the labels."
        )


def _outputs(model: Any) -> list[tuple[str, tuple]]:
    """``(name, per-example shape)`` per output, in order; empty when the model does not say."""
    try:
        tensors = list(model.outputs or [])
    except (AttributeError, ValueError):  # a subclassed model not yet called
        return []
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(tensors):
        names = [f"output_{i}" for i in range(len(tensors))]
    return [(name, tuple(tf.TensorShape(t.shape).as_list()[1:])) for name, t in zip(names, tensors)]


def _per_output(value: Any, outputs: list[tuple[str, tuple]], *, allow_single: bool) -> dict:
    """``value`` given per output name (one value for all, a list/tuple or a dict)."""
    names = [name for name, _ in outputs]
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {name: value[name] for name in names if name in value}
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == len(names):
            return dict(zip(names, value))
        return {}
    return {name: value for name in names} if allow_single else {}


def _dataset_labels(dataset: tf.data.Dataset) -> Any:
    """The labels' ``TensorSpec`` structure of a dataset of ``(x, y[, w])`` elements."""
    spec = dataset.element_spec
    if isinstance(spec, tuple) and len(spec) in (2, 3):
        return spec[1]
    return None


def _loss_name(loss: Any) -> str:
    if isinstance(loss, str):
        return repr(loss)
    return getattr(loss, "__name__", None) or type(loss).__name__


def _loss_kind(loss: Any) -> str | None:
    """SPARSE, CATEGORICAL or None (a loss whose labels are not classes, or unknown)."""
    if loss is None:
        return None
    if isinstance(loss, str):
        name = loss
    else:
        # A Keras loss object (LossFunctionWrapper subclass) or a loss function.
        name = getattr(loss, "__name__", None) or type(loss).__name__
    # Only Keras' own losses: a custom loss may take its labels in any form.
    return _KERAS_LOSSES.get(name.replace("_", "").lower())
