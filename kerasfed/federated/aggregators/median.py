"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML).

Each coordinate of the update is the median of the clients' values in that
coordinate (with an even number of clients, the mean of the two middle ones), so
fewer than half the clients cannot move it arbitrarily far. Every client counts
once: a weight is something an attacker could forge.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import Combiner, RoundContext, State, by_columns


@dataclasses.dataclass(frozen=True)
class Median(Combiner):
    """The coordinate-wise median of the clients' updates.

    Example:
      >>> Median().name
      'median'
    """

    name: ClassVar[str] = "median"

    def combine(self, updates: np.ndarray, context: RoundContext,
                state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        return by_columns(updates, lambda block: np.median(block, axis=0)), state, {}
