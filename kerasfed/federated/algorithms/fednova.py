"""FedNova: each client's progress normalized by its amount of local work.

Wang, Liu, Liang, Joshi, Poor (2020), "Tackling the Objective Inconsistency
Problem in Heterogeneous Federated Optimization", NeurIPS; arXiv:2007.07481.

When clients take different numbers of local steps ``tau_i`` (different data
sizes, epochs or step caps), FedAvg's weighted mean of model deltas gives the
clients that did more steps more pull, and converges to the optimum of a
*different* objective than the one weighted by ``p_i`` (the objective
inconsistency of the paper). FedNova divides each client's delta by the amount
of work behind it and rescales the mean by a common effective number of steps:

* a client whose ``tau_i`` local steps moved it from ``w_t`` to ``w_i`` sends
  ``d_i = (w_i - w_t) / ||a_i||_1`` and ``||a_i||_1`` (extras ``"tau"``), where
  ``a_i`` holds how much each local gradient counts in ``w_i - w_t``:
  ``||a_i||_1 = tau_i`` for plain SGD;
  ``(tau_i - rho * (1 - rho**tau_i) / (1 - rho)) / (1 - rho)`` for SGD with
  (heavy-ball) momentum ``rho`` (the paper's Section 5, its code's
  ``local_normalizing_vec``); for Nesterov momentum the same count of each
  gradient's weight gives ``tau_i + rho / (1 - rho) * (tau_i - rho * (1 -
  rho**tau_i) / (1 - rho))`` (beyond the paper). The momentum is read from the
  compiled client optimizer. Adaptive client optimizers (Adam, Adagrad, RMSprop)
  have no such ``a_i``: kerasfed normalizes by ``tau_i`` for them.
* the server averages ``d_i`` with the aggregator chain and ``||a_i||_1`` with
  the same client weights ``p_i`` (examples, as in the paper, or uniform),
  ``tau_eff = sum_i p_i ||a_i||_1``, and applies the server optimizer to the
  pseudo-gradient ``-tau_eff * sum_i p_i d_i``: server SGD with learning rate 1
  gives the paper's ``w_t + tau_eff * sum_i p_i d_i``, and other server
  optimizers compose as in FedOpt.

With every ``tau_i`` equal FedNova is FedAvg exactly. A client without a local
step (no examples) sends ``d_i = 0`` and ``||a_i||_1 = 0``.

The TFF engine has no FedNova; it runs on the native engine.
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
)


@dataclasses.dataclass(frozen=True)
class FedNova(Algorithm):
    """FedNova (Wang et al. 2020): normalized averaging of unequal local work.

    Attributes:
      weighted: Weight the normalized updates and the clients' step counts by
        the clients' numbers of examples (default True, the paper's ``p_i``);
        False weights clients uniformly.

    Example:
      >>> FedNova().name, FedNova(weighted=False).name
      ('fednova', 'fednova_unweighted')
    """

    weighted: bool = True

    def __post_init__(self) -> None:
        check_bool("FedNova", "weighted", self.weighted)

    @property
    def name(self) -> str:
        return "fednova" if self.weighted else "fednova_unweighted"

    def server_init(self, weights: Tensors, client_optimizer: Any) -> dict:
        # The client optimizer's momentum decides a_i; it travels to the clients
        # (a constant of the compiled optimizer, kept so that client_end sees it).
        import tensorflow as tf  # noqa: PLC0415

        del weights
        kind = getattr(client_optimizer, "kind", None)
        momentum = float(getattr(client_optimizer, "momentum", 0.0)) if kind in (
            "sgd", "nesterov") else 0.0
        return {"momentum": tf.constant(momentum, tf.float32),
                "nesterov": tf.constant(1.0 if kind == "nesterov" else 0.0, tf.float32)}

    def client_end(self, ctx: ClientContext, weights: Tensors) -> ClientOutput:
        import tensorflow as tf  # noqa: PLC0415

        norm = work_norm(ctx.local_steps, ctx.server["momentum"], ctx.server["nesterov"])
        # ||a_i||_1 >= 1 after one step or more; 0 steps leave w_i = w_t (d_i = 0).
        scale = 1.0 / tf.maximum(norm, 1.0)
        update = [(w - w0) * tf.cast(scale, w.dtype)
                  for w, w0 in zip(weights, ctx.broadcast_weights)]
        return ClientOutput(update=update, state=list(ctx.state), extras={"tau": [norm]})

    def server_update(self, ctx: ServerContext) -> tuple[Tensors, dict]:
        import tensorflow as tf  # noqa: PLC0415

        tau_eff = ctx.means["tau"][0]
        state, weights = ctx.optimizer.step(
            ctx.optimizer_state, ctx.weights,
            [-tf.cast(tau_eff, u.dtype) * u for u in ctx.update])
        return weights, state


def work_norm(steps: Any, momentum: Any, nesterov: Any) -> Any:
    """``||a_i||_1``: the summed weight of a client's ``steps`` local gradients in its delta.

    Args:
      steps: The client's number of local steps ``tau_i`` (a float scalar tensor).
      momentum: The client optimizer's momentum ``rho`` in [0, 1) (0: plain SGD).
      nesterov: 1.0 for Nesterov momentum, else 0.0.

    Returns:
      ``tau_i`` for plain SGD; with heavy-ball momentum, gradient ``k`` of ``tau``
      weighs ``(1 - rho**(tau - k)) / (1 - rho)``, summed:
      ``(tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)``; Nesterov's adds
      ``1`` per gradient to ``rho`` times that weight.
    """
    import tensorflow as tf  # noqa: PLC0415

    steps = tf.cast(steps, tf.float32)
    rho = tf.cast(momentum, tf.float32)
    one_minus = tf.maximum(1.0 - rho, 1e-6)
    heavy_ball = (steps - rho * (1.0 - tf.pow(rho, steps)) / one_minus) / one_minus
    heavy_ball = tf.where(rho > 0, heavy_ball, steps)  # exact for plain SGD
    # Keras accepts momentum 1.0: every gradient then counts tau - k times.
    heavy_ball = tf.where(rho < 1, heavy_ball, steps * (steps + 1.0) / 2.0)
    return tf.where(tf.cast(nesterov, tf.float32) > 0, steps + rho * heavy_ball, heavy_ball)
