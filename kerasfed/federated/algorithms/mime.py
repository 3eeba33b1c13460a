"""Mime-lite.

Karimireddy, Jaggi, Kale, Mohri, Reddi, Stich, Suresh (2021), "Breaking the
centralized barrier for cross-device federated learning" (Mime), NeurIPS;
arXiv:2008.03606.

Mime-lite makes clients mimic centralized training with a stateful optimizer
(momentum, Adam, ...): the server keeps one *global* optimizer state. Each round
a client (1) computes the full-batch gradient of its data at the received model,
(2) trains locally with the optimizer applied with the *frozen* global state, and
(3) returns its model delta and that gradient. The server applies the averaged
delta and advances the global optimizer state with the averaged full gradient.

How kerasfed maps its arguments (``tff.learning.algorithms.build_weighted_mime_lite``
/ ``build_unweighted_mime_lite``):

* ``client_optimizer`` (the compiled Keras optimizer) is Mime's *base optimizer*:
  it both steps the clients and defines the global state. With a stateless one
  (SGD without momentum) Mime-lite is FedAvg plus an extra gradient pass per
  client; use a stateful optimizer (SGD with momentum, Adam, ...) for Mime.
* ``server_optimizer`` applies the averaged client delta exactly as in FedAvg
  (its negation is the pseudo-gradient). The paper's Mime-lite adds the averaged
  delta (server SGD with learning rate 1.0, no momentum: kerasfed's defaults);
  other server optimizers compose as in FedOpt, which goes beyond the paper.
  The global optimizer state is *not* advanced by the server optimizer and does
  not use the server learning rate: it follows the base optimizer's own
  hyper-parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from kerasfed.federated.algorithms._base import (
    Algorithm,
    ClientContext,
    ClientOutput,
    ServerContext,
    Tensors,
    check_bool,
    zeros_like,
)


@dataclasses.dataclass(frozen=True)
class MimeLite(Algorithm):
    """Mime-lite with the compiled optimizer as base optimizer.

    Attributes:
      weighted: Weight client deltas and full gradients by the clients' numbers of
        examples (default True); False weights clients uniformly.

    Example:
      >>> MimeLite().name
      'mime'
    """

    weighted: bool = True

    needs_full_gradient: ClassVar[bool] = True
    counts_non_finite_clients: ClassVar[bool] = True  # as TFF's mime client work

    def __post_init__(self) -> None:
        check_bool("MimeLite", "weighted", self.weighted)

    @property
    def name(self) -> str:
        return "mime" if self.weighted else "mime_unweighted"

    def server_init(self, weights: Tensors, client_optimizer: Any) -> dict:
        # The global optimizer state, slots named as TFF's (a checkpoint of either
        # engine resumes on the other).
        return client_optimizer.init(weights)

    def local_step(self, ctx: ClientContext, weights: Tensors, grads: Tensors, optimizer: Any,
                   optimizer_state: dict) -> tuple[Tensors, dict]:
        # The step uses the frozen global state; the client's own is never advanced.
        _, weights = optimizer.step(ctx.server, weights, grads)
        return weights, optimizer_state

    def client_end(self, ctx: ClientContext, weights: Tensors) -> ClientOutput:
        out = super().client_end(ctx, weights)
        return out._replace(extras={"full_gradient": list(ctx.full_gradient)})

    def server_state_update(self, ctx: ServerContext) -> dict:
        # The global state advances with the mean full gradient every round (TFF
        # does so without checking it is finite).
        state, _ = ctx.client_optimizer.step(ctx.state, zeros_like(ctx.weights),
                                             ctx.means["full_gradient"])
        return state
