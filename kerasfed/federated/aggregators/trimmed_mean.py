"""Coordinate-wise trimmed mean (Yin et al. 2018, ICML).

In each coordinate the ``floor(beta * n)`` largest and as many smallest client
values are dropped and the rest averaged (every client counts once).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import (
    Combiner,
    RoundContext,
    State,
    by_columns,
    check_number,
)


@dataclasses.dataclass(frozen=True)
class TrimmedMean(Combiner):
    """The mean of each coordinate after dropping the ``beta`` fraction at each end.

    Attributes:
      beta: Fraction dropped at each end, in [0, 0.5) (default 0.1). With n
        clients, ``floor(beta * n)`` values are dropped at each end.

    Example:
      >>> TrimmedMean(beta=0.2).beta
      0.2
    """

    beta: float = 0.1
    name: ClassVar[str] = "trimmed_mean"

    def __post_init__(self) -> None:
        check_number("TrimmedMean", "beta", self.beta, low=0.0, high=0.5, high_open=True)

    def combine(self, updates: np.ndarray, context: RoundContext,
                state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        n = updates.shape[0]
        drop = int(np.floor(self.beta * n))

        def trimmed(block: np.ndarray) -> np.ndarray:
            return np.sort(block, axis=0)[drop:n - drop].mean(axis=0, dtype=np.float64)

        return by_columns(updates, trimmed), state, {}
