"""Bulyan (El Mhamdi, Guerraoui, Rouault 2018, "The Hidden Vulnerability of
Distributed Learning in Byzantium", ICML).

Krum picks ``theta = n - 2f`` clients one at a time (each pick leaves the pool);
then, in every coordinate, the ``beta = theta - 2f`` picked values closest to
their median are averaged. Needs ``n >= 4f + 3``.
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
from kerasfed.federated.aggregators.krum import krum_select


def bulyan_selection(updates: np.ndarray, byzantine: int) -> np.ndarray:
    """Indices Bulyan's repeated Krum picks, in the order picked."""
    pool = list(range(updates.shape[0]))
    picked = []
    for _ in range(updates.shape[0] - 2 * byzantine):
        best = int(krum_select(updates[pool], byzantine, 1)[0])
        picked.append(pool.pop(best))
    return np.asarray(picked, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Bulyan(Combiner):
    """Bulyan over Krum.

    Attributes:
      byzantine: ``f``, the Byzantine clients to tolerate per round (>= 0); a
        round needs at least ``4f + 3`` clients.

    Example:
      >>> Bulyan(byzantine=1).min_clients()
      7
    """

    byzantine: int = 1
    name: ClassVar[str] = "bulyan"

    def __post_init__(self) -> None:
        check_number("Bulyan", "byzantine", self.byzantine, low=0, integer=True)

    def min_clients(self) -> int:
        return 4 * self.byzantine + 3

    def combine(self, updates: np.ndarray, context: RoundContext,
                state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        picked = updates[bulyan_selection(updates, self.byzantine)]
        beta = picked.shape[0] - 2 * self.byzantine

        def nearest_to_median(block: np.ndarray) -> np.ndarray:
            median = np.median(block, axis=0)
            closest = np.argsort(np.abs(block - median), axis=0, kind="stable")[:beta]
            return np.take_along_axis(block, closest, axis=0).mean(axis=0, dtype=np.float64)

        return by_columns(picked, nearest_to_median), state, {}
