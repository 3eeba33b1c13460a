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
The TFF engine builds it with ``tff.learning.algorithms.build_weighted_fed_avg``
/ ``build_unweighted_fed_avg``.
"""

from __future__ import annotations

import dataclasses

from kerasfed.federated.algorithms._base import Algorithm, check_bool


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
