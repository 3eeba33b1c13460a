"""Checks of fit_distributed's own arguments, done before any strategy or graph exists."""

from __future__ import annotations

import inspect
import os
from typing import Any

from kerasfed import _arguments as shared
from kerasfed._compat import KERAS_3, keras
from kerasfed.errors import (  # noqa: F401  (FitArgumentError: the old name)
    ArgumentError,
    ArgumentTypeError,
    FitArgumentError,
)


# fit() keywords fit_distributed takes itself (explicitly or by replacing them).
_OWN = {"self", "x", "y", "batch_size", "epochs", "verbose", "callbacks", "validation_data"}
FIT_KEYWORDS: frozenset[str] = frozenset(inspect.signature(keras.Model.fit).parameters) - _OWN
"""Keywords passed on to ``model.fit`` unchanged (those of the running Keras)."""

KEYWORD_HINTS = {
    "rounds": "fit_distributed trains epochs: use `epochs=` (rounds are fit_federated's).",
    "local_epochs": "fit_distributed trains epochs: use `epochs=` (local epochs are "
    "fit_federated's).",
    "clients": "fit_distributed trains on one dataset: pass it as `x` (and `y`); "
    "for federated training over clients use kerasfed.fit_federated.",
}
"""Unknown keywords that are other calls' arguments -> what to use here."""


def too_many_positionals(args: tuple) -> str:
    """The fix for ``fit_distributed(model, x, y, 5)``."""
    return "Pass the arguments after (model, x, y) by keyword, e.g. epochs=5, batch_size=64."


def check_fit_kwargs(fit_kwargs: dict) -> None:
    """Rejects keywords ``model.fit`` does not take, and bad ``validation_split``."""
    unknown = set(fit_kwargs) - FIT_KEYWORDS
    if unknown:
        # Normally caught earlier by fit_distributed's signature check (same error).
        raise shared.unknown_keywords_error(
            "fit_distributed", unknown, sorted(FIT_KEYWORDS), KEYWORD_HINTS
        )
    split = fit_kwargs.get("validation_split")
    if split is not None and (isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1):
        raise ArgumentError(
            f"Expected `validation_split` to be a float in [0, 1). Received: validation_split={split!r}."
        )
    shuffle = fit_kwargs.get("shuffle", True)
    if shuffle not in (True, False, "batch"):
        raise ArgumentError(
            f'Expected `shuffle` to be True, False or "batch". Received: shuffle={shuffle!r}.'
        )


def check_epochs(epochs: Any) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        # A wrong type is an ArgumentTypeError, as from fit_federated and partition.
        error = ArgumentError if _is_int(epochs) else ArgumentTypeError
        raise error(
            f"Expected `epochs` to be an int of at least 1. Received: epochs={epochs!r}"
            f"{'' if isinstance(epochs, int) else f' of type {type(epochs).__name__}'}."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_batch_size(batch_size: Any) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        error = ArgumentError if _is_int(batch_size) else ArgumentTypeError
        raise error(
            f"Expected `batch_size` (the global batch size, split across replicas) to be "
            f"None or an int of at least 1. Received: batch_size={batch_size!r}"
            f"{'' if isinstance(batch_size, int) else f' of type {type(batch_size).__name__}'}."
        )


def check_verbose(verbose: Any) -> None:
    # The rule and the error (VerboseError) are shared with fit_federated.
    shared.check_verbose(verbose, caller="fit_distributed")


def check_callbacks(callbacks: Any, backup_dir: Any) -> list:
    """Returns the callbacks as a new list (CallbacksTypeError as fit_federated's)."""
    callbacks = shared.check_callbacks(callbacks, caller="fit_distributed")
    for i, callback in enumerate(callbacks):
        if backup_dir is not None and isinstance(callback, keras.callbacks.BackupAndRestore):
            raise ArgumentError(
                "`backup_dir` adds a BackupAndRestore callback, and `callbacks` already "
                f"holds one (callbacks[{i}]). Use one of the two."
            )
    return callbacks


def check_path(value: Any, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ArgumentError(
            f"Expected `{name}` to be a path (str or os.PathLike). Received: {value!r} of "
            f"type {type(value).__name__}."
        )


def check_save_path(save_path: Any) -> None:
    check_path(save_path, "save_path")
    if save_path is None or not KERAS_3:
        return
    if not os.fspath(save_path).endswith((".keras", ".h5")):
        raise ArgumentError(
            f"Keras {keras.__version__} saves whole models to `.keras` files; `save_path` "
            f"must end in .keras (or the legacy .h5). Received: save_path={os.fspath(save_path)!r}. "
            f"For a TensorFlow SavedModel, call `history.model.export(path)` after training."
        )
