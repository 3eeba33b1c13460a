"""SCAFFOLD: stochastic controlled averaging.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh (2020), "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", ICML; arXiv:1910.06378.

The server keeps a control variate ``c`` and every client its own ``c_i`` (both
zero at the start; ``c_i`` stays with the client between the rounds it takes part
in, in the run's client-state store). Algorithm 1 of the paper, with option II
for the client control variate:

* each local step applies the gradient ``g_i(y) - c_i + c`` (with the compiled
  optimizer; the paper's is SGD with rate ``eta_l``);
* after its ``K`` local steps (each client's own number of steps) the client sets
  ``c_i+ = c_i - c + (x - y_i) / (K * eta_l)`` and sends ``Delta y = y_i - x``
  and ``Delta c = c_i+ - c_i``;
* the server averages both over the round's participants ``S`` (unweighted, as
  in the paper; ``weighted=True`` weights clients by examples), applies
  ``Delta x`` through the server optimizer (server SGD at ``server_learning_rate``
  is the paper's global step size ``eta_g``) and moves ``c += |S|/N * Delta c``,
  ``N`` the number of clients of the federation.

The TFF engine has no SCAFFOLD; it runs on the native engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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
class Scaffold(Algorithm):
    """SCAFFOLD (Karimireddy et al. 2020), option II control variates.

    Attributes:
      weighted: Weight ``Delta y`` and ``Delta c`` by the clients' numbers of
        examples (default False: the paper's unweighted means).

    Example:
      >>> Scaffold().name
      'scaffold'
    """

    weighted: bool = False

    def __post_init__(self) -> None:
        check_bool("Scaffold", "weighted", self.weighted)

    @property
    def name(self) -> str:
        return "scaffold_weighted" if self.weighted else "scaffold"

    def client_state(self, weights: Tensors) -> Tensors:
        return zeros_like(weights)  # c_i

    def server_init(self, weights: Tensors, client_optimizer: Any) -> dict:
        return {"control": zeros_like(weights)}  # c

    def correct_gradient(self, ctx: ClientContext, weights: Tensors, grads: Tensors) -> Tensors:
        return [g - ci + c for g, ci, c in zip(grads, ctx.state, ctx.server["control"])]

    def client_end(self, ctx: ClientContext, weights: Tensors) -> ClientOutput:
        import tensorflow as tf  # noqa: PLC0415

        steps = ctx.local_steps
        # Option II; a client without a step (no data) keeps its c_i.
        scale = tf.where(steps > 0, 1.0 / (tf.maximum(steps, 1.0) * ctx.learning_rate), 0.0)
        new_state, control_delta = [], []
        for ci, c, x, y in zip(ctx.state, ctx.server["control"], ctx.broadcast_weights, weights):
            ci_new = tf.where(steps > 0, ci - c + (x - y) * tf.cast(scale, x.dtype), ci)
            new_state.append(ci_new)
            control_delta.append(ci_new - ci)
        return ClientOutput(update=[y - x for x, y in zip(ctx.broadcast_weights, weights)],
                            state=new_state, extras={"control_delta": control_delta})

    def server_state_update(self, ctx: ServerContext) -> dict:
        share = ctx.participants / max(ctx.population, 1)
        return {"control": [c + share * d for c, d in
                            zip(ctx.state["control"], ctx.means["control_delta"])]}
