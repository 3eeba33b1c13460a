"""FedProx: FedAvg whose clients stay close to the round's server model.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith (2020), "Federated Optimization in
Heterogeneous Networks", MLSys; arXiv:1812.06127.

Each client minimises its loss plus ``mu/2 * ||w - w_t||**2`` (``w_t``: the model
it received), which limits client drift on heterogeneous data; aggregation is
FedAvg's. ``mu=0`` is exactly FedAvg. Li et al. tune ``mu`` in
{0.001, 0.01, 0.1, 1}.

Each client gradient gains ``mu * (w - w_t)``. The TFF engine does *not* use
``tff.learning.algorithms.build_weighted_fed_prox``: in TFF 0.87 its proximal
term has the wrong sign (see ``engines/tff/proximal.py``); it builds TFF's FedAvg
with the client optimizer wrapped to add the term.
"""

from __future__ import annotations

import dataclasses
import warnings

from kerasfed.federated.algorithms._base import (
    Algorithm,
    ClientContext,
    Tensors,
    check_bool,
    check_non_negative,
)


@dataclasses.dataclass(frozen=True)
class FedProx(Algorithm):
    """FedProx.

    Attributes:
      mu: Proximal strength, a finite float >= 0. Default 0.01. 0 warns: it is FedAvg.
      weighted: Weight client updates by their numbers of examples (default True).

    Example:
      >>> FedProx(mu=0.1).name
      'fedprox'
    """

    mu: float = 0.01
    weighted: bool = True

    def __post_init__(self) -> None:
        mu = check_non_negative("FedProx", "mu", self.mu,
                                "Li et al. use values in {0.001, 0.01, 0.1, 1}.")
        check_bool("FedProx", "weighted", self.weighted)
        object.__setattr__(self, "mu", mu)
        if self.mu == 0:
            warnings.warn(
                "FedProx with mu=0.0 has no proximal term: it is FedAvg. Pass mu > 0 "
                "(e.g. FedProx(mu=0.01)) or use algorithm='fedavg'.",
                UserWarning,
                # 1: this line, 2: the dataclass-generated __init__, 3: the caller.
                stacklevel=3,
            )

    @property
    def name(self) -> str:
        return "fedprox" if self.weighted else "fedprox_unweighted"

    def broadcast(self, state: dict) -> dict:
        # mu travels to the clients with the weights (TFF counts it in the payload).
        import tensorflow as tf  # noqa: PLC0415

        return {"mu": tf.constant(self.mu, tf.float32)}

    def correct_gradient(self, ctx: ClientContext, weights: Tensors, grads: Tensors) -> Tensors:
        # The gradient of mu/2 * ||w - w_t||^2 added to the loss's.
        import tensorflow as tf  # noqa: PLC0415

        mu = ctx.server["mu"]
        return [g + tf.cast(mu, g.dtype) * (w - w0)
                for g, w, w0 in zip(grads, weights, ctx.broadcast_weights)]
