"""The native engine: federated rounds in pure TensorFlow, inside the calling process.

No child process, no socket, nothing to clean up; TF 2.14 (Keras 2) and the
newest TF (Keras 3) alike. A round's clients are trained in chunks of at most
``max_parallel_clients`` (``chunks.py``), each chunk one compiled computation of
the algorithm's client pieces (``client_work.py``, in the form ``form.py``
chose), with each client's own state read from and written back to the run's
client-state store. The clients' results are summed or gathered
(``combine.py``), combined by the aggregator chain (``aggregation.py``), and the
algorithm's server pieces update the global state. The engine knows no
algorithm: every one, built-in or a user's, is the same pieces
(``algorithms/_base.py``). Under a ``tf.distribute`` strategy
(``federated/replicas.py``) each replica trains its share of the round on its
device and the replicas sum their weighted updates (or gather them for other
combiners); every process then runs the same server update. Beyond TFF,
BatchNormalization moving statistics are averaged over the clients like the
weights instead of staying frozen, and Keras 3 subclassed models train.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed.errors import AlgorithmError
from kerasfed.federated.aggregators import resolve_chain
from kerasfed.federated.algorithms import ServerContext
from kerasfed.federated.client_state import ClientStateStore
from kerasfed.federated.clients.structure import num_rows, to_tensors
from kerasfed.federated.engines.base import (
    ClientRound,
    Engine,
    EngineSetup,
    Evaluation,
    NeutralState,
    RoundResult,
    check_neutral,
)
from kerasfed.federated.engines.native import combine
from kerasfed.federated.engines.native.aggregation import RoundAggregation
from kerasfed.federated.engines.native.algorithm_probe import probe_algorithm
from kerasfed.federated.engines.native import forward as fwd
from kerasfed.federated.engines.native.chunks import (
    LOCKSTEP_CHUNK_BYTES,
    SEQUENTIAL_CHUNK_BYTES,
    chunk_size,
    concat,
    default_parallel_clients,
    fill_rows,
)
from kerasfed.federated.engines.native.client_train_metrics import client_values, per_client_names
from kerasfed.federated.engines.native.client_work import ClientWork
from kerasfed.federated.engines.native.evaluation import FederatedEvaluation
# Bound here under their old names: tests replace them on this module.
from kerasfed.federated.engines.native.form import FALLBACK as _FALLBACK
from kerasfed.federated.engines.native.form import FORM_ERRORS
from kerasfed.federated.engines.native.form import choose_form as _choose_form
from kerasfed.federated.engines.native.form import clients_in_flight as _clients_in_flight
from kerasfed.federated.engines.native.form import side_by_side  # noqa: F401
from kerasfed.federated.engines.native.optimizers import client_rule, server_rule
from kerasfed.federated.engines.native.packing import bucket, pack_chunk
from kerasfed.federated.engines.native.payload import payload_bytes
from kerasfed.federated.replicas import Replicas

LOG = logging.getLogger("kerasfed")

# The algorithm's per-client state table in the run's client-state store.
_CLIENT_TABLE = "algorithm"
# Personal layers' non-trainable weights (moving statistics), per client.
_OWN_STATE_TABLE = "personal_state"
# Personal models (Ditto's v_k), per client.
_PERSONAL_MODEL_TABLE = "personal_model"


def _rate(value: Any, round_num: int) -> float:
    """A learning rate at ``round_num``: a ``RoundSchedule`` (or any function of
    the round) is evaluated, a number is itself."""
    return float(value(round_num)) if callable(value) else float(value)


class NativeEngine(Engine):
    """Runs ``fit_federated``'s rounds in this process (see the module docstring)."""

    name = "native"

    def __init__(self, setup: EngineSetup, *, form: str | None = None):
        model = setup.model
        self._setup = setup
        self._model = model
        self._algorithm = setup.algorithm
        self._batch_size = setup.batch_size
        self._chain = setup.aggregator if setup.aggregator is not None else resolve_chain("mean")
        self._attack = setup.attack if setup.attack is not None and setup.attack.on_updates else None
        self._aggregation = RoundAggregation(self._chain, self._attack, setup)
        self._client_rule = client_rule(setup.client_optimizer) if setup.client_optimizer else None
        self._loss = setup.parts.loss_per_example()
        self._replicas = setup.replicas if setup.replicas is not None else Replicas()
        # One set of metric objects per local replica (replica 0's are the round's
        # totals): replicas train at the same time and sum them afterwards.
        self._metrics = [make() for make in setup.parts.metrics]
        self._replica_metrics = [self._metrics] + [
            [make() for make in setup.parts.metrics] for _ in self._replicas.devices[1:]]
        self._rounds_run = 0
        self._traced_slots: set[int] = set()  # chunk sizes the client work was traced for
        # Each client's own training metrics this round, filled chunk by chunk.
        self._client_metric_names = per_client_names(self._metrics)
        self._round_client_metrics: dict[str, dict[str, float]] = {}

        self._trainable = fwd.variables(model.trainable_variables)
        self._non_trainable = fwd.variables(model.non_trainable_variables)
        position = {id(v): i for i, v in enumerate(model.weights)}
        # Weights that are no variables (a Keras 2 lookup layer's vocabulary) are
        # never trained: get_weights hands back the model's own.
        covered = {position.get(id(v)) for v in [*self._trainable, *self._non_trainable]}
        self._fixed = ({i: w for i, w in enumerate(model.get_weights()) if i not in covered}
                       if len(covered - {None}) < len(model.weights) else {})
        self._trainable_pos = [position[id(v)] for v in self._trainable]
        self._non_trainable_pos = [position.get(id(v)) for v in self._non_trainable]
        self._layout = setup.layout
        flatten = setup.layout.flatten if setup.layout is not None else (lambda p: p)
        # The algorithm's pieces tried once on the weights: a mistake fails here.
        self._probe = probe_algorithm(
            self._algorithm, [tf.convert_to_tensor(v) for v in self._trainable], self._client_rule)
        self._client_table = self._open_client_table(setup)
        self._personal_state = tuple(setup.personal.non_trainable) if setup.personal else ()
        self._own_table = self._open_own_state_table(setup)
        self._personal_model_table = self._open_personal_model_table(setup)
        strings = any(spec.dtype == tf.string for spec in tf.nest.flatten(setup.element_spec))

        if form is None and strings:  # tf.vectorized_map has no string ops nor lookup tables
            self.form, self._why = "sequential", "string data is processed one client at a time"
        else:
            self.form, self._why = _choose_form(model, form)
        self._works = self._build_works(self.form)
        self._max_parallel = setup.max_parallel_clients
        self.bytes_to_client, self.bytes_from_client = self._payload_bytes()
        self._evaluation = FederatedEvaluation(
            model, self._loss, flatten, [make() for make in setup.parts.metrics],
            setup.batch_size, self._replicas,
            client_metrics=[make() for make in setup.parts.metrics])

    def _open_client_table(self, setup: EngineSetup):
        """The algorithm's per-client state table, or None for an algorithm without."""
        template = [t.numpy() for t in self._probe.client_state]
        if not template:
            return None
        if self._replicas.workers > 1:
            raise AlgorithmError(
                f"algorithm={self._algorithm!r} keeps a state per client, which kerasfed keeps "
                f"in one process; this run has {self._replicas.workers} workers. Run it in "
                f"one process (local devices are fine), or pick an algorithm without client "
                f"state.")
        store = setup.client_states
        if store is None:  # the engine used alone (tests, benchmarks): a store of its own
            store = self._own_store = ClientStateStore()
        return store.table(_CLIENT_TABLE, template)

    def _open_own_state_table(self, setup: EngineSetup):
        """The per-client table of personal non-trainable weights, or None."""
        if not self._personal_state:
            return None
        if self._replicas.workers > 1:
            raise AlgorithmError(
                f"personal_layers keep weights per client, which kerasfed keeps in one "
                f"process; this run has {self._replicas.workers} workers. Run it in one "
                f"process (local devices are fine).")
        store = setup.client_states
        if store is None:
            store = getattr(self, "_own_store", None) or ClientStateStore()
            self._own_store = store
        # A client seen for the first time starts from the global initial values.
        return store.table(_OWN_STATE_TABLE,
                           [self._non_trainable[i].numpy() for i in self._personal_state])

    def _open_personal_model_table(self, setup: EngineSetup):
        """The per-client personal models (``Algorithm.trains_personal_model``), or None."""
        if not self._algorithm.trains_personal_model:
            return None
        store = setup.client_states
        if store is None:
            store = getattr(self, "_own_store", None) or ClientStateStore()
            self._own_store = store
        # A client seen for the first time starts from the global initial weights.
        return store.table(_PERSONAL_MODEL_TABLE, [v.numpy() for v in self._trainable])

    def personal_models(self, cids: Sequence[str]) -> dict[str, list[np.ndarray]] | None:
        """Each of ``cids``' personal model (trainable weights) where it has one
        (it trained before), or None for algorithms without personal models."""
        if self._personal_model_table is None:
            return None
        known = [c for c in cids if c in self._personal_model_table]
        rows = self._personal_model_table.read(known) if known else []
        return {c: [r[i] for r in rows] for i, c in enumerate(known)}

    # -- form ---------------------------------------------------------------------
    def _build_works(self, form: str) -> list[ClientWork]:
        """One compiled client computation per local replica (each its own metrics)."""
        lockstep = form.startswith("lockstep")
        flatten = self._layout.flatten if self._layout is not None else None
        if lockstep or fwd.StatelessForward.supported(self._model) is None:
            forward = fwd.StatelessForward(self._model, self._loss, flatten)
        else:
            forward = fwd.VariableForward(self._model, self._loss, flatten)
        stateless = isinstance(forward, fwd.StatelessForward)
        return [
            ClientWork(
                forward, self._client_rule, algorithm=self._algorithm, metrics=metrics,
                lockstep=lockstep, jit_compile=form.endswith("+xla"),
                in_flight=_clients_in_flight() if stateless and not lockstep else 1,
                personal_state=self._personal_state,
            )
            for metrics in self._replica_metrics
        ]

    def describe(self) -> str:
        together = self._works[0].in_flight
        side_by_side = f", {together} clients at a time" if together > 1 else ""
        spread = f", {self._replicas.describe()}" if self._replicas.distributed else ""
        return f"native engine, {self.form}{side_by_side}{spread} ({self._why})"

    # -- state --------------------------------------------------------------------
    def initial_state(self, weights: Sequence[np.ndarray]) -> dict:
        trainable = [tf.constant(weights[i]) for i in self._trainable_pos]
        return {
            "trainable": trainable,
            "non_trainable": [
                tf.constant(weights[i]) if i is not None else tf.identity(v)
                for i, v in zip(self._non_trainable_pos, self._non_trainable)
            ],
            "optimizer": self._server_rule_at(0).init(trainable),
            "algorithm": self._algorithm.server_init(trainable, self._client_rule),
            "aggregator": self._chain.initial_state(),
        }

    def get_weights(self, state: dict) -> list[np.ndarray]:
        weights: list[Any] = [self._fixed.get(i) for i in range(len(self._model.weights))]
        for i, t in zip(self._trainable_pos, state["trainable"]):
            weights[i] = t.numpy()
        for i, t in zip(self._non_trainable_pos, state["non_trainable"]):
            if i is not None:
                weights[i] = t.numpy()
        return weights

    def to_neutral(self, state: dict) -> NeutralState:
        return NeutralState(
            weights=self.get_weights(state),
            optimizer=_slots_to_numpy(state["optimizer"]),
            algorithm=_slots_to_numpy(state["algorithm"]),
            aggregator={k: [np.asarray(v)] for k, v in state["aggregator"].items()},
        )

    def from_neutral(self, neutral: NeutralState) -> dict:
        initial = self.initial_state(self._model.get_weights())
        check_neutral(self.to_neutral(initial), neutral)
        state = self.initial_state(neutral.weights)
        state["optimizer"] = _slots_from_numpy(neutral.optimizer, initial["optimizer"])
        state["algorithm"] = _slots_from_numpy(neutral.algorithm, initial["algorithm"])
        state["aggregator"] = {k: np.asarray(v[0]) for k, v in neutral.aggregator.items()}
        return state

    # -- learning rates -------------------------------------------------------------
    def _server_rule_at(self, round_num: int):
        return server_rule(self._setup.server_optimizer,
                           _rate(self._setup.server_learning_rate, round_num))

    def _client_rate(self, round_num: int) -> float:
        if self._client_rule is None:
            return 0.0
        if self._setup.client_learning_rate is None:
            return float(self._client_rule.learning_rate)
        return _rate(self._setup.client_learning_rate, round_num)

    def _client_rule_at(self, round_num: int):
        if self._client_rule is None:
            return None
        return dataclasses.replace(self._client_rule, learning_rate=self._client_rate(round_num))

    # -- rounds -------------------------------------------------------------------
    def max_parallel_clients(self, clients: Sequence[ClientRound]) -> int:
        """The chunk size: the user's, else what fits in a share of free memory."""
        if self._max_parallel is not None:
            return self._max_parallel
        size = default_parallel_clients(self._model, clients, self._batch_size)
        weight_bytes = 4 * sum(int(np.prod(v.shape)) for v in self._trainable)
        cap = LOCKSTEP_CHUNK_BYTES if self.form.startswith("lockstep") else SEQUENTIAL_CHUNK_BYTES
        return min(size, max(1, cap // max(weight_bytes, 1)))

    def train_round(self, state: dict, clients: Sequence[ClientRound], round_num: int,
                    *, dropped: Sequence[str] = ()) -> tuple[dict, RoundResult]:
        self._aggregation.dropped = dropped  # secure sums unmask what dropouts left
        round_inputs = self._start_round(state, round_num)
        if not clients:
            return self._empty_round(state, round_num)
        # Every worker divides the round's clients the same way, trains its own
        # replicas' shares, then sums (or, for robust combiners, gathers) the results.
        shares = self._replicas.split([num_rows(c.x) for c in clients])
        local = self._replicas.local_shares(shares)
        # A plain mean needs only each replica's sums, taken chunk by chunk, so a
        # round holds one chunk's client updates at a time; robust combiners and
        # attacks need every client's update (gathered below).
        keep = not (self._chain.is_plain_mean and self._attack is None)
        results = self._train_shares(state, round_inputs, clients, local, keep=keep)
        sums = self._replicas.all_reduce([
            self._replica_sums(state, r, share_sums, local[r], len(clients))
            for r, (share_sums, _) in enumerate(results)])
        totals = sums.pop("metrics")
        if self._replicas.distributed:  # one replica: its metrics are the totals already
            for metric, values in zip(self._metrics, totals):
                for v, value in zip(metric.variables, values):
                    v.assign(value)
        gathered = None
        if keep:
            gathered = combine.gather_in_order(self._replicas, [out for _, out in results],
                                               shares, state["trainable"])
        self._rounds_run += 1
        return self._server_update(state, sums, gathered, [c.cid for c in clients], round_num)

    def _start_round(self, state: dict, round_num: int) -> dict:
        """Resets the round's metrics; returns what every client receives."""
        for metrics in self._replica_metrics:
            for metric in metrics:
                metric.reset_state()
        self._round_client_metrics = {}
        return {
            "server": self._algorithm.broadcast(state["algorithm"]),
            "learning_rate": tf.constant(self._client_rate(round_num), tf.float32),
        }

    def client_updates(self, state: dict, clients: Sequence[ClientRound],
                       round_num: int) -> "ClientUpdates":
        """Trains ``clients`` from ``state``'s global model and returns each one's
        update, without a server step (asynchronous rounds apply them later)."""
        round_inputs = self._start_round(state, round_num)
        shares = self._replicas.split([num_rows(c.x) for c in clients])
        local = self._replicas.local_shares(shares)
        results = self._train_shares(state, round_inputs, clients, local, keep=True)
        gathered = combine.gather_in_order(self._replicas, [out for _, out in results],
                                           shares, state["trainable"])
        self._rounds_run += 1
        update = gathered["update"]
        rows = update if isinstance(update, np.ndarray) else np.concatenate(
            [u.numpy().reshape(len(clients), -1) for u in update], axis=1)
        finite = gathered["finite"].numpy() > 0
        return ClientUpdates(
            rows=rows, examples=gathered["examples"].numpy(), finite=finite,
            metrics={str(c.cid): self._round_client_metrics.get(str(c.cid), {})
                     for c in clients})

    def apply_update(self, state: dict, rows: np.ndarray, participants: int,
                     round_num: int) -> dict:
        """The state after the server optimizer applies ``rows`` (one flat update,
        combined outside, as the asynchronous buffer does)."""
        mean = combine.unflatten(rows, state["trainable"])
        context = ServerContext(
            weights=state["trainable"], optimizer=self._server_rule_at(round_num),
            optimizer_state=state["optimizer"], state=state["algorithm"], update=mean,
            means={}, participants=participants, population=self._population(),
            client_optimizer=self._client_rule_at(round_num), round_num=round_num)
        new = dict(state)
        if all(bool(tf.reduce_all(tf.math.is_finite(m))) for m in mean):
            new["trainable"], new["optimizer"] = self._algorithm.server_update(context)
        new["algorithm"] = self._algorithm.server_state_update(context)
        return new

    def _train_shares(self, state: dict, round_inputs: dict, clients: Sequence[ClientRound],
                      local: list[list[int]], *, keep: bool) -> list[tuple]:
        """Each local replica's clients trained on its device: (sums, per-client
        results if ``keep``), or (None, None) for a replica without clients."""
        def train(r: int) -> tuple:
            if not local[r]:
                return None, None
            share = [clients[i] for i in local[r]]
            with tf.device(self._replicas.devices[r]):
                return self._train_share(state, round_inputs, share, r,
                                         holds_first=local[r][0] == 0, keep=keep)

        replicas = range(len(local))
        # Side by side (threads) once the form has settled (a fallback rebuilds
        # every replica's work) and when clients share no variables.
        parallel = (len(local) > 1 and side_by_side(self._replicas.devices)
                    and self._rounds_run > 0
                    and isinstance(self._works[0].forward, fwd.StatelessForward))
        if not parallel:
            return [train(r) for r in replicas]
        with ThreadPoolExecutor(len(local), thread_name_prefix="kerasfed-replica") as pool:
            return list(pool.map(train, replicas))

    def _train_share(self, state: dict, round_inputs: dict, clients: Sequence[ClientRound],
                     replica: int, *, holds_first: bool, keep: bool) -> tuple[dict, dict | None]:
        in_flight = self._works[replica].in_flight
        size = chunk_size(len(clients), max(1, self.max_parallel_clients(clients)), in_flight)
        slots = self._chunk_shape(-(-size // in_flight) * in_flight)
        # One replica keeps the updates as the rows of one numpy array, filled chunk
        # by chunk (what the combiners take); replicas keep tensors to gather.
        flat = not self._replicas.distributed
        sums, parts, rows, finite = None, [], None, []
        for start in range(0, len(clients), size):
            out = self._run_chunk(state, round_inputs, clients[start:start + size], slots, replica)
            finite.append(out["finite"])
            chunk_sums = combine.chunk_sums(
                out, weighted=self._algorithm.weighted,
                counts_non_finite=self._algorithm.counts_non_finite_clients,
                non_trainable_positions=self._non_trainable_pos,
                holds_first=holds_first and start == 0)
            sums = chunk_sums if sums is None else tf.nest.map_structure(tf.add, sums, chunk_sums)
            if keep and flat:
                rows = fill_rows(rows, out["update"], start, len(clients))
                out = {"examples": out["examples"], "finite": out["finite"]}
            if keep:
                parts.append({k: out[k] for k in ("update", "examples", "finite") if k in out})
        sums["finite"] = tf.concat(finite, 0)  # in the share's order
        if not keep:
            return sums, None
        kept = {key: concat([p[key] for p in parts]) for key in parts[0]}
        if flat:
            kept["update"] = rows
        return sums, kept

    def _chunk_shape(self, slots: int) -> int:
        """The slots of a chunk that needs ``slots``: a chunk shape already traced
        that holds them with at most a bucket's padding (25%), else ``slots``.

        Rounds whose number of clients varies (dropout, deadlines, Poisson
        sampling) then retrace a few times, not once per count (a trace costs
        seconds); rounds of one size keep their exact shape.
        """
        fits = [s for s in self._traced_slots if slots <= s <= bucket(slots)]
        chosen = min(fits) if fits else slots
        self._traced_slots.add(chosen)
        return chosen

    def _run_chunk(self, state: dict, round_inputs: dict, chunk: Sequence[ClientRound],
                   slots: int, replica: int = 0) -> dict:
        packed = pack_chunk(
            chunk, batch_size=self._batch_size, num_slots=slots,
            min_rows=self._setup.largest_client,
            min_steps=self._min_steps(),
        )
        real = np.zeros(slots, np.float32)
        real[: packed.real_clients] = 1.0
        cids = [c.cid for c in chunk]
        client_states = self._read_client_states(cids, slots)
        own_state = self._read_rows(self._own_table, cids, slots)
        personal = self._read_rows(self._personal_model_table, cids, slots)
        metrics = self._replica_metrics[replica]
        drops = not self._algorithm.counts_non_finite_clients
        snapshot = [[v.numpy() for v in m.variables] for m in metrics] if drops else None
        out = self._call_work(packed, real, state, round_inputs, client_states, replica,
                              own_state, personal)
        finite = combine.finite_clients(out["update"])
        bad = real * (1.0 - finite.numpy().astype(np.float32))
        if bad.any() and drops:
            # TFF resets the metrics of a client whose update is not finite (FedAvg's
            # client work; FedSGD and Mime-lite keep them): run the chunk again with
            # that client's metrics masked out.
            for metric, values in zip(metrics, snapshot):
                for v, value in zip(metric.variables, values):
                    v.assign(value)
            out = self._call_work(packed, real - bad, state, round_inputs, client_states,
                                  replica, own_state, personal)
        keep = packed.real_clients
        out = tf.nest.map_structure(lambda t: t[:keep], out)
        out["finite"] = finite[:keep]
        self._round_client_metrics.update(client_values(
            self._client_metric_names, out["loss_sum"].numpy(), out["examples"].numpy(),
            out.pop("metric_totals").numpy(), out.pop("metric_counts").numpy(), cids,
            finite[:keep].numpy()))
        if self._client_table is not None:
            # A client whose update was not finite keeps its state.
            ok = finite[:keep].numpy()
            kept = [cid for cid, good in zip(cids, ok) if good]
            if kept:
                self._client_table.write(kept, [t.numpy()[ok] for t in out["client_state"]])
        ok = finite[:keep].numpy()
        kept = [cid for cid, good in zip(cids, ok) if good]
        personal_out = out.pop("personal")
        if self._own_table is not None and kept:
            self._own_table.write(kept, [out["state"][i].numpy()[ok]
                                         for i in self._personal_state])
        if self._personal_model_table is not None and kept:
            self._personal_model_table.write(kept, [t.numpy()[ok] for t in personal_out])
        return out

    def _min_steps(self) -> int:
        """The steps every chunk is padded to (the run's largest client's, capped)."""
        steps = self._setup.local_epochs * -(-self._setup.largest_client // self._batch_size)
        cap = self._setup.local_steps
        return steps if cap is None else min(steps, cap)

    def _read_client_states(self, cids: Sequence[str], slots: int) -> list[tf.Tensor]:
        """The chunk's clients' own states, [slots, ...] per tensor (padding: the template)."""
        return self._read_rows(self._client_table, cids, slots)

    @staticmethod
    def _read_rows(table, cids: Sequence[str], slots: int) -> list[tf.Tensor]:
        """``table``'s rows of ``cids``, [slots, ...] per tensor (padding: the template)."""
        if table is None:
            return []
        values = table.read(list(cids))
        out = []
        for value, template in zip(values, table.template):
            rows = np.empty((slots, *template.shape), template.dtype)
            rows[: len(cids)] = value
            rows[len(cids):] = template
            out.append(tf.constant(rows))
        return out

    def _call_work(self, packed, metric_mask, state, round_inputs, client_states,
                   replica: int = 0, own_state=(), personal=()) -> dict:
        args = (
            to_tensors(packed.x), to_tensors(packed.y),
            None if packed.w is None else tf.constant(packed.w), tf.constant(packed.batches),
            tf.constant(packed.counts), tf.constant(metric_mask),
            state["trainable"], state["non_trainable"], round_inputs["server"], client_states,
            round_inputs["learning_rate"], list(own_state), list(personal),
        )
        while True:
            try:
                return self._works[replica].run(*args)
            except FORM_ERRORS as e:
                # Only while a form is first traced and run: later, an error is the
                # data's or the machine's (out of memory), never a reason to change form.
                fallback = _FALLBACK.get(self.form) if self._rounds_run == 0 else None
                if fallback is None:
                    raise
                LOG.warning("kerasfed: native engine: %s failed (%s: %s); using %s",
                            self.form, type(e).__name__, str(e).splitlines()[0][:200], fallback)
                self.form, self._why = fallback, f"{self.form} failed: {type(e).__name__}"
                self._works = self._build_works(self.form)

    def _empty_round(self, state: dict, round_num: int) -> tuple[dict, RoundResult]:
        # Poisson sampling drew no client. DP-FedAvg still releases its noise (the
        # privacy analysis counts the round); anything else keeps the weights.
        names = ["loss", *(m.name for m in self._metrics)]
        metrics = {name: float("nan") for name in names}
        if self._chain.dp is None:
            return state, RoundResult(metrics=metrics, num_examples=0, update_non_finite=False,
                                      skipped="no client was sampled", participants=[])
        mean, aggregator, logs = self._aggregation.noise_only(
            state["aggregator"], state["trainable"], round_num)
        new = dict(state, aggregator=aggregator)
        new["optimizer"], new["trainable"] = self._server_rule_at(round_num).step(
            state["optimizer"], state["trainable"], [-m for m in mean])
        return new, RoundResult(metrics=metrics, num_examples=0, update_non_finite=False,
                                aggregation=logs, participants=[])

    # -- combining the clients' results ------------------------------------------------
    def _replica_sums(self, state: dict, replica: int, sums: dict | None, positions: list[int],
                      num_clients: int) -> dict:
        """What one local replica adds to the round: its clients' sums (zeros for
        none), its clients' finiteness at their places in the round and, when
        replicas are summed, its metric totals."""
        # Keras metrics' variables are sums (totals, counts, confusion counts), which
        # is how Keras itself aggregates them over replicas.
        metrics = [[tf.convert_to_tensor(v) for v in m.variables]
                   for m in self._replica_metrics[replica]] if self._replicas.distributed else []
        finite = np.zeros(num_clients, np.float32)
        if sums is None:
            sums = combine.zero_sums(self._sums_template(state))
        else:
            finite[positions] = sums.pop("finite").numpy().astype(np.float32)
        return dict(sums, finite=tf.constant(finite), metrics=metrics)

    def _sums_template(self, state: dict) -> dict:
        """The structure of a replica's sums (for a replica without clients)."""
        zero = tf.constant(0.0)
        return {
            "weight": zero, "good": zero, "examples": zero, "loss": zero,
            "update": [tf.zeros_like(t) for t in state["trainable"]],
            "extras": tf.nest.map_structure(tf.zeros_like, self._probe.extras),
            "state": [tf.zeros_like(t) for t in state["non_trainable"]],
        }

    def _server_update(self, state: dict, sums: dict, gathered: dict | None,
                       cids: Sequence[str], round_num: int) -> tuple[dict, RoundResult]:
        # As TFF's mean and apply_optimizer_finalizer: a non-finite mean keeps the
        # weights and the server optimizer state.
        new = dict(state)
        logs: dict = {}
        skipped = None
        finite = sums["finite"].numpy() > 0
        if gathered is None:
            mean = [u / tf.cast(sums["weight"], u.dtype) for u in sums["update"]]
        else:
            weight = combine.client_weights(gathered["examples"], gathered["finite"],
                                            self._algorithm.weighted)
            mean, new["aggregator"], logs, skipped = self._aggregation.combine(
                state["aggregator"], state["trainable"], gathered["update"], weight,
                gathered["finite"], cids, round_num)
        non_finite = mean is not None and not all(
            bool(tf.reduce_all(tf.math.is_finite(m))) for m in mean)
        means = tf.nest.map_structure(lambda e: e / tf.cast(sums["weight"], e.dtype),
                                      sums["extras"])
        context = ServerContext(
            weights=state["trainable"], optimizer=self._server_rule_at(round_num),
            optimizer_state=state["optimizer"], state=state["algorithm"], update=mean,
            means=means, participants=len(cids), population=self._population(),
            client_optimizer=self._client_rule_at(round_num), round_num=round_num)
        if mean is not None and not non_finite:
            new["trainable"], new["optimizer"] = self._algorithm.server_update(context)
            if float(sums["good"]) > 0:
                new["non_trainable"] = [
                    g if j in self._personal_state  # kept by each client, never averaged
                    else s / tf.cast(sums["good"], s.dtype) if s.dtype.is_floating and i is not None
                    else s if s.dtype.is_integer and i is None else g
                    for j, (s, g, i) in enumerate(zip(sums["state"], state["non_trainable"],
                                                      self._non_trainable_pos))
                ]
        new["algorithm"] = self._algorithm.server_state_update(context)
        num_examples = int(round(float(sums["examples"])))
        metrics = {"loss": float(sums["loss"]) / num_examples if num_examples else float("nan")}
        metrics.update((m.name, float(m.result())) for m in self._metrics)
        participants = [cid for cid, ok in zip(cids, finite) if ok]
        # Under several workers each process saw only its own clients' values.
        own = (None if self._replicas.workers > 1 else
               {str(cid): self._round_client_metrics[str(cid)] for cid in participants})
        return new, RoundResult(metrics=metrics, num_examples=num_examples,
                                update_non_finite=non_finite, aggregation=logs, skipped=skipped,
                                participants=participants, client_metrics=own)

    def _population(self) -> int:
        """Clients in the federation (SCAFFOLD's N)."""
        return int(self._setup.num_clients or self._setup.expected_clients)

    # -- evaluation ---------------------------------------------------------------
    def evaluate(self, state: dict, clients: Sequence[ClientRound]) -> Evaluation:
        return self._evaluation(self.get_weights(state), clients)

    @property
    def keeps_personal_weights(self) -> bool:
        """Whether clients keep weights of their own (personal layers, personal models)."""
        return bool(self._personal_state or self._personal_model_table is not None
                    or self._setup.personal is not None)

    def evaluate_personal(self, state: dict, clients: Sequence[ClientRound]
                          ) -> dict[str, dict[str, float]]:
        """Each client at its own weights and at the global ones, on all its examples.

        For personal layers (``PersonalLayers``) a client's own weights are the
        global ones with its personal values; for personal models (Ditto) its
        model. Clients that never took part have no weights of their own yet (only
        the initial ones) and are left out. Returns ``{cid: {"personalized_<m>":
        ..., "baseline_<m>": ...}}``.
        """
        from kerasfed.federated.engines.native.finetune import ClientsEvaluation  # noqa: PLC0415

        if getattr(self, "_clients_evaluation", None) is None:
            self._clients_evaluation = ClientsEvaluation(
                self._works[0].forward, loss=self._loss,
                flatten=self._layout.flatten if self._layout is not None else None,
                metrics=[make() for make in self._setup.parts.metrics],
                batch_size=self._batch_size, lockstep=self.form.startswith("lockstep"))
        evaluation = self._clients_evaluation
        tables = [t for t in (self._personal_model_table, self._client_table, self._own_table)
                  if t is not None]
        clients = [c for c in clients if any(str(c.cid) in t for t in tables)]
        out: dict[str, dict[str, float]] = {}
        size = max(1, self.max_parallel_clients(clients))
        for start in range(0, len(clients), size):
            chunk = list(clients[start:start + size])
            cids = [str(c.cid) for c in chunk]
            data = [(c.x, c.y, c.w) for c in chunk]
            tile = lambda t: tf.repeat(t[None], len(chunk), axis=0)  # noqa: E731
            trainable = [tile(t) for t in state["trainable"]]
            non_trainable = [tile(t) for t in state["non_trainable"]]
            baseline = evaluation(trainable, non_trainable, data)
            if self._personal_model_table is not None:
                trainable = [tf.constant(r) for r in self._personal_model_table.read(cids)]
            if self._setup.personal is not None and self._client_table is not None:
                rows = self._client_table.read(cids)
                own = rows[len(rows) - len(self._setup.personal.trainable):]
                for j, r in zip(self._setup.personal.trainable, own):
                    trainable[j] = tf.constant(r)
            if self._own_table is not None:
                for j, r in zip(self._personal_state, self._own_table.read(cids)):
                    non_trainable[j] = tf.constant(r)
            personal = evaluation(trainable, non_trainable, data)
            for cid, mine, base in zip(cids, personal, baseline):
                out[cid] = {**{f"personalized_{k}": v for k, v in mine.items()},
                            **{f"baseline_{k}": v for k, v in base.items()}}
        return out

    # -- bytes ----------------------------------------------------------------------
    def _payload_bytes(self) -> tuple[int, int]:
        personal = self._setup.personal
        shared = [v for j, v in enumerate(self._trainable)
                  if personal is None or j not in personal.trainable]
        own = {id(self._trainable[j]) for j in (personal.trainable if personal else ())}
        own |= {id(self._non_trainable[j]) for j in self._personal_state}
        return payload_bytes(
            # Personal weights are neither sent nor received.
            model_weights=[v for v in fwd.variables(self._model.weights) if id(v) not in own],
            trainable=shared,
            chain=self._chain, expected_clients=self._setup.expected_clients,
            client_rule=self._client_rule, broadcast=self._probe.broadcast,
            extras=self._probe.extras, metrics=self._metrics)


@dataclasses.dataclass(frozen=True)
class ClientUpdates:
    """Each client's update from ``NativeEngine.client_updates``, in the clients' order.

    Attributes:
      rows: ``[clients, values]``: each client's update, flattened.
      examples: Examples each client trained on.
      finite: Whether each client's update is all finite.
      metrics: Each client's own training loss and metrics.
    """

    rows: np.ndarray
    examples: np.ndarray
    finite: np.ndarray
    metrics: dict[str, dict[str, float]]


def _slots_to_numpy(slots: dict) -> dict[str, list[np.ndarray]]:
    return {
        k: [t.numpy() for t in v] if isinstance(v, list) else [np.asarray(v)]
        for k, v in slots.items()
    }


def _slots_from_numpy(slots: dict, like: dict) -> dict:
    """``slots`` (lists of arrays) in ``like``'s layout: a list, or one tensor."""
    return {
        k: [tf.constant(a) for a in v] if isinstance(like.get(k), list) else tf.constant(v[0])
        for k, v in slots.items()
    }
