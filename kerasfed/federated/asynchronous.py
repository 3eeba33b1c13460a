"""Asynchronous rounds: FedBuff (Nguyen et al. 2022, "Federated Learning with
Buffered Asynchronous Aggregation", AISTATS).

``concurrency`` clients train at once on the simulated clock, each from the
global model current when it started. A finished client's update enters a
buffer, down-weighted by its staleness ``tau`` (server updates since it
started); every ``buffer_size`` updates the server applies their mean through
the server optimizer, and each finished client is replaced by a new one. One
``fit_federated`` round is one server update.

The simulation is event-driven and exact: a client's training depends only on
the model it started from, so clients that started from the same model are
trained together (one engine call) when that model is about to be replaced,
and their updates wait, with their finish times, until the clock reaches them.
New clients come from a stream of uniform samples of ``concurrency`` clients:
the ``b``-th sample is ``sample_clients(..., concurrency, round_num=b, seed)``,
so with equal client durations and ``buffer_size == concurrency`` every server
update sees exactly the clients synchronous (unweighted) FedAvg's round ``b``
samples, trained on the same batches. A client still in flight is skipped.
Everything in flight is saved with checkpoints, so a resumed run continues the
same way.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from kerasfed.errors import AlgorithmError, AlgorithmTypeError
from kerasfed.federated.algorithms._base import Algorithm
from kerasfed.federated.devices import _fails, per_client_value


@dataclasses.dataclass(frozen=True)
class FedBuff(Algorithm):
    """FedBuff: buffered asynchronous aggregation (``algorithm=kerasfed.FedBuff(...)``).

    Clients train as FedAvg's do (the compiled optimizer, ``local_epochs``); the
    server waits for no round.

    Attributes:
      buffer_size: Updates the server collects before each server update (``K``, >= 1).
      concurrency: Clients training at the same time (``C``, >= 1, at most the
        number of clients).
      staleness: How a stale update is down-weighted: ``"polynomial"`` (default:
        ``(1 + tau) ** -exponent``), ``"constant"`` (weight 1), or a function of
        ``tau`` (an int >= 0) returning a weight >= 0.
      exponent: The polynomial's exponent (default 0.5, as Nguyen et al.).

    Example:
      >>> FedBuff(buffer_size=10, concurrency=100).weight(3)
      0.5
    """

    buffer_size: int = 10
    concurrency: int = 100
    staleness: Any = "polynomial"
    exponent: float = 0.5

    #: Every update counts once (times its staleness weight), as in FedBuff.
    weighted: ClassVar[bool] = False
    #: ``fit_federated`` runs it with the asynchronous driver (this module).
    asynchronous: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for field in ("buffer_size", "concurrency"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise AlgorithmTypeError(
                    f"Expected `{field}` of FedBuff to be an int >= 1. Received: "
                    f"{field}={value!r} of type {type(value).__name__}.")
            if value < 1:
                raise AlgorithmError(
                    f"Expected `{field}` of FedBuff to be an int >= 1. Received: "
                    f"{field}={value}.")
        if not (callable(self.staleness) or self.staleness in ("polynomial", "constant")):
            raise AlgorithmError(
                f"Expected `staleness` of FedBuff to be 'polynomial', 'constant' or a "
                f"function of the staleness tau returning a weight. Received: "
                f"staleness={self.staleness!r}.")
        if isinstance(self.exponent, bool) or not isinstance(self.exponent, numbers.Real) or not (
                math.isfinite(self.exponent) and self.exponent >= 0):
            raise AlgorithmError(
                f"Expected `exponent` of FedBuff to be a finite number >= 0. Received: "
                f"exponent={self.exponent!r}.")

    def weight(self, tau: int) -> float:
        """The weight of an update ``tau`` server updates stale."""
        if self.staleness == "constant":
            return 1.0
        if self.staleness == "polynomial":
            return float((1.0 + tau) ** -self.exponent)
        value = self.staleness(int(tau))
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                math.isfinite(value) and value >= 0):
            raise AlgorithmError(
                f"FedBuff's `staleness` function returned {value!r} for tau={tau}; expected "
                f"a finite weight >= 0.")
        return float(value)


@dataclasses.dataclass
class InFlight:
    """A client training asynchronously.

    Attributes:
      cid: The client id.
      block: Which sample of the client stream it came from (its shuffle round).
      version: The server update it started from (its model's version).
      finish: Its simulated finish time.
      seq: Start order (ties of ``finish`` are taken in it).
      failed: Whether it drops out (``Devices.dropout``): it finishes without update.
      update: Its update (flat), once trained; None before.
      examples: Examples it trained on (once trained).
      metrics: Its own training loss and metrics (once trained).
    """

    cid: str
    block: int
    version: int
    finish: float
    seq: int
    failed: bool = False
    update: np.ndarray | None = None
    examples: float = 0.0
    metrics: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class AsyncState:
    """The asynchronous run between server updates (saved with checkpoints).

    Attributes:
      clock: Simulated seconds since the start.
      in_flight: The clients training now.
      stream: The next position in the client stream (``block * concurrency + i``).
      seq: The next start's order number.
    """

    clock: float = 0.0
    in_flight: list[InFlight] = dataclasses.field(default_factory=list)
    stream: int = 0
    seq: int = 0

    def to_saved(self) -> tuple[dict, dict[str, np.ndarray]]:
        """A JSON part and named arrays (the trained updates)."""
        meta = {"clock": self.clock, "stream": self.stream, "seq": self.seq, "in_flight": []}
        arrays = {}
        for i, f in enumerate(self.in_flight):
            entry = {k: v for k, v in dataclasses.asdict(f).items() if k != "update"}
            entry["trained"] = f.update is not None
            meta["in_flight"].append(entry)
            if f.update is not None:
                arrays[f"{i:05d}"] = f.update
        return meta, arrays

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "AsyncState":
        flights = []
        for i, entry in enumerate(meta["in_flight"]):
            entry = dict(entry)
            trained = entry.pop("trained")
            flights.append(InFlight(**entry, update=arrays[f"{i:05d}"] if trained else None))
        return cls(clock=float(meta["clock"]), in_flight=flights, stream=int(meta["stream"]),
                   seq=int(meta["seq"]))


class BufferedRounds:
    """Runs FedBuff's server updates (see the module docstring).

    Args:
      plan: The checked ``fit_federated`` plan (its algorithm a ``FedBuff``).
      engine: The native engine (``client_updates`` and ``apply_update``).
      make_client: ``(cid, block) -> ClientRound``: a client's work when it starts.
      state: The saved ``AsyncState`` of a resumed run, or None.
    """

    def __init__(self, plan: Any, engine: Any, make_client: Callable[[str, int], Any],
                 state: AsyncState | None = None):
        self._plan = plan
        self._algorithm: FedBuff = plan.algorithm
        self._engine = engine
        self._make_client = make_client
        self.state = state if state is not None else AsyncState()
        self._devices = plan.devices
        self._block: tuple[int, list[str]] = (-1, [])  # the stream's current sample

    # -- the simulated clients --------------------------------------------------
    def _duration(self, client: Any) -> float:
        """A client's simulated time: its examples at its speed (1 example per
        second without ``Devices(speed=...)``), plus its payloads at its bandwidth."""
        seed = self._plan.seed
        devices = self._devices
        speed = 1.0
        if devices is not None and devices.speed is not None:
            speed = per_client_value(devices.speed, "speed", client.cid, seed=seed)
        seconds = sum(client.step_sizes(self._plan.batch_size)) / speed
        if devices is not None and devices.bandwidth is not None:
            payload = self._engine.bytes_to_client + self._engine.bytes_from_client
            seconds += payload / per_client_value(devices.bandwidth, "bandwidth", client.cid,
                                                  seed=seed)
        return seconds

    def _start(self, count: int, version: int) -> None:
        """Starts ``count`` clients from the stream at the current clock."""
        from kerasfed.federated.clients import sample_clients  # noqa: PLC0415

        state, c = self.state, self._algorithm.concurrency
        busy = {f.cid for f in state.in_flight}
        while count > 0:
            block, i = divmod(state.stream, c)
            if self._block[0] != block:  # one sample per block, not per start
                self._block = (block, sample_clients(self._plan.clients.client_ids, c, block,
                                                     self._plan.seed))
            cid = self._block[1][i]
            state.stream += 1
            if cid in busy:  # a client trains one task at a time
                continue
            client = self._make_client(cid, block)
            failed = bool(self._devices is not None and self._devices.dropout
                          and _fails(self._devices.dropout, self._plan.seed, block, cid))
            state.in_flight.append(InFlight(
                cid=cid, block=block, version=version, seq=state.seq, failed=failed,
                finish=state.clock + self._duration(client)))
            state.seq += 1
            busy.add(cid)
            count -= 1

    def _train_waiting(self, engine_state: Any, version: int) -> None:
        """Trains every in-flight client that started from the current model."""
        waiting = [f for f in self.state.in_flight
                   if f.update is None and not f.failed and f.version == version]
        if not waiting:
            return
        clients = [self._make_client(f.cid, f.block) for f in waiting]
        result = self._engine.client_updates(engine_state, clients, version)
        for i, f in enumerate(waiting):
            # A non-finite update is lost like a dropout (kept out of the buffer).
            f.failed = not bool(result.finite[i])
            f.update = result.rows[i]
            f.examples = float(result.examples[i])
            f.metrics = result.metrics.get(f.cid, {})

    # -- one server update ---------------------------------------------------------
    def round(self, engine_state: Any, round_num: int) -> tuple[Any, dict, dict]:
        """Runs the clock until ``buffer_size`` updates arrived and applies them.

        Returns:
          The new engine state, the round's logs and its per-client records
          (participants and their training metrics).
        """
        state, algorithm = self.state, self._algorithm
        if not state.in_flight:
            self._start(algorithm.concurrency, round_num)
        started_at = state.clock
        buffer: list[InFlight] = []
        dropped = 0
        while len(buffer) < algorithm.buffer_size:
            now = min(f.finish for f in state.in_flight)
            done = sorted((f for f in state.in_flight if f.finish == now), key=lambda f: f.seq)
            state.clock = now
            if any(f.update is None and not f.failed for f in done):
                # Everyone waiting on this model trains at once (one engine call).
                self._train_waiting(engine_state, round_num)
            taken = 0
            for f in done:
                if len(buffer) == algorithm.buffer_size:
                    break
                state.in_flight.remove(f)
                taken += 1
                if f.failed:
                    dropped += 1
                else:
                    buffer.append(f)
            if len(buffer) < algorithm.buffer_size:
                self._start(taken, round_num)  # from the current model
            else:
                replacements = taken
        # Clients that started from this model train now, before it is replaced.
        self._train_waiting(engine_state, round_num)
        taus = [round_num - f.version for f in buffer]
        weights = np.array([algorithm.weight(t) for t in taus])
        rows = np.stack([f.update for f in buffer])
        mean = (weights[:, None] * rows).sum(axis=0) / len(buffer)
        engine_state = self._engine.apply_update(engine_state, mean.astype(rows.dtype),
                                                 len(buffer), round_num)
        self._start(replacements, round_num + 1)  # from the new model
        logs = self._logs(buffer, taus, dropped, started_at)
        per_client = {"participants": [f.cid for f in buffer],
                      "client_train_metrics": {f.cid: dict(f.metrics) for f in buffer}}
        return engine_state, logs, per_client

    def _logs(self, buffer: list[InFlight], taus: list[int], dropped: int,
              started_at: float) -> dict[str, float]:
        examples = sum(f.examples for f in buffer)
        names = list(buffer[0].metrics)
        logs: dict[str, float] = {
            # Example-weighted means of the buffered clients' own values: the pooled
            # value for the loss and every metric that is a mean over examples.
            name: float(sum(f.metrics.get(name, math.nan) * f.examples for f in buffer)
                        / examples) if examples else math.nan
            for name in names}
        logs.update(num_examples=examples, staleness_mean=float(np.mean(taus)),
                    staleness_max=float(max(taus)), dropped=float(dropped),
                    simulated_seconds=self.state.clock - started_at,
                    simulated_seconds_total=self.state.clock)
        return logs


def check_asynchronous(algorithm: FedBuff, *, replicas: Any, chain: Any, devices: Any,
                       clients_per_round: int | None, sampling: str, num_clients: int,
                       attack: Any, personal: Any) -> None:
    """Raises ``FederatedArgumentError`` for settings FedBuff's rounds do not take.

    Called by ``fit_federated``'s argument checks, before anything trains.
    """
    from kerasfed.errors import FederatedArgumentError  # noqa: PLC0415

    def refuse(what: str, fix: str) -> None:
        raise FederatedArgumentError(f"fit_federated: {algorithm!r} {what}. {fix}")

    if algorithm.concurrency > num_clients:
        refuse(f"trains {algorithm.concurrency} clients at once, and there are "
               f"{num_clients}", "Lower `concurrency` to at most the number of clients.")
    if clients_per_round is not None and clients_per_round != algorithm.concurrency:
        refuse(f"keeps `concurrency` clients training, and clients_per_round="
               f"{clients_per_round} says otherwise",
               "Drop clients_per_round, or make it equal to `concurrency`.")
    if sampling != "uniform":
        refuse("draws its clients uniformly", "Drop client_sampling='poisson'.")
    if replicas is not None and replicas.workers > 1:
        refuse(f"runs its clock in one process; this run has {replicas.workers} workers",
               "Run it in one process (local devices are fine).")
    if not chain.is_plain_mean:
        refuse(f"averages its buffer itself, and aggregator={chain.describe()!r} was given",
               "Use aggregator='mean' with FedBuff.")
    if attack is not None or personal is not None:
        refuse("runs without attacks and personal layers",
               "Drop `attack` / `personal_layers`, or use a synchronous algorithm.")
    if devices is not None and (devices.deadline is not None or devices.over_selection > 0):
        refuse("waits for no round, so a deadline or over-selection has no meaning",
               "Drop Devices(deadline=..., over_selection=...) (dropout, speed and "
               "bandwidth apply).")
