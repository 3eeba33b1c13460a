"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer 2017, "Machine
Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS).

Each client's score is the sum of squared L2 distances from its update to its
``n - f - 2`` nearest neighbours; the ``select`` clients with the lowest scores
are kept (ties go to the earlier client) and their updates averaged (Krum:
``select=1``). Tolerates ``f`` Byzantine clients among ``n > 2f + 2``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import Combiner, RoundContext, State, check_number


def pairwise_sq_distances(updates: np.ndarray) -> np.ndarray:
    """``(n, n)`` squared L2 distances between the rows, in float64."""
    u = updates.astype(np.float64)
    sq = np.einsum("ij,ij->i", u, u)
    dist = sq[:, None] + sq[None, :] - 2.0 * (u @ u.T)
    np.fill_diagonal(dist, 0.0)
    return np.maximum(dist, 0.0)


def krum_scores(updates: np.ndarray, byzantine: int) -> np.ndarray:
    """Each row's Krum score: the summed squared distances to its ``n - f - 2``
    nearest other rows (at least one)."""
    n = updates.shape[0]
    dist = pairwise_sq_distances(updates)
    np.fill_diagonal(dist, np.inf)  # a client is not its own neighbour
    closest = max(1, n - byzantine - 2)
    nearest = np.sort(dist, axis=1)[:, :min(closest, n - 1)]
    return nearest.sum(axis=1) if n > 1 else np.zeros(n)


def krum_select(updates: np.ndarray, byzantine: int, select: int) -> np.ndarray:
    """Indices of the ``select`` rows with the lowest Krum scores (stable)."""
    return np.argsort(krum_scores(updates, byzantine), kind="stable")[:select]


@dataclasses.dataclass(frozen=True)
class Krum(Combiner):
    """Krum (``select=1``) or Multi-Krum (``select > 1``).

    Attributes:
      byzantine: ``f``, the number of Byzantine clients to tolerate per round
        (>= 0); a round needs more than ``2f + 2`` clients.
      select: Clients kept and averaged (default 1: Krum).

    Example:
      >>> Krum(byzantine=2, select=3).min_clients()
      7
    """

    byzantine: int = 1
    select: int = 1
    name: ClassVar[str] = "krum"

    def __post_init__(self) -> None:
        check_number("Krum", "byzantine", self.byzantine, low=0, integer=True)
        check_number("Krum", "select", self.select, low=1, integer=True)

    def min_clients(self) -> int:
        return max(2 * self.byzantine + 3, self.select)

    def combine(self, updates: np.ndarray, context: RoundContext,
                state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        chosen = krum_select(updates, self.byzantine, self.select)
        mean = updates[chosen].mean(axis=0, dtype=np.float64)
        return mean.astype(updates.dtype), state, {}
