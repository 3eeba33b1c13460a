"""Nested features and labels: dicts, lists and tuples of arrays, as Keras takes them.

A client's ``x`` and ``y`` are each one numpy array or a ``tf.nest`` structure of
them (a model with several inputs takes a list or a dict of arrays, one with
several outputs a list or a dict of labels). Every leaf indexes the client's
examples on its first dimension. Strings (numpy ``U``/``S`` arrays, or ``object``
arrays of ``str``/``bytes``) are kept as ``object`` arrays of ``bytes``, what
``tf.constant`` turns into ``tf.string`` and what padding can fill with ``b""``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed.federated.clients.errors import ClientDataError

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float
_STRING_KINDS = "USO"


def leaves(structure: Any) -> list:
    """The arrays of ``structure`` in ``tf.nest`` order."""
    return tf.nest.flatten(structure)


def is_structured(structure: Any) -> bool:
    """Whether ``structure`` is a dict, list or tuple rather than one array."""
    return tf.nest.is_nested(structure)


def num_rows(structure: Any) -> int:
    """The number of examples: the first dimension of the first leaf."""
    return len(leaves(structure)[0])


def map_leaves(fn: Any, *structures: Any) -> Any:
    """``tf.nest.map_structure`` over numpy leaves (structures must match)."""
    return tf.nest.map_structure(fn, *structures)


def lists_to_tuples(structure: Any) -> Any:
    """``structure`` with every list a tuple (``tf.data`` stacks lists into one tensor)."""
    if isinstance(structure, dict):
        return {k: lists_to_tuples(v) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return tuple(lists_to_tuples(v) for v in structure)
    return structure


def is_string(array: np.ndarray) -> bool:
    return array.dtype.kind in _STRING_KINDS


def has_strings(structure: Any) -> bool:
    return any(is_string(a) for a in leaves(structure))


def nbytes(structure: Any) -> int:
    return sum(a.nbytes for a in leaves(structure))


def spec_of(array: np.ndarray) -> tf.TensorSpec:
    """The spec of a batch of ``array``'s examples (batch dimension None)."""
    dtype = tf.string if is_string(array) else tf.as_dtype(array.dtype)
    return tf.TensorSpec((None, *array.shape[1:]), dtype)


def specs(structure: Any) -> Any:
    return map_leaves(spec_of, structure)


def to_tensors(structure: Any) -> Any:
    """Tensors of the leaves (strings as ``tf.string``)."""
    return map_leaves(tf.constant, structure)


def empty_like(array: np.ndarray, shape: tuple) -> np.ndarray:
    """A padding array of ``shape`` in ``array``'s dtype: zeros, or ``b""`` for strings."""
    if is_string(array):
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, array.dtype)


def readonly_leaves(cid: str, what: str, value: Any) -> Any:
    """``value`` (an array-like or a nest of them) as read-only numpy leaves.

    Raises:
      ClientDataError: a leaf that is not one rectangular numeric or string array,
        a scalar, or leaves with different numbers of examples; names the client.
    """
    if isinstance(value, tf.Tensor):
        value = value.numpy()
    if _holds_arrays(value):
        if not leaves(value):
            raise ClientDataError(
                f"Client {cid!r}: its {what} are an empty {type(value).__name__}. Pass one "
                f"array per model input / output.")
        return map_leaves(lambda leaf: readonly_array(cid, what, leaf), value)
    return readonly_array(cid, what, value)


def _holds_arrays(value: Any) -> bool:
    """Whether ``value`` is a structure of arrays (one per model input or output)
    rather than one array written as nested lists (``[[1.0], [2.0]]``)."""
    if isinstance(value, dict):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, (np.ndarray, tf.Tensor, dict)) or _holds_arrays(v)
                   for v in value)
    return False


def readonly_array(cid: str, what: str, value: Any) -> np.ndarray:
    """One client's features, labels or weights as a read-only numpy array."""
    if isinstance(value, tf.Tensor):
        value = value.numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise ClientDataError(
            f"Client {cid!r}: its {what} cannot be converted to one numpy array "
            f"({e}). Every client's {what} must be rectangular arrays."
        ) from None
    if array.dtype.kind in _STRING_KINDS:
        array = _as_bytes(cid, what, array)
    elif array.dtype.kind not in _NUMERIC_KINDS:
        raise ClientDataError(
            f"Client {cid!r}: its {what} have dtype {array.dtype}, which is neither numeric "
            f"nor strings. Expected bool, integer, float or string arrays; encode other "
            f"data as fixed-shape numbers first."
        )
    if array.ndim == 0:
        raise ClientDataError(
            f"Client {cid!r}: its {what} are a scalar; expected an array whose first "
            f"dimension indexes the client's examples."
        )
    # A read-only view: the ClientData stays immutable without copying the data.
    array = array.view()
    array.flags.writeable = False
    return array


def _as_bytes(cid: str, what: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "U":
        return np.char.encode(array, "utf-8").astype(object)
    if array.dtype.kind == "S":
        return array.astype(object)
    flat = array.reshape(-1)
    if not all(isinstance(v, (str, bytes)) for v in flat):
        bad = next(v for v in flat if not isinstance(v, (str, bytes)))
        raise ClientDataError(
            f"Client {cid!r}: its {what} have dtype object holding {type(bad).__name__} "
            f"values; expected numbers, or strings only (str or bytes)."
        )
    out = np.empty(array.shape, object)
    out.reshape(-1)[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in flat]
    return out


def check_rows(cid: str, entry: tuple) -> None:
    """Every leaf of ``(x, y[, w])`` has the same number of examples."""
    if not is_structured(entry[0]) and not is_structured(entry[1]) and len(entry[0]) != len(entry[1]):
        raise ClientDataError(
            f"Client {cid!r} has {len(entry[0])} feature rows but {len(entry[1])} labels. "
            f"x and y must have the same first dimension."
        )
    names = ("features", "labels", "sample weights")
    counts = [(names[i], len(a)) for i, part in enumerate(entry) for a in leaves(part)]
    if len({n for _, n in counts}) > 1:
        shown = ", ".join(f"{what}: {n}" for what, n in counts)
        raise ClientDataError(
            f"Client {cid!r} has arrays with different numbers of examples ({shown}). "
            f"x, y (and sample weights) must have the same first dimension."
        )
