"""Training and validation data for ``fit_distributed``: checks and distribution.

Three forms are accepted, for training and validation alike:

- In-memory arrays (NumPy arrays or tensors, or lists/dicts of them for several
  inputs or outputs), with ``batch_size`` the global batch (default 32).
- A ``tf.data.Dataset`` of global batches, used as it is. Under several workers
  TensorFlow shards it with ``AutoShardPolicy.AUTO`` unless the dataset sets
  another policy: by file for file-based datasets (TFRecord, text files...),
  otherwise by data.
- A ``dataset_fn(input_context)`` returning a per-replica-batched dataset, given to
  ``strategy.distribute_datasets_from_function``; it is repeated, so
  ``steps_per_epoch`` (and ``validation_steps``) say how long an epoch is.

Arrays on a single worker without a backup go to ``model.fit`` unchanged (Keras
semantics, no overhead). Across workers, or when training backs up to resume, they
become an endless ``tf.data.Dataset`` of global batches
(:mod:`kerasfed.distributed.epoch_order`) sharded with ``AutoShardPolicy.DATA``:
every worker builds the same sequence of global batches (each epoch's order a
function of a seed the workers share and the epoch) and keeps its replicas' slices
of each, so every example is used by exactly one replica per epoch, the global
batches are those a single process would form, and a resumed run sees the batches
an uninterrupted one would. The last, partial global batch of each epoch is kept
(nothing dropped, nothing padded): TensorFlow splits it across the replicas as
evenly as it can, some may get an empty batch, and every worker still runs the
same number of steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from kerasfed._compat import keras
from kerasfed.errors import DataError, DataTypeError  # noqa: F401  (defined with the family)


ARRAYS = "arrays"
DATASET = "dataset"
DATASET_FN = "dataset_fn"

_FORMS = (
    "NumPy arrays (or tensors, or lists/dicts of them), a tf.data.Dataset, or a "
    "function dataset_fn(input_context) returning a tf.data.Dataset"
)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Checked data of one kind: ``x`` (and for arrays ``y``, ``sample_weight``)."""

    kind: str
    x: Any
    y: Any = None
    sample_weight: Any = None

    @property
    def num_examples(self) -> int | None:
        """Number of examples of in-memory arrays; ``None`` for datasets."""
        if self.kind != ARRAYS:
            return None
        return _length(tf.nest.flatten(self.x)[0])


def check_training_data(x: Any, y: Any, sample_weight: Any, batch_size: Any, fit_kwargs: dict) -> Inputs:
    """Checks ``x``, ``y``, ``sample_weight``, ``batch_size`` against each other.

    Raises:
        DataError: Missing ``x``, mismatched lengths, or an argument that does
            not apply to the data's form.
        DataTypeError: Data of an unsupported type.
    """
    if x is None:
        raise DataError(
            f"fit_distributed needs training data: pass `x` as {_FORMS}. Received: x=None."
        )
    kind = _kind(x, "x")
    if kind == ARRAYS:
        return Inputs(ARRAYS, *_check_arrays(x, y, sample_weight, "x", "y", "sample_weight"))
    form = "a tf.data.Dataset" if kind == DATASET else "a dataset_fn"
    how = (
        "the dataset's elements, as (x, y) or (x, y, sample_weight) tuples"
        if kind == DATASET
        else "the datasets dataset_fn returns, as (x, y) or (x, y, sample_weight) tuples"
    )
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None:
            raise DataError(
                f"`{name}` must be None when `x` is {form}: the targets and weights come "
                f"from {how}. Received: {name} of type {type(value).__name__}."
            )
    if batch_size is not None:
        where = (
            "batch the dataset with the global batch size (`dataset.batch(global_batch)`)"
            if kind == DATASET
            else "batch inside dataset_fn with "
            "`input_context.get_per_replica_batch_size(global_batch)`"
        )
        raise DataError(
            f"`batch_size` must be None when `x` is {form}: {where} and leave "
            f"`batch_size` unset. Received: batch_size={batch_size!r}."
        )
    if fit_kwargs.get("validation_split"):
        raise DataError(
            f"`validation_split` only works with in-memory arrays (as in Keras), not with "
            f"{form}. Pass `validation_data=` instead. Received: "
            f"validation_split={fit_kwargs['validation_split']!r}."
        )
    if kind == DATASET_FN and fit_kwargs.get("steps_per_epoch") is None:
        raise DataError(
            "`steps_per_epoch` is required when `x` is a dataset_fn: kerasfed repeats "
            "the datasets it returns, so the number of steps per epoch must be given "
            "(e.g. number of examples // global batch size)."
        )
    return Inputs(kind, x)


