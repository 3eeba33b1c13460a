"""Zeroing: an update whose L2 norm exceeds a threshold is replaced by zeros.

As TFF's ``tff.aggregators.zeroing_factory`` (which the TFF engine uses): the
zeroed client keeps its weight in the mean, so a wild update counts as "no
change" instead of moving the model.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import (
    RoundContext,
    State,
    Transform,
    check_number,
    l2_norms,
)


@dataclasses.dataclass(frozen=True)
class Zeroing(Transform):
    """Zeros every update with L2 norm above ``threshold``.

    Attributes:
      threshold: The largest norm let through (> 0).

    Example:
      >>> Zeroing(10.0).threshold
      10.0
    """

    threshold: float = 10.0
    name: ClassVar[str] = "zeroing"

    def __post_init__(self) -> None:
        check_number("Zeroing", "threshold", self.threshold, low=0.0, low_open=True)

    def apply(self, updates: np.ndarray, context: RoundContext,
              state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        zeroed = l2_norms(updates) > self.threshold
        out = np.where(zeroed[:, None], np.zeros((), updates.dtype), updates)
        return out, state, {"zeroed_fraction": float(zeroed.mean()) if len(zeroed) else 0.0}
