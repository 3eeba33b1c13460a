"""``fit_distributed``: synchronous data-parallel training of a compiled Keras model.

Every replica (a GPU, a logical CPU, or a worker process) holds a copy of the
model, computes gradients on its slice of each global batch, and all replicas
apply the all-reduced mean gradient, so training follows the same trajectory as
``model.fit`` on one device with the same global batches (up to floating-point
summation order). The machinery is TensorFlow's ``tf.distribute``
(MirroredStrategy within a process, MultiWorkerMirroredStrategy across processes
configured by ``TF_CONFIG``); this module only decides which strategy, puts the
model into its scope, prepares the data and makes the workers agree on who
writes files.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import tensorflow as tf

from kerasfed._arguments import checked_call, user_stacklevel
from kerasfed._compat import keras
from kerasfed._console import resolve_verbose
from kerasfed._keras_model import ModelLike, ModelRecipe, ModelTypeError, resolve_compiled_model
from kerasfed.distributed import arguments, backup, data, epoch_order, labels
from kerasfed.distributed.backup import adapt_user_backup, backup_callback
from kerasfed.distributed.keras3_build import build_from_local_batch
from kerasfed.distributed.paths import WorkerPaths
from kerasfed.distributed.strategies import (
    StrategyLike,
    check_strategy,
    get_strategy,
    is_chief,
    is_multi_worker,
    worker_rank,
)

_CALLER = "fit_distributed"
DEFAULT_BATCH_SIZE = 32  # as model.fit


@checked_call(
    keyword_hints=arguments.KEYWORD_HINTS,
    positional_hint=arguments.too_many_positionals,
    extra_keywords=lambda: arguments.FIT_KEYWORDS,
)
def fit_distributed(
    model: ModelLike,
    x: Any = None,
    y: Any = None,
    *,
    strategy: StrategyLike = "auto",
    epochs: int = 1,
    batch_size: int | None = None,
    validation_data: Any = None,
    callbacks: list | None = None,
    backup_dir: str | os.PathLike | None = None,
    save_path: str | os.PathLike | None = None,
    verbose: str | int = "auto",
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """Trains a compiled Keras model data-parallel under a ``tf.distribute`` strategy.

    Call it like ``model.fit``; there is no ``strategy.scope()`` to write. A model
    built outside the strategy's scope is rebuilt inside it (same architecture,
    weights, optimizer settings, loss and metrics) and the rebuilt model is trained:
    take it from ``history.model``; the model passed in stays unchanged and usable.
    For several workers, start the same script in every process with
    ``kerasfed launch --workers N script.py``.

    Args:
        model: A compiled Keras model, or a zero-argument function returning one
            (called inside the strategy's scope). A model created under this
            strategy's scope is trained as it is.
        x: Training data: NumPy arrays (or tensors, lists/dicts of them), a
            ``tf.data.Dataset`` of global batches of ``(x, y)`` or ``(x, y,
            sample_weight)``, or ``dataset_fn(input_context)`` returning a dataset
            batched per replica with ``input_context.get_per_replica_batch_size``
            (then ``steps_per_epoch`` is required). See ``kerasfed.distributed.data``
            for how each is sharded across workers.
        y: Targets, with arrays only.
        strategy: ``"auto"`` (default: multi-worker when ``TF_CONFIG`` lists more
            than one process, mirrored with several GPUs, else no distribution),
            ``"default"``, ``"mirrored"``, ``"multi_worker"``, ``"one_device"``,
            or a ``tf.distribute.Strategy``. See ``kerasfed.get_strategy``.
        epochs: Number of epochs, at least 1. Defaults to 1.
        batch_size: The GLOBAL batch size, split across all replicas; arrays
            only. Defaults to 32.
        validation_data: ``(x_val, y_val)`` or ``(x_val, y_val,
            val_sample_weight)`` arrays, a ``tf.data.Dataset`` or a dataset_fn
            (then ``validation_steps`` is required). Defaults to None.
        callbacks: Keras callbacks. On non-chief workers the paths of
            ModelCheckpoint, TensorBoard and CSVLogger are redirected to a
            temporary directory that is removed after training. Defaults to None.
        backup_dir: Adds ``keras.callbacks.BackupAndRestore(backup_dir)``: a job
            restarted after a failure resumes after the last completed epoch.
            Every worker must see the same directory. Defaults to None.
        save_path: Where the chief saves the trained model after training (other
            workers save to a temporary path, as TensorFlow requires). Keras 3:
            a ``.keras`` file; Keras 2: ``.keras``, ``.h5`` or a SavedModel
            directory. Defaults to None (not saved).
        verbose: ``"auto"`` (default: on the chief a progress bar in a terminal
            or notebook and one line per epoch when stdout is a file or pipe, as
            Keras advises; silent on the other workers), 0, 1 or 2.
        **fit_kwargs: Other ``model.fit`` keywords (``shuffle``,
            ``steps_per_epoch``, ``validation_split``, ``class_weight``,
            ``sample_weight``, ``initial_epoch``, ``validation_freq``, ...), with
            their Keras meaning.

    Returns:
        The ``keras.callbacks.History`` of the training; ``.history`` holds the
        per-epoch metrics and ``.model`` the trained model.

    Raises:
        kerasfed.ModelError, kerasfed.ModelTypeError: ``model`` is not a compiled,
            built Keras model (or a function returning one).
        kerasfed.StrategyError: Unknown strategy, or ``"multi_worker"`` without
            ``TF_CONFIG``.
        kerasfed.TFConfigError: ``TF_CONFIG`` is set but invalid.
        kerasfed.StrategyInitError: Multi-worker training was requested after
            TensorFlow already ran an op in this process; call
            ``kerasfed.get_strategy()`` first thing in the script.
        kerasfed.DataError, kerasfed.DataTypeError: Missing, mismatched or
            unsupported data, or an argument that does not fit its form.
        kerasfed.FitArgumentError: A bad ``epochs``, ``batch_size``, ``verbose``,
            ``callbacks``, ``backup_dir`` or ``save_path``.
        TypeError: A keyword ``model.fit`` does not take.

    Example:
        >>> import numpy as np, kerasfed
        >>> from kerasfed._compat import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> x, y = np.zeros((64, 4), "float32"), np.zeros((64, 1), "float32")
        >>> history = kerasfed.fit_distributed(model, x, y, epochs=2, verbose=0)
        >>> sorted(history.history)
        ['loss']
    """
    # Every check runs before the strategy exists: MultiWorkerMirroredStrategy can
    # only be created before TensorFlow's first op, and a late error would leave
    # the other workers blocked in a collective.
    _check_model(model)
    check_strategy(strategy)
    arguments.check_epochs(epochs)
    arguments.check_batch_size(batch_size)
    arguments.check_verbose(verbose)
    arguments.check_fit_kwargs(fit_kwargs)
    callbacks = arguments.check_callbacks(callbacks, backup_dir)
    arguments.check_path(backup_dir, "backup_dir")
    arguments.check_save_path(save_path)
    fit_kwargs = dict(fit_kwargs)
    train = data.check_training_data(x, y, fit_kwargs.pop("sample_weight", None), batch_size, fit_kwargs)
    validation = data.check_validation_data(validation_data, fit_kwargs)
    if isinstance(model, keras.Model):  # a model function's model is checked once built
        labels.check_inputs(model, train, validation)

    strategy = get_strategy(strategy)
    trained = _model_in_scope(model, strategy)
    if not isinstance(model, keras.Model):
        labels.check_inputs(trained, train, validation)
    chief = is_chief(strategy)
    with WorkerPaths(is_chief=chief, rank=worker_rank(strategy)) as paths:
        backs_up = backup_dir is not None or any(
            isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks
        )
        backup_write_dir = paths.write_path("backup") if backs_up and not chief else None
        callbacks = [adapt_user_backup(c, write_dir=backup_write_dir) for c in callbacks]
        if backup_dir is not None:
            # First, so that an epoch counts as done only once its backup is written.
            callbacks.insert(0, backup_callback(backup_dir, write_dir=backup_write_dir))
        inputs, first_epoch = _data_arguments(
            train, validation, strategy, batch_size, fit_kwargs, callbacks if backs_up else None
        )
        if first_epoch is not None:
            callbacks.append(epoch_order.FirstEpochCheck(first_epoch))
        paths.redirect(callbacks)
        with strategy.scope(), build_from_local_batch(trained, strategy):
            history = trained.fit(
                **inputs,
                epochs=epochs,
                callbacks=callbacks,
                verbose=_keras_verbose(verbose, chief),
            )
        if save_path is not None:
            _save(trained, paths.write_path(save_path))
    return history


def _keras_verbose(verbose: str | int, chief: bool) -> int:
    """``verbose`` for ``model.fit``: ``"auto"`` is silent on workers other than the
    chief, else Keras' advice for where the output goes: a bar (1) in a terminal or
    notebook, one line per epoch (2) in a file or pipe, where Keras would write ANSI
    codes and carriage-return redraws."""
    if verbose == "auto" and not chief:
        return 0
    return resolve_verbose(verbose)


def _check_model(model: Any) -> None:
    if isinstance(model, keras.Model):
        resolve_compiled_model(model, caller=_CALLER)  # attribute checks only
    elif not callable(model):
        raise ModelTypeError(
            f"{_CALLER}: expected `model` to be a compiled keras.Model or a zero-argument "
            f"function returning one. Received: {model!r:.80} of type {type(model).__name__}."
        )


def _model_in_scope(model: ModelLike, strategy: tf.distribute.Strategy) -> keras.Model:
    """The model to train: variables must live under ``strategy``'s scope."""
    if not isinstance(model, keras.Model):
        with strategy.scope():
            model = resolve_compiled_model(model, caller=_CALLER)
    # Outside any scope this is the strategy the model was created under (or the
    # default strategy when it was created outside every scope).
    if model.distribute_strategy is strategy:
        return model
    recipe = ModelRecipe.from_model(model, caller=_CALLER)
    with strategy.scope():
        return recipe.build()


def _data_arguments(
    train: data.Inputs,
    validation: data.Inputs | None,
    strategy: tf.distribute.Strategy,
    batch_size: int | None,
    fit_kwargs: dict,
    backups: list | None,
) -> tuple[dict, int | None]:
    """The data keywords of ``model.fit`` (plus the other fit keywords).

    ``backups`` are the callbacks when one of them backs training up (``None``
    otherwise); arrays then become a stream that resumes in order. Also returns
    the epoch that stream starts at (``None`` when Keras feeds the data).
    """
    kwargs = dict(fit_kwargs)
    multi_worker = is_multi_worker(strategy)
    global_batch = batch_size or DEFAULT_BATCH_SIZE
    if train.kind == data.ARRAYS and global_batch < strategy.num_replicas_in_sync:
        warnings.warn(
            f"batch_size={global_batch} is smaller than the {strategy.num_replicas_in_sync} "
            f"replicas, so some replicas get empty batches at every step. Use a global "
            f"batch size of at least {strategy.num_replicas_in_sync}.",
            stacklevel=user_stacklevel(),
        )
    first_epoch = None
    if train.kind == data.ARRAYS and (multi_worker or backups is not None):
        # Shuffling and splitting become ours: every worker must build the same
        # global batches for the DATA sharding to give each example to one replica,
        # and a run resumed from a backup must see the batches of an uninterrupted one.
        split = kwargs.pop("validation_split", None)
        if split and validation is None:
            train, validation = data.split_validation(train, split)
        kwargs["x"], kwargs["steps_per_epoch"], first_epoch = _ordered_batches(
            train, strategy, global_batch, kwargs, backups
        )
    elif train.kind == data.ARRAYS:
        kwargs.update(x=train.x, y=train.y, sample_weight=train.sample_weight, batch_size=batch_size)
    elif train.kind == data.DATASET:
        kwargs["x"] = train.x
    else:
        kwargs["x"] = data.distributed_from_function(strategy, train.x)
    if train.kind != data.ARRAYS:
        # Keras 3 warns about its default shuffle=True with a dataset, which it ignores.
        kwargs.setdefault("shuffle", False)
    if validation is None:
        return kwargs, first_epoch
    if validation.kind == data.DATASET:
        kwargs["validation_data"] = validation.x
    elif validation.kind == data.DATASET_FN:
        kwargs["validation_data"] = data.distributed_from_function(strategy, validation.x)
    elif multi_worker:
        batch = kwargs.pop("validation_batch_size", None) or global_batch
        kwargs["validation_data"] = data.arrays_dataset(validation, batch_size=batch)
    else:
        parts = (validation.x, validation.y, validation.sample_weight)
        kwargs["validation_data"] = parts if validation.sample_weight is not None else parts[:2]
    return kwargs, first_epoch


def _ordered_batches(
    train: data.Inputs,
    strategy: tf.distribute.Strategy,
    global_batch: int,
    kwargs: dict,
    backups: list | None,
) -> tuple[tf.data.Dataset, int, int]:
    """Training arrays as global batches in an order fixed by (seed, epoch).

    Pops ``shuffle`` from ``kwargs``; returns the dataset, the steps per epoch and
    the epoch it starts at. A restored run reuses the seed its backup recorded.
    """
    shuffle = kwargs.pop("shuffle", True)
    kwargs["shuffle"] = False  # the stream is shuffled already
    restored = backup.resume_epoch(backups or [])
    first_epoch = restored if restored is not None else kwargs.get("initial_epoch", 0)
    seed = backup.saved_seed(backups) if restored is not None and shuffle else None
    if seed is None:
        # Every worker takes this branch or none: they all read the same backup.
        seed = data.shared_seed(strategy) if shuffle else 0
        if backups is not None and is_chief(strategy):
            backup.save_seed(backups, seed)
    dataset, steps = epoch_order.training_batches(
        train, batch_size=global_batch, shuffle=shuffle, seed=seed, first_epoch=first_epoch,
        steps_per_epoch=kwargs.get("steps_per_epoch"),
    )
    return dataset, steps, first_epoch


def _save(model: keras.Model, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    model.save(path)
