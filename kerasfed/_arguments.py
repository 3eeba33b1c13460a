"""Checks of the Keras-style arguments both ``fit_distributed`` and ``fit_federated`` take.

One rule per argument, so the two calls accept and refuse the same values.
"""

from __future__ import annotations

from typing import Any

VERBOSE_CHOICES = ("auto", 0, 1, 2)


class VerboseError(ValueError):
    """``verbose`` is not one of ``"auto"``, 0, 1, 2."""


class CallbacksTypeError(TypeError):
    """``callbacks`` is not a list of ``keras.callbacks.Callback``."""


def check_verbose(verbose: Any, *, caller: str) -> int | str:
    """Returns ``verbose`` (``"auto"``, 0, 1 or 2) or raises ``VerboseError``."""
    if (isinstance(verbose, str) and verbose == "auto") or (
        not isinstance(verbose, bool) and isinstance(verbose, int) and verbose in (0, 1, 2)
    ):
        return verbose
    raise VerboseError(
        f"{caller}: expected `verbose` to be one of {list(VERBOSE_CHOICES)}. Received: "
        f"verbose={verbose!r}. Use 0 (silent), 1 (progress bar), 2 (one line per epoch "
        f"or round) or 'auto'."
    )


def check_callbacks(callbacks: Any, *, caller: str) -> list:
    """Returns the callbacks as a new list; None means none.

    Raises:
      CallbacksTypeError: Not a list/tuple of ``keras.callbacks.Callback`` (a single
        callback too, as ``model.fit`` refuses it).
    """
    from kerasfed._compat import keras  # noqa: PLC0415  (imports TensorFlow)

    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback) or not isinstance(callbacks, (list, tuple)):
        raise CallbacksTypeError(
            f"{caller}: expected `callbacks` to be a list of keras.callbacks.Callback. "
            f"Received: {type(callbacks).__name__}. Wrap a single callback in a list: "
            f"callbacks=[cb]."
        )
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, keras.callbacks.Callback):
            raise CallbacksTypeError(
                f"{caller}: expected `callbacks` to hold keras.callbacks.Callback objects. "
                f"callbacks[{i}] is {callback!r:.60} of type {type(callback).__name__}."
            )
    return list(callbacks)
