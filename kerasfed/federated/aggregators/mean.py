"""The mean of the clients' updates: FedAvg's aggregation (the default).

Weighted as the algorithm says: by examples (``FedAvg()``) or uniformly
(``FedAvg(weighted=False)``). On the TFF engine this is TFF's own ``MeanFactory``
/ ``UnweightedMeanFactory``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import Combiner, RoundContext, State


@dataclasses.dataclass(frozen=True)
class Mean(Combiner):
    """``sum_i w_i u_i / sum_i w_i`` with the algorithm's client weights ``w_i``.

    Example:
      >>> Mean().name
      'mean'
    """

    name: ClassVar[str] = "mean"
    weighted: ClassVar[bool] = True

    def combine(self, updates: np.ndarray, context: RoundContext,
                state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        weights = np.asarray(context.weights, np.float64)
        total = weights.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (weights @ updates.astype(np.float64)) / total
        return mean.astype(updates.dtype), state, {}
