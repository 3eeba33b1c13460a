"""Server optimizers: how the server applies the averaged client update each round.

Each round the server receives the (weighted) mean client model delta
``avg_delta = mean(client_weights - server_weights)`` and treats
``-avg_delta`` as a *pseudo-gradient* for a first-order optimizer (Reddi et al.
2021, "Adaptive Federated Optimization", ICLR; arXiv:2003.00295):

* ``"sgd"`` / ``ServerSGD(momentum=0.0)``: ``w += lr * avg_delta``. With
  ``lr=1.0`` and no momentum this is plain FedAvg (McMahan et al. 2017); with
  momentum it is FedAvgM (Hsu et al. 2019, "Measuring the effects of
  non-identical data distribution for federated visual classification").
* ``"adam"`` / ``ServerAdam``, ``"yogi"`` / ``ServerYogi``, ``"adagrad"`` /
  ``ServerAdagrad``: FedAdam, FedYogi, FedAdagrad of Reddi et al. Defaults follow
  the paper (``beta_1=0.9``, ``beta_2=0.99``, adaptivity ``tau=1e-3``).

Both engines compute these as ``tff.learning.optimizers`` does, so TFF's
conventions apply, which differ from Reddi et al.'s Algorithm 2 in two places:

* Adam and Yogi use Adam's bias correction, ``lr_t = lr * sqrt(1 - beta_2**t) /
  (1 - beta_1**t)``; the paper has none. With the default betas, ``lr_1 == lr``.
* Adagrad has no first moment (the paper's ``beta_1 = 0``) and divides by
  ``sqrt(v + epsilon)`` instead of ``sqrt(v) + tau``; ``epsilon=1e-6`` plays the
  role of ``tau=1e-3``.

Example:
  >>> resolve_server_optimizer("adam")
  ServerAdam(beta_1=0.9, beta_2=0.99, epsilon=0.001)
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from typing import Any, ClassVar, Union

from kerasfed.errors import (  # noqa: F401  (defined with the family)
    ServerOptimizerError,
    ServerOptimizerTypeError,
)


class ServerOptimizer(abc.ABC):
    """A server optimizer: a name and its hyper-parameters (each engine builds the rule)."""

    name: ClassVar[str]

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ServerOptimizerTypeError(
                    f"Expected `{field.name}` of {type(self).__name__} to be a float. "
                    f"Received: {field.name}={value!r} of type {type(value).__name__}."
                )
            # Store plain floats: TFF builds float32 state from them.
            object.__setattr__(self, field.name, float(value))
        self._validate()

    @abc.abstractmethod
    def _validate(self) -> None:
        """Raises ``ServerOptimizerError`` for out-of-range hyper-parameters."""

    def _require(self, field: str, ok: bool, expected: str) -> None:
        value = getattr(self, field)
        if not ok or not math.isfinite(value):
            raise ServerOptimizerError(
                f"Expected `{field}` of {type(self).__name__} to be {expected}. "
                f"Received: {field}={value!r}."
            )

    def _check_betas(self) -> None:
        for field in ("beta_1", "beta_2"):
            self._require(field, 0.0 <= getattr(self, field) < 1.0, "in [0, 1)")


@dataclasses.dataclass(frozen=True)
class ServerSGD(ServerOptimizer):
    """Server SGD: FedAvg (``momentum=0``, default) or FedAvgM (``momentum > 0``).

    Update: ``v = momentum * v - avg_delta; w = w - lr * v``.

    Attributes:
      momentum: Heavy-ball momentum in [0, 1). Default 0.0 (plain averaging).
        Hsu et al. 2019 use 0.9 with a server learning rate near 1.
    """

    name: ClassVar[str] = "sgd"
    momentum: float = 0.0

    def _validate(self) -> None:
        self._require("momentum", 0.0 <= self.momentum < 1.0, "in [0, 1)")


@dataclasses.dataclass(frozen=True)
class ServerAdam(ServerOptimizer):
    """FedAdam (Reddi et al. 2021).

    Update (``g = -avg_delta``, ``t`` = round): ``m = beta_1*m + (1-beta_1)*g``,
    ``v = beta_2*v + (1-beta_2)*g**2``,
    ``w = w - lr*sqrt(1-beta_2**t)/(1-beta_1**t) * m/(sqrt(v) + epsilon)``.

    Attributes:
      beta_1: First-moment decay in [0, 1). Default 0.9.
      beta_2: Second-moment decay in [0, 1). Default 0.99.
      epsilon: Adaptivity ``tau`` (> 0). Default 1e-3; Reddi et al. tune it in
        {1e-1, ..., 1e-7} (smaller = more adaptive).
    """

    name: ClassVar[str] = "adam"
    beta_1: float = 0.9
    beta_2: float = 0.99
    epsilon: float = 1e-3

    def _validate(self) -> None:
        self._check_betas()
        self._require("epsilon", self.epsilon > 0.0, "> 0")


@dataclasses.dataclass(frozen=True)
class ServerYogi(ServerOptimizer):
    """FedYogi (Reddi et al. 2021; Yogi: Zaheer et al. 2018).

    Like ``ServerAdam``, but the second moment moves additively:
    ``v = v - (1-beta_2) * sign(v - g**2) * g**2``.

    Attributes:
      beta_1: First-moment decay in [0, 1). Default 0.9.
      beta_2: Second-moment decay in [0, 1). Default 0.99.
      epsilon: Adaptivity ``tau`` (> 0). Default 1e-3.
      initial_accumulator_value: Initial ``v`` (>= 0). Default 1e-6 (= tau**2,
        as Reddi et al. require ``v_0 >= tau**2``).
    """

    name: ClassVar[str] = "yogi"
    beta_1: float = 0.9
    beta_2: float = 0.99
    epsilon: float = 1e-3
    initial_accumulator_value: float = 1e-6

    def _validate(self) -> None:
        self._check_betas()
        self._require("epsilon", self.epsilon > 0.0, "> 0")
        self._require("initial_accumulator_value", self.initial_accumulator_value >= 0.0, ">= 0")


@dataclasses.dataclass(frozen=True)
class ServerAdagrad(ServerOptimizer):
    """FedAdagrad (Reddi et al. 2021), as TFF's Adagrad computes it.

    Update: ``v = v + g**2``, ``w = w - lr * g / sqrt(v + epsilon)``.

    Attributes:
      initial_accumulator_value: Initial ``v`` (>= 0). Default 0.0.
      epsilon: Added under the square root (>= 0). Default 1e-6, the square of
        Reddi et al.'s ``tau=1e-3``. ``initial_accumulator_value`` and
        ``epsilon`` must not both be 0 (a coordinate whose update is always 0
        would divide 0 by 0).
    """

    name: ClassVar[str] = "adagrad"
    initial_accumulator_value: float = 0.0
    epsilon: float = 1e-6

    def _validate(self) -> None:
        self._require("initial_accumulator_value", self.initial_accumulator_value >= 0.0, ">= 0")
        self._require("epsilon", self.epsilon >= 0.0, ">= 0")
        if self.initial_accumulator_value == 0.0 and self.epsilon == 0.0:
            raise ServerOptimizerError(
                "ServerAdagrad needs `initial_accumulator_value` > 0 or `epsilon` > 0; "
                "both are 0, so a coordinate that never changes divides 0 by 0. "
                "Keep the default epsilon=1e-6."
            )


_REGISTRY: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (ServerSGD, ServerAdam, ServerYogi, ServerAdagrad)
}
SERVER_OPTIMIZER_NAMES: tuple[str, ...] = tuple(_REGISTRY)

ServerOptimizerLike = Union[str, ServerOptimizer]


def resolve_server_optimizer(spec: ServerOptimizerLike) -> ServerOptimizer:
    """Returns the ``ServerOptimizer`` a name (default hyper-parameters) or instance means.

    Raises:
      ServerOptimizerError: ``spec`` is an unknown name.
      ServerOptimizerTypeError: ``spec`` is neither a string nor a ``ServerOptimizer``.
    """
    if isinstance(spec, ServerOptimizer):
        return spec
    if isinstance(spec, str):
        cls = _REGISTRY.get(spec.lower())
        if cls is None:
            raise ServerOptimizerError(
                f"Unknown server optimizer: server_optimizer={spec!r}. Expected one of "
                f"{list(SERVER_OPTIMIZER_NAMES)}, or an instance such as "
                f"ServerAdam(epsilon=1e-3) to set hyper-parameters."
            )
        return cls()
    raise ServerOptimizerTypeError(
        f"Expected `server_optimizer` to be a name in {list(SERVER_OPTIMIZER_NAMES)} or a "
        f"ServerOptimizer (ServerSGD, ServerAdam, ServerYogi, ServerAdagrad). Received: "
        f"server_optimizer={spec!r} of type {type(spec).__name__}."
    )


def check_server_learning_rate(learning_rate: Any) -> float:
    """Returns ``learning_rate`` as a float, or raises if it is not a positive number.

    Raises:
      ServerOptimizerTypeError: Not a number.
      ServerOptimizerError: Not finite and > 0.
    """
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
        raise ServerOptimizerTypeError(
            f"Expected `server_learning_rate` to be a positive float. Received: "
            f"server_learning_rate={learning_rate!r} of type {type(learning_rate).__name__}."
        )
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ServerOptimizerError(
            f"Expected `server_learning_rate` to be a positive float. Received: "
            f"server_learning_rate={learning_rate!r}. FedAvg uses 1.0 with server SGD; "
            f"adaptive server optimizers typically 1e-3 to 1e-1."
        )
    return float(learning_rate)
