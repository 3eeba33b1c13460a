"""What every federated algorithm is: a small frozen value with a pure ``build``.

An algorithm holds only its own hyper-parameters (``FedProx(mu=0.01)``); its
``build`` method receives everything else -- the model function, the client and
server optimizers (``tff.learning.optimizers.Optimizer``) and optionally a TFF
aggregator -- and returns a ``tff.learning.templates.LearningProcess``. Building
touches no data and runs nothing: TFF only traces the computations.
"""

from __future__ import annotations

import abc
import enum
from typing import Any, Callable, ClassVar, Optional

ModelFn = Callable[[], Any]  # returns a fresh tff.learning.models.VariableModel


class AlgorithmError(ValueError):
    """Unknown algorithm name, bad hyper-parameter, or an aggregator it cannot use."""


class AlgorithmTypeError(TypeError):
    """An algorithm, hyper-parameter or build argument has the wrong type."""


class Algorithm(abc.ABC):
    """A federated training algorithm.

    Subclasses are frozen dataclasses whose fields are the algorithm's
    hyper-parameters, checked at construction.
    """

    #: Whether ``build`` trains with ``client_optimizer``. FedSGD does not: its
    #: clients only compute gradients, which the server optimizer applies.
    uses_client_optimizer: ClassVar[bool] = True

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Short identifier, e.g. ``"fedavg"`` (registry names build these values)."""

    #: Whether clients are weighted by their numbers of examples. Subclasses with
    #: a choice make this a dataclass field.
    weighted: ClassVar[bool] = True

    def build(
        self,
        *,
        model_fn: ModelFn,
        client_optimizer: Any,
        server_optimizer: Any,
        model_aggregator: Optional[Any] = None,
    ) -> Any:
        """Returns the ``tff.learning.templates.LearningProcess`` of this algorithm.

        Args:
          model_fn: Zero-argument function building a *fresh*
            ``tff.learning.models.VariableModel`` on each call (TFF calls it while
            tracing, in its own graphs).
          client_optimizer: ``tff.learning.optimizers.Optimizer`` for local training
            (ignored when ``uses_client_optimizer`` is False).
          server_optimizer: ``tff.learning.optimizers.Optimizer`` applying the
            averaged client update (its negation is the pseudo-gradient).
          model_aggregator: Optional ``tff.aggregators`` factory for the client
            updates. ``None`` (default): TFF's (weighted) mean.

        Raises:
          AlgorithmTypeError: An argument has the wrong type.
          AlgorithmError: The aggregator does not fit the algorithm's weighting.
        """
        tff = require_tff()
        optimizers = {"client_optimizer": client_optimizer} if self.uses_client_optimizer else {}
        check_build_args(tff, self.name, model_fn, {**optimizers, "server_optimizer": server_optimizer})
        weighting = weighting_for(
            tff, self.name, model_aggregator, weighted=self.weighted, unweighted_variant=self.unweighted_variant
        )
        return self.build_process(
            tff, weighting, model_fn=model_fn, client_optimizer=client_optimizer,
            server_optimizer=server_optimizer, model_aggregator=model_aggregator,
        )

    @property
    @abc.abstractmethod
    def unweighted_variant(self) -> str:
        """What to use instead with an unweighted aggregator (quoted in the error)."""

    @abc.abstractmethod
    def build_process(
        self,
        tff: Any,
        weighting: "Weighting",
        *,
        model_fn: ModelFn,
        client_optimizer: Any,
        server_optimizer: Any,
        model_aggregator: Optional[Any],
    ) -> Any:
        """``build`` after its checks: calls the TFF builder that fits ``weighting``."""


class Weighting(enum.Enum):
    """How a TFF builder must be called for a given aggregator."""

    NUM_EXAMPLES = "num_examples"  # weighted builder, clients weighted by example count
    UNIFORM = "uniform"  # weighted builder with equal client weights
    UNWEIGHTED = "unweighted"  # unweighted builder (e.g. differential privacy)


def check_build_args(
    tff: Any, algorithm: str, model_fn: Any, optimizers: dict[str, Any]
) -> None:
    """Raises ``AlgorithmTypeError`` unless ``model_fn`` builds models and optimizers are TFF's."""
    from kerasfed._compat import keras  # noqa: PLC0415  (imports TensorFlow)

    # A Keras model or a VariableModel instance is callable too, but TFF must build
    # its own copies inside the graphs it traces.
    built = (keras.Model, tff.learning.models.VariableModel)
    if not callable(model_fn) or isinstance(model_fn, built):
        raise AlgorithmTypeError(
            f"{algorithm}: expected `model_fn` to be a zero-argument function returning a "
            f"fresh tff.learning.models.VariableModel. Received: {model_fn!r} of type "
            f"{type(model_fn).__name__}. Wrap the model construction in a function."
        )
    for arg, optimizer in optimizers.items():
        if not isinstance(optimizer, tff.learning.optimizers.Optimizer):
            raise AlgorithmTypeError(
                f"{algorithm}: expected `{arg}` to be a tff.learning.optimizers.Optimizer "
                f"(TFF 0.87 takes no Keras optimizers). Received: {optimizer!r} of type "
                f"{type(optimizer).__name__}. Use client_optimizer_from_keras(...) or "
                f"get_server_optimizer(...)."
            )


