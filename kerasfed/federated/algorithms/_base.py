"""What a federated algorithm is: small pure functions the engine compiles.

An algorithm is a frozen dataclass of hyper-parameters whose methods say what
is particular to it, in the composition ``tff.learning`` uses (client work,
aggregation, server update) and in optax's style (pure functions of tensors,
state passed in and returned):

client work, per client, inside the engine's compiled round
  ``client_start``: where local training starts (the broadcast weights);
  ``correct_gradient`` / ``local_step``: one local step, given the batch's loss
  gradient (FedProx's proximal term, SCAFFOLD's control-variate correction);
  ``client_end``: the client's update, its new own state, and any other values
  to average over the round's clients (Mime-lite's full gradient, SCAFFOLD's
  control-variate change). Batching, padding, masking, the local optimizer and
  the two forms (all clients in lockstep, or one after another) stay the
  engine's business: these functions see one client's tensors, no client axis.
aggregation
  the ``aggregator`` chain combines the updates (clipping, DP, robust means);
  the other values are averaged with the same client weights.
server update, once per round, outside the compiled client work
  ``server_update``: the server optimizer applied to the aggregate (FedAvg's
  default: the mean delta's negation as pseudo-gradient); ``server_state_update``:
  the algorithm's own server state (Mime-lite's optimizer state, SCAFFOLD's
  control variate); ``broadcast``: what the clients receive besides the weights.

Every method has FedAvg's behaviour by default, so an algorithm overrides only
what differs. The native engine runs any algorithm; the TFF engine translates
the built-ins (``engines/tff/algorithms.py``) and refuses the others.
TensorFlow is imported by the methods' callers: this module (and ``import
kerasfed``) needs no TensorFlow.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

from kerasfed.errors import (  # noqa: F401  (defined with the family)
    AlgorithmError,
    AlgorithmTypeError,
)

Tensors = list  # one tensor per trainable weight, in the model's order


@dataclasses.dataclass(frozen=True)
class ClientContext:
    """What an algorithm's client functions see of one client (tensors, no client axis).

    Attributes:
      broadcast_weights: The model the client received this round (``w_t``).
      server: What the algorithm's ``broadcast`` sent this round (a dict of tensors).
      state: The client's own state as ``client_state`` laid it out (the values it
        returned last time it took part, or the initial ones); ``[]`` when the
        algorithm keeps none.
      learning_rate: The client optimizer's learning rate this round (a scalar).
      local_steps: The client's number of local steps this round (its own ``K``),
        a float scalar.
      examples: The examples the client trained on (summed over local epochs).
      full_gradient: The gradient of the client's mean loss at
        ``broadcast_weights`` over all its batches, for algorithms with
        ``needs_full_gradient``; else None.
    """

    broadcast_weights: Tensors
    server: dict
    state: Tensors
    learning_rate: Any
    local_steps: Any
    examples: Any
    full_gradient: Tensors | None = None


class ClientOutput(NamedTuple):
    """What a client sends back (``client_end``).

    Attributes:
      update: One tensor per trainable weight, combined by the aggregator chain
        (FedAvg: the model delta ``w - w_t``).
      state: The client's new own state (same layout as ``client_state``), kept
        for its next round.
      extras: Other values (dict of lists of tensors), averaged over the round's
        clients with the clients' weights; the server sees the means in
        ``ServerContext.means``.
    """

    update: Tensors
    state: Tensors = []
    extras: dict = {}


@dataclasses.dataclass(frozen=True)
class ServerContext:
    """What the server functions see, once per round.

    Attributes:
      weights: The global trainable weights before the round.
      optimizer: The server optimizer's update rule (``step(state, weights,
        gradient) -> (state, weights)``), at this round's learning rate.
      optimizer_state: Its state.
      state: The algorithm's own server state (``server_init``'s layout).
      update: The aggregator chain's combined client update.
      means: The clients' ``extras``, averaged.
      participants: Clients in the round (``|S|``).
      population: Clients in the federation (``N``).
      client_optimizer: The client optimizer's update rule at this round's rate
        (None for algorithms without one).
      round_num: The round (from 0).
    """

    weights: Tensors
    optimizer: Any
    optimizer_state: dict
    state: dict
    update: Tensors | None
    means: dict
    participants: int
    population: int
    client_optimizer: Any
    round_num: int


class Algorithm(abc.ABC):
    """A federated training algorithm (see the module docstring).

    Subclasses are frozen dataclasses whose fields are the algorithm's
    hyper-parameters, checked at construction. Override only what differs from
    FedAvg; every method works on lists of tensors with TensorFlow ops.
    """

    #: Whether clients train with the compiled optimizer. FedSGD's do not: they
    #: only compute gradients, which the server optimizer applies.
    uses_client_optimizer: ClassVar[bool] = True

    #: Whether clients take local steps. False: the client only computes its
    #: full gradient (``needs_full_gradient``), and ``client_end`` sees the
    #: broadcast weights.
    trains_locally: ClassVar[bool] = True

    #: Whether ``ClientContext.full_gradient`` is computed (a pass over the
    #: client's batches at the broadcast weights before local training).
    needs_full_gradient: ClassVar[bool] = False

    #: Whether a client whose update is not finite still counts in the round's
    #: loss, metrics and ``num_examples``. TFF's FedAvg client work drops it;
    #: its FedSGD and Mime-lite keep it, and kerasfed follows each.
    counts_non_finite_clients: ClassVar[bool] = False

    #: Whether clients are weighted by their numbers of examples. Subclasses with
    #: a choice make this a dataclass field.
    weighted: ClassVar[bool] = True

    #: Whether each client also trains a personal model of its own (Ditto): the
    #: engine keeps it per client (starting from the global initial weights),
    #: calls ``personal_step`` in every local step with the batch's loss gradient
    #: at it, and evaluates evaluation clients that are training clients with it.
    trains_personal_model: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """Short identifier, e.g. ``"fedavg"`` (default: the class name, lower case)."""
        return type(self).__name__.lower()

    # -- per-client state ---------------------------------------------------------
    def client_state(self, weights: Tensors) -> Tensors:
        """A client's state before it first takes part (default: none, ``[]``).

        Kept per client id in the run's client-state store, read and written
        only for the clients a round samples, and saved with checkpoints.
        """
        del weights
        return []

    # -- server state and broadcast -----------------------------------------------
    def server_init(self, weights: Tensors, client_optimizer: Any) -> dict:
        """The algorithm's own server state at the start (default: none)."""
        del weights, client_optimizer
        return {}

    def broadcast(self, state: dict) -> dict:
        """What clients receive besides the weights (default: the server state)."""
        return dict(state)

    # -- client work ----------------------------------------------------------------
    def client_start(self, ctx: ClientContext) -> Tensors:
        """The weights the client's local training starts from (default: the
        broadcast ones; ``PersonalLayers`` puts the client's own values in)."""
        return list(ctx.broadcast_weights)

    def correct_gradient(self, ctx: ClientContext, weights: Tensors, grads: Tensors) -> Tensors:
        """The gradient a local step applies, given the batch's loss gradient."""
        del ctx, weights
        return grads

    def local_step(self, ctx: ClientContext, weights: Tensors, grads: Tensors, optimizer: Any,
                   optimizer_state: dict) -> tuple[Tensors, dict]:
        """One local step: ``(new weights, new optimizer state)``.

        The default applies the client optimizer (``optimizer.step``) to
        ``correct_gradient``'s gradient.
        """
        optimizer_state, weights = optimizer.step(
            optimizer_state, weights, self.correct_gradient(ctx, weights, grads))
        return weights, optimizer_state

    def personal_step(self, ctx: ClientContext, personal: Tensors, grads: Tensors,
                      optimizer: Any, optimizer_state: dict) -> tuple[Tensors, dict]:
        """One step of the client's personal model (``trains_personal_model``):
        ``(new personal weights, new optimizer state)``, given the batch's loss
        gradient at ``personal``. The default is a plain optimizer step."""
        del ctx
        optimizer_state, personal = optimizer.step(optimizer_state, personal, grads)
        return personal, optimizer_state

    def client_end(self, ctx: ClientContext, weights: Tensors) -> ClientOutput:
        """What the client sends back after its local steps (default: its model delta)."""
        return ClientOutput(update=[w - w0 for w, w0 in zip(weights, ctx.broadcast_weights)],
                            state=list(ctx.state))

    # -- server update --------------------------------------------------------------
    def server_update(self, ctx: ServerContext) -> tuple[Tensors, dict]:
        """``(new weights, new server optimizer state)`` from the combined update.

        Called only when the combined update is finite (else the weights and the
        optimizer state stay, as in TFF). The default applies the server optimizer
        to the negated mean delta (the pseudo-gradient).
        """
        state, weights = ctx.optimizer.step(ctx.optimizer_state, ctx.weights,
                                            [-u for u in ctx.update])
        return weights, state

    def server_state_update(self, ctx: ServerContext) -> dict:
        """The algorithm's new server state (called every round; default: unchanged)."""
        return ctx.state


def check_bool(owner: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise AlgorithmTypeError(
            f"Expected `{field}` of {owner} to be True or False. Received: "
            f"{field}={value!r} of type {type(value).__name__}."
        )


def check_non_negative(owner: str, field: str, value: Any, hint: str = "") -> float:
    """``value`` as a float if it is a finite real >= 0, else an error naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AlgorithmTypeError(
            f"Expected `{field}` of {owner} to be a float >= 0. Received: {field}={value!r} "
            f"of type {type(value).__name__}."
        )
    if not (math.isfinite(value) and value >= 0):
        raise AlgorithmError(
            f"Expected `{field}` of {owner} to be a finite float >= 0. Received: "
            f"{field}={value!r}.{(' ' + hint) if hint else ''}"
        )
    return float(value)


def zeros_like(tensors: Sequence[Any]) -> Tensors:
    """Zeros shaped like ``tensors`` (imports TensorFlow on first use)."""
    import tensorflow as tf  # noqa: PLC0415

    return [tf.zeros_like(t) for t in tensors]