_VAL_NAMES = ("validation_data[0] (x_val)", "validation_data[1] (y_val)", "validation_data[2] (sample_weight)")


def check_validation_data(validation_data: Any, fit_kwargs: dict) -> Inputs | None:
    """Checks ``validation_data`` the same way as the training data.

    Raises:
        DataError, DataTypeError: As :func:`check_training_data`.
    """
    if validation_data is None:
        return None
    if isinstance(validation_data, (tuple, list)) and not _is_array(validation_data):
        if len(validation_data) not in (2, 3):
            raise DataError(
                "Expected `validation_data` to be a tuple (x_val, y_val) or (x_val, y_val, "
                f"val_sample_weight), a tf.data.Dataset or a dataset_fn. Received a "
                f"{type(validation_data).__name__} of length {len(validation_data)}."
            )
        vx, vy, vsw = (*validation_data, None)[:3]
        _kind(vx, "validation_data[0]", allow_datasets=False)
        return Inputs(ARRAYS, *_check_arrays(vx, vy, vsw, *_VAL_NAMES))
    kind = _kind(validation_data, "validation_data", allow_arrays=False)
    if kind == DATASET_FN and fit_kwargs.get("validation_steps") is None:
        raise DataError(
            "`validation_steps` is required when `validation_data` is a dataset_fn: "
            "kerasfed repeats the datasets it returns, so the number of validation "
            "steps must be given."
        )
    return Inputs(kind, validation_data)


def split_validation(train: Inputs, validation_split: float) -> tuple[Inputs, Inputs]:
    """Splits off the last ``validation_split`` fraction of arrays, as Keras does."""
    n = train.num_examples
    at = int(math.floor(n * (1.0 - validation_split)))
    if at == 0:  # floor() leaves at least one validation example
        raise DataError(
            f"validation_split={validation_split} leaves no training examples out of {n}. "
            f"Use a smaller validation_split."
        )

    def part(nest, sl):
        return None if nest is None else tf.nest.map_structure(lambda a: a[sl], nest)

    head, tail = slice(None, at), slice(at, None)
    return (
        Inputs(ARRAYS, part(train.x, head), part(train.y, head), part(train.sample_weight, head)),
        Inputs(ARRAYS, part(train.x, tail), part(train.y, tail), part(train.sample_weight, tail)),
    )


def element_tensors(inputs: Inputs) -> tuple:
    """``(x, y[, sample_weight])`` of checked arrays, lists made tuples (``model.fit``'s element)."""
    return tuple(
        v for v in (_tuples(inputs.x), _tuples(inputs.y), _tuples(inputs.sample_weight)) if v is not None
    )


def arrays_dataset(inputs: Inputs, *, batch_size: int) -> tf.data.Dataset:
    """Global batches of in-memory arrays in order, sharded across workers by data.

    For validation data; training batches come from
    :func:`kerasfed.distributed.epoch_order.training_batches`.

    Args:
        inputs: Checked arrays.
        batch_size: The global batch size.
    """
    dataset = tf.data.Dataset.from_tensor_slices(element_tensors(inputs)).batch(batch_size)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def distributed_from_function(
    strategy: tf.distribute.Strategy, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]
) -> Any:
    """``strategy.distribute_datasets_from_function`` over the repeated datasets."""

    def repeated(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = dataset_fn(input_context)
        if not isinstance(dataset, tf.data.Dataset):
            raise DataTypeError(
                f"dataset_fn must return a tf.data.Dataset batched with "
                f"`input_context.get_per_replica_batch_size(global_batch)`. It returned "
                f"{type(dataset).__name__}."
            )
        return dataset.repeat()

    return strategy.distribute_datasets_from_function(repeated)


def shared_seed(strategy: tf.distribute.Strategy) -> int:
    """A shuffle seed drawn on the chief and received by every worker.

    Drawn from NumPy's global generator, so ``keras.utils.set_random_seed`` makes it
    reproducible and unseeded runs differ, as with Keras's own shuffling. Only the
    first replica of the chief contributes to the sum; all others add zero.
    """
    local = int(np.random.randint(0, 2**24))  # exact in float32

    def contribution():
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        return tf.where(first, tf.constant(float(local)), tf.constant(0.0))

    @tf.function  # run eagerly, MultiWorkerMirroredStrategy logs a warning about its overhead
    def draw():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribution), axis=None)

    return int(draw().numpy())


