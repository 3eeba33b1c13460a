"""Federated SGD (FedSGD).

McMahan, Moore, Ramage, Hampson, Agüera y Arcas (2017), "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS; arXiv:1602.05629
(the FedSGD baseline).

Each round every selected client computes the gradient of its loss over *all* its
local data at the received model (batch by batch, without updating the model,
weighted by batch size, i.e. the gradient of its mean loss). The server averages
these gradients weighted by the clients' numbers of examples and takes one step
with the **server optimizer**: with server SGD, ``w -= server_lr * mean_gradient``.
Clients train nothing, so the client optimizer (the compiled Keras optimizer) is
not used (``FedSGD.uses_client_optimizer`` is False) and the server learning rate
is FedSGD's learning rate (TFF's default for FedSGD is 0.1, not FedAvg's 1.0).
The TFF engine builds it with ``tff.learning.algorithms.build_fed_sgd``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from kerasfed.federated.algorithms._base import (
    Algorithm,
    ClientContext,
    ClientOutput,
    ServerContext,
    Tensors,
)


@dataclasses.dataclass(frozen=True)
class FedSGD(Algorithm):
    """Federated SGD: one server step per round on the example-weighted mean gradient.

    Example:
      >>> FedSGD().name
      'fedsgd'
    """

    uses_client_optimizer: ClassVar[bool] = False
    trains_locally: ClassVar[bool] = False
    needs_full_gradient: ClassVar[bool] = True
    counts_non_finite_clients: ClassVar[bool] = True  # as TFF's fed_sgd client work

    @property
    def name(self) -> str:
        return "fedsgd"

    def client_end(self, ctx: ClientContext, weights: Tensors) -> ClientOutput:
        return ClientOutput(update=list(ctx.full_gradient))

    def server_update(self, ctx: ServerContext) -> tuple[Tensors, dict]:
        # The mean gradient is the server optimizer's gradient as it is.
        state, weights = ctx.optimizer.step(ctx.optimizer_state, ctx.weights, ctx.update)
        return weights, state
