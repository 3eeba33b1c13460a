"""The compiled Keras optimizer as an engine-neutral client update rule.

The optimizer given to ``model.compile()`` is read hyper-parameter for
hyper-parameter into a ``ClientOptimizerSpec``; each engine builds the same rule
from it (the TFF engine as ``tff.learning.optimizers``, since TFF 0.87 takes no
Keras optimizers; the native engine as pure tensor functions):

* ``SGD(momentum, nesterov=False)``: heavy-ball momentum (TFF ``build_sgdm``)
* ``SGD(momentum > 0, nesterov=True)``: Nesterov momentum (TFF has none: kerasfed's)
* ``Adam(beta_1, beta_2, epsilon)``: the bias-corrected rule (TFF ``build_adam``)
* ``Adam(weight_decay=w)`` and ``AdamW(weight_decay=w)``: decoupled decay,
  ``w -= lr * wd * w`` (TFF ``build_adamw``)
* ``Adagrad(initial_accumulator_value, epsilon)``: ``g / sqrt(v + epsilon)``
* ``RMSprop(rho, momentum, epsilon, centered)``: as Keras computes it (TFF's
  ``build_rmsprop`` puts ``epsilon`` outside the square root: kerasfed's)

Every hyper-parameter, ``epsilon`` included, is passed explicitly, so neither
library's defaults decide it. The legacy ``keras.optimizers.legacy`` SGD, Adam
and RMSprop follow the same rules and are accepted too.

Every rule was checked step for step against Keras (tests/test_client_optimizers.py).
Everything else is refused with an error that names the setting and the fix,
rather than trained with a silently different rule: other optimizers (Adafactor,
Nadam, Adamax, Ftrl, Lion, Adadelta), ``amsgrad=True``, learning-rate schedules,
``clipnorm``/``clipvalue``/``global_clipnorm``, ``use_ema``, ``weight_decay`` on
optimizers other than Adam/AdamW, legacy ``decay`` and the legacy Adagrad (which,
unlike the current one, adds ``epsilon`` outside the square root).

In federated training the optimizer state (momentum, moments, step count) starts
afresh on every client in every round: a client optimizer only lives for one
client's local training (except in Mime-lite, whose server keeps a global state).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from kerasfed.errors import (  # noqa: F401  (defined with the family)
    ClientOptimizerError,
    ClientOptimizerTypeError,
)

SUPPORTED_KERAS_OPTIMIZERS: tuple[str, ...] = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop")

# Keys every Keras 2.14 optimizer config has that do not change the update rule
# (or only matter when another key, checked below, enables them).
_INERT_KEYS = frozenset(
    {"name", "jit_compile", "is_legacy_optimizer", "ema_momentum", "ema_overwrite_frequency"}
)
_RULE_KEYS: dict[str, frozenset[str]] = {
    "SGD": frozenset({"momentum", "nesterov"}),
    "Adam": frozenset({"beta_1", "beta_2", "epsilon", "amsgrad"}),
    "AdamW": frozenset({"beta_1", "beta_2", "epsilon", "amsgrad"}),
    "Adagrad": frozenset({"initial_accumulator_value", "epsilon"}),
    "RMSprop": frozenset({"rho", "momentum", "epsilon", "centered"}),
}
# Settings TFF's client training has no place for, with their neutral value.
_UNSUPPORTED_SETTINGS = {
    "clipnorm": (None, "clip in the model's loss or use an aggregator with clipping"),
    "clipvalue": (None, "clip in the model's loss or use an aggregator with clipping"),
    "global_clipnorm": (None, "clip in the model's loss or use an aggregator with clipping"),
    "use_ema": (False, "evaluate the federated model itself"),
    "decay": (0.0, "compile with a constant learning rate"),  # legacy optimizers only
    "loss_scale_factor": (None, "compile without loss scaling"),  # Keras 3
    "gradient_accumulation_steps": (None, "use larger client batches"),  # Keras 3
}


def client_optimizer_from_keras(
    optimizer_config: dict, *, caller: str = "fit_federated"
) -> ClientOptimizerSpec:
    """Returns the TFF optimizer with the update rule of a compiled Keras optimizer.

    Args:
      optimizer_config: ``{"class_name": "Adam", "config": optimizer.get_config()}``,
        as ``ModelRecipe.optimizer_config()`` returns it.
      caller: Name of the public function, for error messages.

    Returns:
      A ``ClientOptimizerSpec``; each engine builds its own optimizer from it.

    Raises:
      ClientOptimizerTypeError: ``optimizer_config`` is not such a dict.
      ClientOptimizerError: The optimizer or one of its settings cannot be
        reproduced in TFF (the message names it and how to fix it).

    Example:
      >>> opt = keras.optimizers.SGD(0.1, momentum=0.9)  # doctest: +SKIP
      >>> client_optimizer_from_keras(
      ...     {"class_name": "SGD", "config": opt.get_config()})  # doctest: +SKIP
    """
    class_name, config = _split(optimizer_config, caller)
    if class_name not in _RULE_KEYS:
        raise ClientOptimizerError(
            f"{caller}: the model is compiled with the Keras optimizer {class_name!r}, "
            f"which has no equivalent TFF client optimizer. Supported: "
            f"{', '.join(SUPPORTED_KERAS_OPTIMIZERS)}. Compile the model with one of "
            f"them, e.g. `model.compile(optimizer=keras.optimizers.Adam(1e-3), ...)`."
        )
    _check_settings(class_name, config, caller)
    lr = _learning_rate(class_name, config, caller)
    return _BUILDERS[class_name](lr, config)


def _split(optimizer_config: Any, caller: str) -> tuple[str, dict]:
    if (
        not isinstance(optimizer_config, dict)
        or not isinstance(optimizer_config.get("class_name"), str)
        or not isinstance(optimizer_config.get("config"), dict)
    ):
        raise ClientOptimizerTypeError(
            f"{caller}: expected the optimizer as a dict "
            f'{{"class_name": str, "config": dict}} (see ModelRecipe.optimizer_config()). '
            f"Received: {optimizer_config!r} of type {type(optimizer_config).__name__}."
        )
    return optimizer_config["class_name"], optimizer_config["config"]


def _check_settings(class_name: str, config: dict, caller: str) -> None:
    for key, (neutral, fix) in _UNSUPPORTED_SETTINGS.items():
        if config.get(key, neutral) not in (neutral, None):
            raise ClientOptimizerError(
                f"{caller}: the compiled {class_name} optimizer sets {key}="
                f"{config[key]!r}, which TFF's client optimizers cannot reproduce. "
                f"Compile without `{key}` (the default), or {fix}."
            )
    weight_decay = config.get("weight_decay")
    if weight_decay and class_name not in ("Adam", "AdamW"):
        raise ClientOptimizerError(
            f"{caller}: the compiled {class_name} optimizer sets weight_decay="
            f"{weight_decay!r}; TFF has decoupled weight decay only for Adam. Compile "
            f"{class_name} without `weight_decay`, use keras.optimizers.AdamW, or add "
            f"`kernel_regularizer=keras.regularizers.L2(...)` to the layers."
        )
    if class_name == "Adagrad" and "decay" in config:  # only legacy optimizers have `decay`
        raise ClientOptimizerError(
            f"{caller}: the model is compiled with keras.optimizers.legacy.Adagrad, which "
            f"divides by sqrt(accumulator) + epsilon; TFF's Adagrad (like the current "
            f"keras.optimizers.Adagrad) divides by sqrt(accumulator + epsilon). Compile "
            f"with keras.optimizers.Adagrad(...) instead."
        )
    if config.get("amsgrad"):
        raise ClientOptimizerError(
            f"{caller}: the compiled {class_name} optimizer sets amsgrad=True; TFF has "
            f"no AMSGrad variant. Compile with amsgrad=False (the default)."
        )
    known = _RULE_KEYS[class_name] | _INERT_KEYS | _UNSUPPORTED_SETTINGS.keys()
    unknown = sorted(set(config) - known - {"learning_rate", "weight_decay"})
    if unknown:
        raise ClientOptimizerError(
            f"{caller}: the compiled {class_name} optimizer has settings kerasfed cannot "
            f"translate to TFF: {unknown}. Compile with the stock "
            f"keras.optimizers.{class_name} (supported settings: "
            f"{sorted(_RULE_KEYS[class_name] | {'learning_rate'})})."
        )


def _learning_rate(class_name: str, config: dict, caller: str) -> float:
    lr = config.get("learning_rate")
    if isinstance(lr, dict):  # a serialized LearningRateSchedule
        schedule = lr.get("class_name", "a learning-rate schedule")
        raise ClientOptimizerError(
            f"{caller}: the compiled {class_name} optimizer uses the learning-rate "
            f"schedule {schedule}. Federated clients restart their optimizer every "
            f"round, so a per-step schedule has no single meaning there. Compile with "
            f"a constant float learning rate, e.g. {class_name}(learning_rate=0.01)."
        )
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise ClientOptimizerError(
            f"{caller}: expected the compiled {class_name} optimizer's learning_rate to "
            f"be a positive float. Received: learning_rate={lr!r}."
        )
    return float(lr)


@dataclasses.dataclass(frozen=True)
class ClientOptimizerSpec:
    """An engine-neutral client update rule, read from the compiled Keras optimizer.

    Attributes:
      kind: ``"sgd"``, ``"adam"``, ``"adamw"``, ``"adagrad"`` or ``"rmsprop"``.
      learning_rate: The constant learning rate.
      params: The rule's other hyper-parameters, as floats/bools, every one explicit
        (``momentum``, ``nesterov``; ``beta_1``, ``beta_2``, ``epsilon``,
        ``weight_decay``; ``initial_accumulator_value``; ``rho``, ``centered``).
    """

    kind: str
    learning_rate: float
    params: dict = dataclasses.field(default_factory=dict)


def _sgd(lr: float, config: dict) -> ClientOptimizerSpec:
    # Keras SGD with nesterov and momentum 0 is plain SGD.
    momentum = float(config.get("momentum", 0.0))
    return ClientOptimizerSpec(
        "sgd", lr, {"momentum": momentum, "nesterov": bool(config.get("nesterov")) and momentum > 0}
    )


def _adam(lr: float, config: dict) -> ClientOptimizerSpec:
    # Keras Adam(weight_decay=w) is exactly AdamW(weight_decay=w). Every value is
    # explicit: neither library's defaults may decide it.
    weight_decay = float(config.get("weight_decay") or 0.0)
    params = {
        "beta_1": float(config["beta_1"]),
        "beta_2": float(config["beta_2"]),
        "epsilon": float(config["epsilon"]),
        "weight_decay": weight_decay,
    }
    return ClientOptimizerSpec("adamw" if weight_decay else "adam", lr, params)


def _adagrad(lr: float, config: dict) -> ClientOptimizerSpec:
    return ClientOptimizerSpec("adagrad", lr, {
        "initial_accumulator_value": float(config["initial_accumulator_value"]),
        "epsilon": float(config["epsilon"]),
    })


def _rmsprop(lr: float, config: dict) -> ClientOptimizerSpec:
    return ClientOptimizerSpec("rmsprop", lr, {
        "rho": float(config["rho"]),
        "momentum": float(config.get("momentum", 0.0)),
        "epsilon": float(config["epsilon"]),
        "centered": bool(config.get("centered", False)),
    })


_BUILDERS = {"SGD": _sgd, "Adam": _adam, "AdamW": _adam, "Adagrad": _adagrad, "RMSprop": _rmsprop}
