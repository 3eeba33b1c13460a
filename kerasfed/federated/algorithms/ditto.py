"""Ditto: a personal model per client, kept near the global one.

Li, Hu, Beirami, Smith (2021), "Ditto: Fair and Robust Federated Learning
Through Personalization", ICML; arXiv:2012.04221.

Each client takes part in FedAvg as usual (its local steps from the round's
global model ``w_t`` give the update the server averages) and also keeps a
personal model ``v_k`` of its own, between rounds. In the same local steps, on
the same batches, it trains ``v_k`` on its loss plus ``lam/2 * ||v_k - w_t||**2``
(Algorithm 1 of the paper with its ``s`` local iterations equal to the global
ones), with the compiled optimizer. ``lam = 0`` gives purely local models;
larger values pull them towards the global model (the paper tunes ``lam`` in
{0.01, 0.1, 1, 2}). A client's personal model starts from the global initial
weights the first time it takes part; evaluation clients with the id of a
training client are evaluated with it.

The engine runs the personal steps (``Algorithm.trains_personal_model``): it
keeps each client's ``v_k`` in the run's client-state store and calls
``personal_step`` with the batch's loss gradient at ``v_k``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from kerasfed.federated.algorithms._base import (
    Algorithm,
    ClientContext,
    Tensors,
    check_bool,
    check_non_negative,
)


@dataclasses.dataclass(frozen=True)
class Ditto(Algorithm):
    """Ditto (Li et al. 2021): FedAvg for the global model, a personal model per client.

    Attributes:
      lam: Strength of the pull of each personal model towards the round's
        global model, a finite float >= 0 (default 0.1).
      weighted: Weight the global updates by the clients' numbers of examples
        (default True).

    Example:
      >>> Ditto(lam=1.0).name
      'ditto'
    """

    lam: float = 0.1
    weighted: bool = True

    trains_personal_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        lam = check_non_negative("Ditto", "lam", self.lam,
                                 "Li et al. tune it in {0.01, 0.1, 1, 2}.")
        check_bool("Ditto", "weighted", self.weighted)
        object.__setattr__(self, "lam", lam)

    def personal_step(self, ctx: ClientContext, personal: Tensors, grads: Tensors,
                      optimizer: Any, optimizer_state: dict) -> tuple[Tensors, dict]:
        # The gradient of the personal objective: the loss's plus lam * (v - w_t).
        corrected = [g + self.lam * (v - w)
                     for g, v, w in zip(grads, personal, ctx.broadcast_weights)]
        optimizer_state, personal = optimizer.step(optimizer_state, personal, corrected)
        return personal, optimizer_state
