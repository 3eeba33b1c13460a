"""kerasfed's algorithm settings as ``tff.learning`` learning processes.

One builder per algorithm; each calls TFF's own builder with the weighting the
algorithm asks for. FedProx is FedAvg with a proximal client optimizer, since
TFF 0.87's own FedProx has the wrong sign (``proximal.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow_federated as tff

from kerasfed.federated.algorithms import Algorithm, FedAvg, FedProx, FedSGD, MimeLite
from kerasfed.federated.engines.tff.proximal import ProximalOptimizer

ModelFn = Callable[[], Any]  # returns a fresh tff.learning.models.VariableModel


def _weighted_or_not(algorithm, weighted_builder, unweighted_builder, model_fn, **optimizers):
    weighted = optimizers.pop("weighted", algorithm.weighted)
    if optimizers.get("model_aggregator") is None:
        optimizers.pop("model_aggregator", None)
    if weighted:
        return weighted_builder(
            model_fn, client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES, **optimizers)
    return unweighted_builder(model_fn, **optimizers)


def _fedavg(algorithm, model_fn, client_optimizer, server_optimizer, **aggregation):
    learning = tff.learning.algorithms
    return _weighted_or_not(
        algorithm, learning.build_weighted_fed_avg, learning.build_unweighted_fed_avg, model_fn,
        client_optimizer_fn=client_optimizer, server_optimizer_fn=server_optimizer, **aggregation,
    )


def _fedprox(algorithm, model_fn, client_optimizer, server_optimizer, **aggregation):
    return _fedavg(algorithm, model_fn, ProximalOptimizer(client_optimizer, algorithm.mu),
                   server_optimizer, **aggregation)


def _fedsgd(algorithm, model_fn, client_optimizer, server_optimizer, **aggregation):
    del algorithm, client_optimizer  # always weighted by examples; clients only compute gradients
    aggregation.pop("weighted", None)  # arguments.py refuses unweighted aggregators here
    if aggregation.get("model_aggregator") is None:
        aggregation.pop("model_aggregator", None)
    return tff.learning.algorithms.build_fed_sgd(
        model_fn, server_optimizer_fn=server_optimizer, **aggregation)


def _mime(algorithm, model_fn, client_optimizer, server_optimizer, **aggregation):
    learning = tff.learning.algorithms
    return _weighted_or_not(
        algorithm, learning.build_weighted_mime_lite, learning.build_unweighted_mime_lite,
        model_fn, base_optimizer=client_optimizer, server_optimizer=server_optimizer,
        **aggregation,
    )


_BUILDERS = {FedAvg: _fedavg, FedProx: _fedprox, FedSGD: _fedsgd, MimeLite: _mime}


def build_learning_process(
    algorithm: Algorithm, *, model_fn: ModelFn, client_optimizer: Any, server_optimizer: Any,
    model_aggregator: Any = None, weighted: bool | None = None,
) -> Any:
    """The ``tff.learning.templates.LearningProcess`` of ``algorithm``.

    Args:
      algorithm: A kerasfed algorithm value.
      model_fn: Builds a fresh ``tff.learning.models.VariableModel`` per call.
      client_optimizer: ``tff.learning.optimizers.Optimizer`` (unused by FedSGD).
      server_optimizer: ``tff.learning.optimizers.Optimizer``.
      model_aggregator: A ``tff.aggregators`` factory for the model update, or
        None for TFF's default mean.
      weighted: Override of the algorithm's weighting (DP and secure sums are
        unweighted), or None.
    """
    aggregation = {"model_aggregator": model_aggregator}
    if weighted is not None:
        aggregation["weighted"] = weighted
    return _BUILDERS[type(algorithm)](algorithm, model_fn, client_optimizer, server_optimizer,
                                      **aggregation)
