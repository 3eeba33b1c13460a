"""Learning rates by round: ``client_learning_rate=`` and ``server_learning_rate=``.

``fit_federated`` takes each rate as a float, a function of the round index
(from 0) returning a float, or a ``keras.optimizers.schedules.LearningRateSchedule``
evaluated at the round (its "step" is the round, not the client's local step: a
client keeps one rate for the whole of its local training, as in TFF's
``build_weighted_fed_avg_with_optimizer_schedule`` and FedJAX). ``round_schedule``
checks the user's value once, over every round of the run, and returns a
``RoundSchedule`` that the engines call with the round index.

Example:
  >>> decay = round_schedule(lambda r: 0.1 * 0.5 ** r, name="client_learning_rate")
  >>> decay(0), decay(2)
  (0.1, 0.025)
  >>> round_schedule(1.0, name="server_learning_rate").constant
  1.0
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from kerasfed.errors import (
    ArgumentError,
    ArgumentTypeError,
    ServerOptimizerError,
    ServerOptimizerTypeError,
)

# The server rate's errors keep the class they always had; other rates are plain
# argument errors.
_ERRORS: dict[str, tuple[type[Exception], type[Exception]]] = {
    "server_learning_rate": (ServerOptimizerError, ServerOptimizerTypeError),
}
_SHOWN_ROUNDS = 3  # rates listed in a schedule's description


@dataclasses.dataclass(frozen=True)
class RoundSchedule:
    """A learning rate for each round, checked.

    Call it with a round index (from 0) for that round's rate.

    Attributes:
      name: The argument it came from (``"client_learning_rate"``, ...).
      constant: The rate when it does not change by round, else None.
      description: A stable one-line description (for checkpoint fingerprints
        and messages): the float itself for a constant, else what the schedule
        is and its first rates.
    """

    name: str
    constant: float | None
    description: str
    _rate: Callable[[int], Any] = dataclasses.field(repr=False, compare=False)

    def __call__(self, round_num: int) -> float:
        """The learning rate of round ``round_num`` (from 0), a Python float.

        Raises:
          ArgumentError (``ServerOptimizerError`` for the server rate): the
            schedule gives a negative, non-finite or non-numeric value at this
            round, or fails there.
        """
        if self.constant is not None:
            return self.constant
        return _checked_rate(self._rate, int(round_num), self.name)


def round_schedule(value: Any, *, name: str, rounds: int = 1) -> RoundSchedule:
    """Checks a learning-rate argument and returns its ``RoundSchedule``.

    Args:
      value: A positive float; a function of the round index (from 0) returning
        a float >= 0; or a ``keras.optimizers.schedules.LearningRateSchedule``
        (called with the round index as its step).
      name: The argument's name, for messages (``"server_learning_rate"`` keeps
        its ``ServerOptimizerError`` family; others raise ``ArgumentError``).
      rounds: Rounds of the run: a schedule is evaluated, and checked, at each
        of rounds ``0 .. rounds - 1`` here, before any training (default 1).

    Returns:
      A ``RoundSchedule``.

    Raises:
      ArgumentTypeError (``ServerOptimizerTypeError`` for the server rate):
        ``value`` is none of the three kinds.
      ArgumentError (``ServerOptimizerError`` for the server rate): a constant
        that is not finite and > 0, or a schedule that fails or gives a
        negative, non-finite or non-numeric value at some round of the run.
    """
    error, type_error = _ERRORS.get(name, (ArgumentError, ArgumentTypeError))
    if _is_number(value):
        rate = float(value)
        if not (math.isfinite(rate) and rate > 0):
            raise error(
                f"Expected `{name}` to be a positive float, a function of the round index "
                f"or a LearningRateSchedule. Received: {name}={value!r}. "
                + ("FedAvg uses 1.0 with server SGD; adaptive server optimizers typically "
                   "1e-3 to 1e-1." if name == "server_learning_rate" else
                   "Client learning rates are typically 1e-3 to 1e-1 (SGD).")
            )
        return RoundSchedule(name=name, constant=rate, description=repr(rate),
                             _rate=lambda _round: rate)
    if _is_keras_schedule(value):
        kind = f"{type(value).__name__}({_config(value)})"
    elif callable(value) and not isinstance(value, type):
        kind = f"function {getattr(value, '__qualname__', type(value).__name__)}"
    else:
        raise type_error(
            f"Expected `{name}` to be a positive float, a function of the round index (from "
            f"0) returning a float, or a keras.optimizers.schedules.LearningRateSchedule. "
            f"Received: {name}={value!r} of type {type(value).__name__}. Example: "
            f"{name}=lambda round_num: 0.1 * 0.99 ** round_num."
        )
    for round_num in range(max(int(rounds), 1)):
        _checked_rate(value, round_num, name)
    description = f"{kind}: {', '.join(_first_rates(value))}, ..."
    return RoundSchedule(name=name, constant=None, description=description, _rate=value)


def _first_rates(schedule: Callable[[int], Any]) -> list[str]:
    """The rates of the first rounds, whatever the run's length (a resumed run with
    more rounds describes its schedule the same way), up to the first that fails."""
    shown = []
    for round_num in range(_SHOWN_ROUNDS):
        try:
            rate = _as_float(schedule(round_num))
        except Exception:  # beyond this run's rounds: only described, never used
            break
        if rate is None:
            break
        shown.append(repr(rate))
    return shown


def _checked_rate(schedule: Callable[[int], Any], round_num: int, name: str) -> float:
    error = _ERRORS.get(name, (ArgumentError, ArgumentTypeError))[0]
    what = (f"the LearningRateSchedule {type(schedule).__name__}"
            if _is_keras_schedule(schedule) else "the function")
    try:
        value = schedule(round_num)
    except Exception as e:  # the user's code: any failure is theirs to see
        raise error(
            f"`{name}`: {what} failed at round {round_num} ({type(e).__name__}: {e}). It is "
            f"called with the round index (an int from 0) and must return a float."
        ) from e
    rate = _as_float(value)
    if rate is None or not (math.isfinite(rate) and rate >= 0):
        raise error(
            f"`{name}`: expected {what} to return a finite float >= 0 for every round. "
            f"Received at round {round_num}: {value!r}"
            + ("" if rate is not None else f" of type {type(value).__name__}")
            + ". Make it return a number, e.g. `lambda round_num: 0.1 * 0.99 ** round_num`."
        )
    return rate


def _as_float(value: Any) -> float | None:
    """``value`` as a float when it is one number (Python, numpy or a scalar tensor)."""
    if _is_number(value):
        return float(value)
    if hasattr(value, "numpy"):  # a scalar tensor, as Keras schedules return
        value = value.numpy()
    array = np.asarray(value) if isinstance(value, (np.ndarray, np.generic)) else None
    if array is not None and array.ndim == 0 and array.dtype.kind in "fiu":
        return float(array)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_keras_schedule(value: Any) -> bool:
    from kerasfed._compat import keras  # noqa: PLC0415  (TensorFlow only when needed)

    return isinstance(value, keras.optimizers.schedules.LearningRateSchedule)


def _config(schedule: Any) -> str:
    try:
        config = schedule.get_config()
    except (NotImplementedError, AttributeError, TypeError):
        return ""
    return ", ".join(f"{k}={v!r}" for k, v in sorted(config.items()) if k != "name")
