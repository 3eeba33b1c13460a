"""Federated Averaging (FedAvg).

McMahan, Moore, Ramage, Hampson, Agüera y Arcas (2017), "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS; arXiv:1602.05629.

Each round every selected client trains the broadcast model on its own data with
the client optimizer (the compiled Keras optimizer) for the local epochs, and
sends back its model delta. The server averages the deltas -- weighted by the
clients' numbers of examples (``weighted=True``, the paper's algorithm) or
uniformly -- and applies the mean with the server optimizer; server SGD with
learning rate 1.0 is the paper's plain averaging, other server optimizers give
FedAvgM / FedAdam / FedYogi / FedAdagrad (see ``server_optimizers``).
Built with ``tff.learning.algorithms.build_weighted_fed_avg`` /
``build_unweighted_fed_avg``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from kerasfed.federated.algorithms._base import Algorithm, ModelFn, Weighting, build_for_weighting, check_bool


@dataclasses.dataclass(frozen=True)
class FedAvg(Algorithm):
    """Federated Averaging.

    Attributes:
      weighted: Weight each client's update by its number of examples (default
        True, as in McMahan et al.); False averages clients uniformly.

    Example:
      >>> FedAvg().name, FedAvg(weighted=False).name
      ('fedavg', 'fedavg_unweighted')
    """

    weighted: bool = True

    def __post_init__(self) -> None:
        check_bool("FedAvg", "weighted", self.weighted)

    @property
    def name(self) -> str:
        return "fedavg" if self.weighted else "fedavg_unweighted"

    @property
    def unweighted_variant(self) -> str:
        return "algorithm='fedavg_unweighted' or FedAvg(weighted=False)"

    def build_process(
        self,
        tff: Any,
        weighting: Weighting,
        *,
        model_fn: ModelFn,
        client_optimizer: Any,
        server_optimizer: Any,
        model_aggregator: Optional[Any],
    ) -> Any:
        algorithms = tff.learning.algorithms
        return build_for_weighting(
            tff, weighting,
            weighted_builder=algorithms.build_weighted_fed_avg,
            unweighted_builder=algorithms.build_unweighted_fed_avg,
            model_fn=model_fn, model_aggregator=model_aggregator,
            client_optimizer_fn=client_optimizer, server_optimizer_fn=server_optimizer,
        )
