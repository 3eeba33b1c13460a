"""What every federated engine is: the seam between the round loop and the runtime.

``fit_federated``'s round loop (sampling, shuffling, checkpoints, callbacks,
progress) is shared; an engine only trains the clients it is handed and
evaluates. It receives each client's examples and the order of its examples in
every local epoch (``ClientRound``), so both engines cut the same batches, and
it reports its server state in an engine-neutral form (``NeutralState``), so a
run checkpointed on one engine resumes on the other.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClientRound:
    """One client's part in a round.

    Attributes:
      cid: The client id.
      x, y: The client's examples (numpy arrays; structures of them for models
        with several inputs or outputs, ``y`` then a tuple in output order).
      order: ``(local_epochs, num_examples)`` example indices, one row per local
        epoch; each row is cut into consecutive batches of ``batch_size`` (the
        last one may be smaller), batches never spanning two epochs.
      w: One sample weight per example, or None.
      max_steps: The client takes only the first ``max_steps`` of those batches
        (``fit_federated(local_steps=...)``, or a straggler's partial work at a
        deadline), or None: all of them.
    """

    cid: str
    x: Any
    y: Any
    order: np.ndarray
    w: np.ndarray | None = None
    max_steps: int | None = None

    def step_sizes(self, batch_size: int) -> list[int]:
        """The number of examples in each local step this client takes."""
        sizes = []
        for row in self.order:
            n = len(row)
            sizes.extend(min(batch_size, n - start) for start in range(0, n, batch_size))
        return sizes if self.max_steps is None else sizes[: self.max_steps]


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """What one training round returns besides the new state.

    Attributes:
      metrics: Training loss and compiled metrics over every example the round's
        clients trained on (Keras names, loss first).
      num_examples: Examples processed, summed over clients and local epochs
        (clients whose update was not finite are left out).
      update_non_finite: True when the aggregated update had NaN/inf values; the
        previous global weights are then kept.
      aggregation: What the aggregation chain reports for the round
        (``clip_norm``, ``clipped_fraction``, ``noise_std``, ...).
      skipped: Why the global weights were kept without an update (too few
        clients for the combiner), or None.
      participants: The ids of the clients whose updates were aggregated (after
        those left out as non-finite), or None when the engine cannot tell
        (``fit_federated`` then reports the round's clients).
      client_metrics: Each aggregated client's own training loss and metrics
        this round (``{client_id: {name: value}}``, Keras names as in
        ``metrics``), or None when the engine cannot tell them apart (TFF).
    """

    metrics: dict[str, float]
    num_examples: int
    update_non_finite: bool
    aggregation: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: str | None = None
    participants: list[str] | None = None
    client_metrics: dict[str, dict[str, float]] | None = None


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What ``Engine.evaluate`` returns: the global model on held-out clients.

    Attributes:
      pooled: Loss and compiled metrics over all the clients' examples together
        (Keras names, loss first): ``History``'s ``fed_eval_<metric>``.
      per_client: ``{client_id: {name: value}}``, the same names, each client's
        examples alone (what Keras ``evaluate`` gives on that client); clients
        without examples are left out.
    """

    pooled: dict[str, float]
    per_client: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class NeutralState:
    """The server state as both engines understand it.

    Attributes:
      weights: The global model weights, in Keras ``get_weights()`` order.
      optimizer: The server optimizer's state slots, named as TFF names them
        (``step``, ``accumulator``, ``preconditioner``): a list of arrays per
        slot, one per trainable weight (``step``: one scalar).
      algorithm: The algorithm's own server state (Mime-lite: the global client
        optimizer's slots), same layout.
      aggregator: The aggregation chain's state (``"<step>/<name>"``: an adaptive
        clip norm, each client's top-k memory ``"<step>/residual/<cid>"``; on the
        TFF engine its aggregator state's arrays), one array per slot.
    """

    weights: list[np.ndarray]
    optimizer: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    algorithm: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    aggregator: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EngineSetup:
    """Everything an engine is built from (checked by ``fit_federated``).

    Attributes:
      model: The user's compiled Keras model (its weight order is the neutral one).
      recipe: Its ``ModelRecipe``.
      parts: Its loss and metrics (``compiled_parts.CompiledParts``).
      algorithm: An ``Algorithm`` settings value.
      client_optimizer: A ``ClientOptimizerSpec``, or None when unused (FedSGD).
      server_optimizer: A ``ServerOptimizer`` settings value.
      server_learning_rate: Its learning rate by round (a ``RoundSchedule`` of
        ``learning_rates.py``: ``setup.server_learning_rate(round_num)``).
      batch_size: The clients' batch size.
      element_spec: ``(x, y)`` ``tf.TensorSpec`` of a batch (structures of them;
        ``(x, y, sample_weight)`` for clients with sample weights).
      layout: The model's ``OutputLayout`` (its outputs' order), or None.
      federated_evaluation: Whether ``evaluate`` will be called.
      max_parallel_clients: Clients trained at once (native engine), or None.
      largest_client: The number of examples of the largest client of the run
        (the native engine pads every round to it, so it compiles once).
      local_epochs: The clients' local epochs.
      aggregator: The aggregation ``Chain`` (``aggregators.chain``).
      attack: An ``Attack``, or None; ``attackers`` its clients.
      seed: The run's seed (aggregators and attacks draw from it per round).
      expected_clients: Clients a round is meant to have (DP's denominator).
      replicas: The ``Replicas`` a round's clients are divided among (native
        engine; None: this process alone).
      num_clients: Clients in the federation (SCAFFOLD's ``N``), or None (then
        ``expected_clients``).
      client_states: The run's ``ClientStateStore`` (per-client state of the
        algorithm and the aggregators), or None (the engine keeps its own).
      personal: The model's personal weights (``personal_layers.PersonalWeights``:
        the engine keeps their non-trainable ones per client and counts none of
        them in the bytes), or None.
      client_learning_rate: The clients' learning rate by round (a
        ``RoundSchedule``), overriding ``client_optimizer.learning_rate`` (whose
        other settings stay), or None: the compiled optimizer's rate.
      local_steps: The cap on a client's local steps per round, or None.
    """

    model: Any
    recipe: Any
    parts: Any
    algorithm: Any
    client_optimizer: Any
    server_optimizer: Any
    server_learning_rate: Any  # learning_rates.RoundSchedule
    batch_size: int
    element_spec: tuple
    federated_evaluation: bool
    max_parallel_clients: int | None = None
    largest_client: int = 0
    local_epochs: int = 1
    aggregator: Any = None
    attack: Any = None
    attackers: frozenset = frozenset()
    seed: int = 0
    expected_clients: int = 1
    replicas: Any = None
    layout: Any = None
    client_learning_rate: Any = None  # learning_rates.RoundSchedule | None
    num_clients: int | None = None
    client_states: Any = None  # client_state.ClientStateStore | None
    personal: Any = None  # personal_layers.PersonalWeights | None
    local_steps: int | None = None


class Engine(abc.ABC):
    """Runs the rounds of one federated training."""

    #: ``"tff"`` or ``"native"``.
    name: str
    #: Bytes the server sends to / receives from each client per round.
    bytes_to_client: int
    bytes_from_client: int

    @abc.abstractmethod
    def initial_state(self, weights: Sequence[np.ndarray]) -> Any:
        """The engine's server state holding ``weights`` (Keras order)."""

    @abc.abstractmethod
    def train_round(self, state: Any, clients: Sequence[ClientRound], round_num: int,
                    *, dropped: Sequence[str] = ()) -> tuple[Any, RoundResult]:
        """Trains ``clients`` (round ``round_num``, from 0) from ``state``'s global
        model; returns the new state. ``dropped``: ids of the round's sampled
        clients that dropped out (a secure sum removes their masks)."""

    @abc.abstractmethod
    def evaluate(self, state: Any, clients: Sequence[ClientRound]) -> Evaluation:
        """Loss and compiled metrics of the global model over all ``clients``' examples
        (``pooled``) and over each client's (``per_client``)."""

    @abc.abstractmethod
    def get_weights(self, state: Any) -> list[np.ndarray]:
        """The global model weights in ``state`` (Keras order)."""

    @abc.abstractmethod
    def to_neutral(self, state: Any) -> NeutralState:
        """``state`` in the engine-neutral form (for checkpoints)."""

    @abc.abstractmethod
    def from_neutral(self, neutral: NeutralState) -> Any:
        """The engine's state for ``neutral``.

        Raises:
          ValueError: ``neutral`` does not fit this training (other model,
            optimizer or algorithm).
        """

    def describe(self) -> str:
        """One line saying how this engine runs the rounds (logged once)."""
        return self.name

    def close(self) -> None:
        """Releases what the engine holds (the TFF engine's worker process)."""


def check_neutral(expected: NeutralState, got: NeutralState) -> None:
    """Raises ValueError unless ``got`` has ``expected``'s slots, shapes and dtypes."""
    def arrays(state):
        out = {f"weights[{i}]": w for i, w in enumerate(state.weights)}
        for group in ("optimizer", "algorithm", "aggregator"):
            for slot, values in getattr(state, group).items():
                if "/residual/" in slot:  # per-client memories come and go
                    continue
                out.update({f"{group}.{slot}[{i}]": v for i, v in enumerate(values)})
        return out

    want, have = arrays(expected), arrays(got)
    if set(want) != set(have):
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        raise ValueError(f"the saved state lacks {missing[:4]} and has {extra[:4]} in addition")
    for key, w in want.items():
        h = np.asarray(have[key])
        if h.shape != np.shape(w) or h.dtype != np.asarray(w).dtype:
            raise ValueError(
                f"{key} was saved with shape {h.shape} and dtype {h.dtype}; this training "
                f"needs {np.shape(w)} {np.asarray(w).dtype}"
            )