def weighting_for(
    tff: Any, algorithm: str, model_aggregator: Any, *, weighted: bool, unweighted_variant: str
) -> Weighting:
    """Chooses the TFF builder variant that fits ``model_aggregator``.

    A weighted algorithm needs a weighted aggregator (or ``None``). An unweighted
    one takes either kind: an unweighted aggregator (such as TFF's differential
    privacy factories) goes to TFF's unweighted builder, a weighted one to the
    weighted builder with uniform client weights.

    Raises:
      AlgorithmError: An unweighted aggregator for a weighted algorithm.
      AlgorithmTypeError: ``model_aggregator`` is no TFF aggregation factory.
    """
    aggregators = tff.aggregators
    if model_aggregator is None:
        return Weighting.NUM_EXAMPLES if weighted else Weighting.UNWEIGHTED
    if isinstance(model_aggregator, aggregators.WeightedAggregationFactory):
        return Weighting.NUM_EXAMPLES if weighted else Weighting.UNIFORM
    if isinstance(model_aggregator, aggregators.UnweightedAggregationFactory):
        if weighted:
            raise AlgorithmError(
                f"{algorithm}: the model aggregator {type(model_aggregator).__name__} is "
                f"unweighted (as differential-privacy aggregators are), but {algorithm} "
                f"weights clients by their number of examples. Use the unweighted "
                f"variant: {unweighted_variant}."
            )
        return Weighting.UNWEIGHTED
    raise AlgorithmTypeError(
        f"{algorithm}: expected `model_aggregator` to be None or a "
        f"tff.aggregators.WeightedAggregationFactory / UnweightedAggregationFactory. "
        f"Received: {model_aggregator!r} of type {type(model_aggregator).__name__}."
    )


def build_for_weighting(
    tff: Any,
    weighting: Weighting,
    *,
    weighted_builder: Callable[..., Any],
    unweighted_builder: Callable[..., Any],
    model_fn: ModelFn,
    model_aggregator: Optional[Any],
    **optimizers: Any,
) -> Any:
    """Calls TFF's weighted builder (with the client weighting) or its unweighted one."""
    if weighting is Weighting.UNWEIGHTED:
        return unweighted_builder(model_fn, model_aggregator=model_aggregator, **optimizers)
    client_weighting = (
        tff.learning.ClientWeighting.NUM_EXAMPLES
        if weighting is Weighting.NUM_EXAMPLES
        else tff.learning.ClientWeighting.UNIFORM
    )
    return weighted_builder(model_fn, client_weighting=client_weighting, model_aggregator=model_aggregator, **optimizers)


def check_bool(owner: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise AlgorithmTypeError(
            f"Expected `{field}` of {owner} to be True or False. Received: "
            f"{field}={value!r} of type {type(value).__name__}."
        )


def require_tff() -> Any:
    from kerasfed._compat import require_tff as _require  # noqa: PLC0415  (heavy: load on use)

    return _require()
