"""Top-k sparsification with error feedback (Stich, Cordonnier, Jaggi 2018,
"Sparsified SGD with Memory", NeurIPS; Aji and Heafield 2017).

Each client sends only the ``fraction`` of its update's values largest in
magnitude (values and their indices); what it leaves out is kept on the client
and added to its next update, so nothing is lost over the rounds, only delayed.
The memory is per client: a row of the run's ``ClientStateStore`` (table
``"<step>/residual"``, saved with checkpoints), read and written only for the
round's clients. Native engine only.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import RoundContext, State, Transform, check_number

# The table of each client's residual (the chain prefixes the step: "1/residual").
TABLE = "residual"


@dataclasses.dataclass(frozen=True)
class TopK(Transform):
    """Keeps the ``fraction`` largest-magnitude values of each update.

    Attributes:
      fraction: Share of the values sent, in (0, 1] (at least one value).
      error_feedback: Carry what was left out into the client's next update
        (default True).

    Example:
      >>> TopK(0.01).kept(1000), TopK(0.01).update_bytes(1000, clients=10)
      (10, 80)
    """

    fraction: float = 0.01
    error_feedback: bool = True
    name: ClassVar[str] = "top_k"

    def __post_init__(self) -> None:
        check_number("TopK", "fraction", self.fraction, low=0.0, high=1.0, low_open=True)

    def kept(self, num_values: int) -> int:
        return max(1, int(np.ceil(self.fraction * num_values)))

    def update_bytes(self, num_values: int, clients: int) -> int:
        return 8 * self.kept(num_values)  # a float32 value and an int32 index each

    def apply(self, updates: np.ndarray, context: RoundContext,
              state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        n, d = updates.shape
        k = self.kept(d)
        values = updates.copy()
        if self.error_feedback:
            table = context.client_table("TopK(error_feedback=True)", TABLE,
                                         [np.zeros(d, updates.dtype)])
            values += table.read(context.cids)[0]
        sent = np.zeros_like(values)
        if d:
            top = np.argpartition(-np.abs(values), k - 1, axis=1)[:, :k]
            np.put_along_axis(sent, top, np.take_along_axis(values, top, axis=1), axis=1)
        if self.error_feedback:
            table.write(context.cids, [values - sent])
        return sent, state, {}
