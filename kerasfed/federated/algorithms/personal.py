"""Personal layers: weights each client keeps, trains locally and never sends.

FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization
Layers", arXiv:1912.00818) keeps the model's head on each client and averages
the body; FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features
via Local Batch Normalization", ICLR) keeps every BatchNormalization layer on
the client. Both are any algorithm with some of the model's weights made
personal, which is what ``PersonalLayers`` does to the algorithm it wraps:

* a client's personal values are part of its own state (the run's client-state
  store), starting from the global initial values the first time it takes part;
* its local training starts from the round's global weights with its own
  values in the personal places (``client_start``), and the wrapped algorithm
  sees that start as the weights it received;
* its update is zero in the personal places, so the global values of those
  weights never move, and they are neither sent nor received (the engine leaves
  them out of the bytes it counts).

``fit_federated(personal_layers=...)`` builds this wrapper; the non-trainable
personal weights (BatchNormalization's moving statistics) are kept per client by
the engine, since algorithms see only the trainable ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kerasfed.federated.algorithms._base import (
    Algorithm,
    AlgorithmError,
    ClientContext,
    ClientOutput,
    ServerContext,
    Tensors,
)


@dataclasses.dataclass(frozen=True)
class PersonalLayers(Algorithm):
    """``base`` with the trainable weights at ``positions`` kept by each client.

    Attributes:
      base: The algorithm run on the shared weights.
      positions: Indices, in the model's trainable-weight order, of the
        personal weights.

    Example:
      >>> from kerasfed.federated.algorithms import FedAvg
      >>> PersonalLayers(FedAvg(), (2, 3)).name
      'fedavg+personal'
    """

    base: Algorithm
    positions: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.base, Algorithm):
            raise AlgorithmError(f"PersonalLayers wraps an Algorithm; received {self.base!r}.")
        if not self.base.trains_locally:
            raise AlgorithmError(
                f"personal_layers need clients that train locally; algorithm={self.base!r} "
                f"only computes gradients at the global weights, so personal layers would "
                f"never train. Use FedAvg, FedProx, SCAFFOLD or Mime-lite.")

    # The wrapped algorithm's traits.
    @property
    def name(self) -> str:
        return f"{self.base.name}+personal"

    @property
    def weighted(self) -> bool:  # type: ignore[override]
        return self.base.weighted

    @property
    def uses_client_optimizer(self) -> bool:  # type: ignore[override]
        return self.base.uses_client_optimizer

    @property
    def needs_full_gradient(self) -> bool:  # type: ignore[override]
        return self.base.needs_full_gradient

    @property
    def counts_non_finite_clients(self) -> bool:  # type: ignore[override]
        return self.base.counts_non_finite_clients

    @property
    def trains_personal_model(self) -> bool:  # type: ignore[override]
        return self.base.trains_personal_model

    # -- the client's state: the base's, then the personal values --------------------
    def _split(self, state: Tensors) -> tuple[Tensors, Tensors]:
        cut = len(state) - len(self.positions)
        return list(state[:cut]), list(state[cut:])

    def _base_context(self, ctx: ClientContext) -> ClientContext:
        base_state, _ = self._split(ctx.state)
        return dataclasses.replace(ctx, state=base_state,
                                   broadcast_weights=self.client_start(ctx))

    def client_state(self, weights: Tensors) -> Tensors:
        return list(self.base.client_state(weights)) + [weights[i] for i in self.positions]

    def client_start(self, ctx: ClientContext) -> Tensors:
        _, own = self._split(ctx.state)
        start = list(ctx.broadcast_weights)
        for i, value in zip(self.positions, own):
            start[i] = value
        return start

    # -- everything else is the base's, on the client's start ----------------------------
    def server_init(self, weights: Tensors, client_optimizer: Any) -> dict:
        return self.base.server_init(weights, client_optimizer)

    def broadcast(self, state: dict) -> dict:
        return self.base.broadcast(state)

    def correct_gradient(self, ctx: ClientContext, weights: Tensors, grads: Tensors) -> Tensors:
        return self.base.correct_gradient(self._base_context(ctx), weights, grads)

    def local_step(self, ctx: ClientContext, weights: Tensors, grads: Tensors, optimizer: Any,
                   optimizer_state: dict) -> tuple[Tensors, dict]:
        return self.base.local_step(self._base_context(ctx), weights, grads, optimizer,
                                    optimizer_state)

    def personal_step(self, ctx: ClientContext, personal: Tensors, grads: Tensors,
                      optimizer: Any, optimizer_state: dict) -> tuple[Tensors, dict]:
        return self.base.personal_step(self._base_context(ctx), personal, grads, optimizer,
                                       optimizer_state)

    def client_end(self, ctx: ClientContext, weights: Tensors) -> ClientOutput:
        import tensorflow as tf  # noqa: PLC0415

        out = self.base.client_end(self._base_context(ctx), weights)
        update = list(out.update)
        for i in self.positions:  # never sent: the global values stay as they are
            update[i] = tf.zeros_like(update[i])
        own = [weights[i] for i in self.positions]
        return ClientOutput(update=update, state=list(out.state) + own, extras=out.extras)

    def server_update(self, ctx: ServerContext) -> tuple[Tensors, dict]:
        import tensorflow as tf  # noqa: PLC0415

        # The clients sent zeros there; an aggregator's noise (DP) must not move them.
        update = list(ctx.update)
        for i in self.positions:
            update[i] = tf.zeros_like(update[i])
        return self.base.server_update(dataclasses.replace(ctx, update=update))

    def server_state_update(self, ctx: ServerContext) -> dict:
        return self.base.server_state_update(ctx)
