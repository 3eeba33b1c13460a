"""kerasfed's optimizer settings as ``tff.learning.optimizers``.

Client rules come from ``ClientOptimizerSpec`` (the compiled Keras optimizer);
TFF has no Nesterov SGD and computes RMSprop differently from Keras, so those two
are kerasfed's own TFF optimizers (``keras_rules.py``). Server optimizers map one
to one onto TFF's builders.
"""

from __future__ import annotations

from typing import Any

import tensorflow_federated as tff

from kerasfed.federated.client_optimizers import ClientOptimizerSpec
from kerasfed.federated.engines.tff.keras_rules import KerasRMSprop, NesterovSGD
from kerasfed.federated.server_optimizers import (
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerYogi,
)

_optimizers = tff.learning.optimizers


def tff_client_optimizer(spec: ClientOptimizerSpec) -> Any:
    """The ``tff.learning.optimizers.Optimizer`` with ``spec``'s update rule."""
    lr, p = spec.learning_rate, spec.params
    if spec.kind == "sgd":
        if p["nesterov"]:
            return NesterovSGD(lr, p["momentum"])
        return _optimizers.build_sgdm(lr, momentum=p["momentum"] or None)
    if spec.kind in ("adam", "adamw"):
        args = dict(beta_1=p["beta_1"], beta_2=p["beta_2"], epsilon=p["epsilon"])
        if spec.kind == "adamw":
            return _optimizers.build_adamw(lr, weight_decay=p["weight_decay"], **args)
        return _optimizers.build_adam(lr, **args)
    if spec.kind == "adagrad":
        return _optimizers.build_adagrad(
            lr, initial_preconditioner_value=p["initial_accumulator_value"], epsilon=p["epsilon"]
        )
    if spec.kind == "rmsprop":
        return KerasRMSprop(lr, rho=p["rho"], momentum=p["momentum"], epsilon=p["epsilon"],
                            centered=p["centered"])
    raise ValueError(f"unknown client optimizer kind {spec.kind!r}")


def tff_server_optimizer(optimizer: ServerOptimizer, learning_rate: float) -> Any:
    """The ``tff.learning.optimizers.Optimizer`` a server optimizer setting means.

    ``learning_rate`` is a float >= 0 (checked by ``learning_rates.round_schedule``).
    """
    lr = float(learning_rate)
    if isinstance(optimizer, ServerSGD):
        return _optimizers.build_sgdm(lr, momentum=optimizer.momentum or None)
    if isinstance(optimizer, ServerAdam):
        return _optimizers.build_adam(
            lr, beta_1=optimizer.beta_1, beta_2=optimizer.beta_2, epsilon=optimizer.epsilon
        )
    if isinstance(optimizer, ServerYogi):
        return _optimizers.build_yogi(
            lr, beta_1=optimizer.beta_1, beta_2=optimizer.beta_2, epsilon=optimizer.epsilon,
            initial_preconditioner_value=optimizer.initial_accumulator_value,
        )
    if isinstance(optimizer, ServerAdagrad):
        return _optimizers.build_adagrad(
            lr, initial_preconditioner_value=optimizer.initial_accumulator_value,
            epsilon=optimizer.epsilon,
        )
    raise ValueError(f"unknown server optimizer {optimizer!r}")
