"""Checks of the int and seed arguments shared by the clients modules and partition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasfed.errors import ArgumentError, ArgumentTypeError

ArrayLike = Any  # anything np.asarray accepts
Seed = int | Sequence[int] | None


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Returns ``value`` as an int, or raises ArgumentError/ArgumentTypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(
            f"Expected `{name}` to be an int. Received: {name}={value!r} of type "
            f"{type(value).__name__}."
        )
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ArgumentError(f"Expected `{name}` {bounds}. Received: {name}={value}.")
    return value


def check_seed(name: str, seed: Seed) -> Seed:
    """Checks a numpy seed: None, an int >= 0, or a sequence of them."""
    if seed is None:
        return None
    parts = seed if isinstance(seed, (list, tuple)) else [seed]
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, np.integer)) or part < 0:
            raise ArgumentError(
                f"Expected `{name}` to be None, an int >= 0 or a sequence of them. "
                f"Received: {name}={seed!r}."
            )
    return seed