def _kind(value: Any, name: str, *, allow_arrays: bool = True, allow_datasets: bool = True) -> str:
    if isinstance(value, tf.data.Dataset):
        if allow_datasets:
            return DATASET
    elif isinstance(value, tf.distribute.DistributedDataset):
        raise DataTypeError(
            f"`{name}` is already a distributed dataset. Pass the tf.data.Dataset itself "
            f"or a dataset_fn; fit_distributed distributes it with its own strategy."
        )
    elif callable(value) and not isinstance(value, (keras.Model, np.ndarray)) and not _is_array(value):
        if allow_datasets:
            return DATASET_FN
    elif allow_arrays and _all_arrays(value):
        return ARRAYS
    allowed = _FORMS if allow_arrays and allow_datasets else (
        "a tf.data.Dataset or a dataset_fn" if allow_datasets else "NumPy arrays (or tensors)"
    )
    raise DataTypeError(
        f"Expected `{name}` to be {allowed}. Received: {_describe(value)}."
        + (
            " Convert Python lists with np.asarray(...)."
            if isinstance(value, (list, tuple)) and not _all_arrays(value)
            else ""
        )
    )


def _check_arrays(x: Any, y: Any, sample_weight: Any, *names: str) -> tuple[Any, Any, Any]:
    found: list[tuple[str, int]] = []
    for name, nest in zip(names, (x, y, sample_weight)):
        if nest is None:
            continue
        if not _all_arrays(nest):
            raise DataTypeError(
                f"Expected `{name}` to be NumPy arrays (or tensors, or lists/dicts of them) "
                f"like `x`. Received: {_describe(nest)}."
            )
        for leaf in tf.nest.flatten(nest):
            if len(getattr(leaf, "shape", ())) == 0:
                raise DataError(f"`{name}` holds a scalar; expected arrays with one row per example.")
            found.append((name, _length(leaf)))
    if len({n for _, n in found}) > 1:
        detail = ", ".join(f"{name} has {n} rows" for name, n in dict.fromkeys(found))
        raise DataError(
            f"The data arrays have different numbers of examples: {detail}. Every array "
            f"needs one row per example."
        )
    if found[0][1] == 0:
        raise DataError(f"`{names[0]}` has no examples (0 rows).")
    if sample_weight is not None and y is None:
        raise DataError(f"`{names[2]}` needs targets: pass `{names[1]}` too.")
    return x, y, sample_weight


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, tf.Tensor))


def _all_arrays(nest: Any) -> bool:
    try:
        leaves = tf.nest.flatten(nest)
    except (TypeError, ValueError):
        return False
    return bool(leaves) and all(_is_array(leaf) for leaf in leaves)


def _length(leaf: Any) -> int:
    return int(leaf.shape[0])


def _tuples(nest: Any) -> Any:
    """Lists become tuples: tf.data would stack a list into one tensor."""
    if isinstance(nest, list):
        return tuple(_tuples(v) for v in nest)
    if isinstance(nest, dict):
        return {k: _tuples(v) for k, v in nest.items()}
    return nest


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        inner = ", ".join(type(v).__name__ for v in value[:3])
        return f"a {type(value).__name__} of [{inner}{', ...' if len(value) > 3 else ''}]"
    return f"{value!r:.80} of type {type(value).__name__}"
