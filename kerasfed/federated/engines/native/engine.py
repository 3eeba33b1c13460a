"""The native engine: federated rounds in pure TensorFlow, inside the calling process.

No child process, no socket, nothing to clean up; TF 2.14 (Keras 2) and the
newest TF (Keras 3) alike. A round's clients are trained in chunks of at most
``max_parallel_clients``, each chunk one compiled computation (``client_work``);
the server then averages the updates and applies the server optimizer exactly as
TFF's algorithms do (``algorithms``, ``server_optimizers``). Under a
``tf.distribute`` strategy (``federated/replicas.py``) each replica trains its
share of the round on its device and the replicas sum their weighted updates (or
gather them for other combiners); every process then runs the same server
update. Beyond TFF,
BatchNormalization moving statistics are averaged over the clients like the
weights instead of staying frozen, and Keras 3 subclassed models train.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed._compat import KERAS_3

from kerasfed.federated.aggregators import Mean, RoundContext, resolve_chain
from kerasfed.federated.algorithms import FedProx, FedSGD, MimeLite
from kerasfed.federated.engines.base import (
    ClientRound,
    Engine,
    EngineSetup,
    NeutralState,
    RoundResult,
    check_neutral,
)
from kerasfed.federated.engines.native import forward as fwd
from kerasfed.federated.engines.native.client_work import ClientWork
from kerasfed.federated.engines.native.optimizers import client_rule, server_rule
from kerasfed.federated.engines.native.packing import pack_chunk
from kerasfed.federated.clients.structure import leaves, nbytes, num_rows, to_tensors
from kerasfed.federated.output_parts import update_metrics
from kerasfed.federated.replicas import Replicas

LOG = logging.getLogger("kerasfed")

# The default chunk may use this share of the memory that is free at the start.
_MEMORY_SHARE = 0.25
_MAX_DEFAULT_CHUNK = 256
# Lockstep chunks are memory-bound once the stacked weights outgrow the CPU's
# caches: measured here on the 2NN (800 KB of weights per client), 100 clients
# per round took 6.2x the time of 20 in one chunk and 4.7-5x in chunks of 20.
_LOCKSTEP_CHUNK_BYTES = 16 << 20
# The sequential form gains nothing from long chunks (it trains one client at a
# time) but holds a chunk's stacked updates: CNN (6.6 MB of update per client), 100
# clients of 40 examples, peak 810 MiB above the round's start in one chunk, 24-31
# MiB in chunks of 25, at the same speed.
_SEQUENTIAL_CHUNK_BYTES = 64 << 20
# Federated evaluation runs the held-out clients' batches in compiled loops over
# their concatenated data, about this many bytes per call (bounded memory).
# 200 clients of 60 rows, batch 10, the 2NN's first layer, TF 2.21: 0.59 s per
# evaluation with a call per batch, 0.42 s with a call per client, 0.30 s now.
_EVAL_GROUP_BYTES = 64 << 20
# Clients the sequential form trains at once when each op runs on one thread
# (intra-op parallelism 1): one per core, up to 4. With TensorFlow's default
# thread pool, two clients side by side contended for it and were no faster
# (CNN round 2.05 s against 1.93 s); with one thread per op they took 1.55 s.
_IN_FLIGHT = max(1, min(4, os.cpu_count() or 1))


def _clients_in_flight() -> int:
    threads = tf.config.threading.get_intra_op_parallelism_threads()  # 0: not set there
    if threads == 0:
        threads = int(os.environ.get("TF_NUM_INTRAOP_THREADS", "0") or 0)
    return _IN_FLIGHT if threads == 1 else 1


class NativeEngine(Engine):
    """Runs ``fit_federated``'s rounds in this process (see the module docstring)."""

    name = "native"

    def __init__(self, setup: EngineSetup, *, form: str | None = None):
        model = setup.model
        self._setup = setup
        self._model = model
        self._batch_size = setup.batch_size
        self._weighted = setup.algorithm.weighted
        self._kind = (
            "gradient" if isinstance(setup.algorithm, FedSGD)
            else "mime" if isinstance(setup.algorithm, MimeLite) else "train"
        )
        self._mu = setup.algorithm.mu if isinstance(setup.algorithm, FedProx) else 0.0
        self._chain = setup.aggregator if setup.aggregator is not None else resolve_chain("mean")
        self._attack = setup.attack if setup.attack is not None and setup.attack.on_updates else None
        self._client_rule = client_rule(setup.client_optimizer) if setup.client_optimizer else None
        self._server_rule = server_rule(setup.server_optimizer, setup.server_learning_rate)
        self._loss = setup.parts.loss_per_example()
        self._replicas = setup.replicas if setup.replicas is not None else Replicas()
        # One set of metric objects per local replica (replica 0's are the round's
        # totals): replicas train at the same time and sum them afterwards.
        self._metrics = [make() for make in setup.parts.metrics]
        self._replica_metrics = [self._metrics] + [
            [make() for make in setup.parts.metrics] for _ in self._replicas.devices[1:]]
        self._eval_metrics = [make() for make in setup.parts.metrics]
        self._rounds_run = 0

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
        self._flatten = setup.layout.flatten if setup.layout is not None else (lambda p: p)
        strings = any(spec.dtype == tf.string for spec in tf.nest.flatten(setup.element_spec))

        if form is None and strings:  # tf.vectorized_map has no string ops nor lookup tables
            self.form, self._why = "sequential", "string data is processed one client at a time"
        else:
            self.form, self._why = _choose_form(model, form)
        self._works = self._build_works(self.form)
        self._max_parallel = setup.max_parallel_clients
        self.bytes_to_client, self.bytes_from_client = self._payload_bytes()
        self._evaluate_batches = tf.function(self._evaluate_batches_fn, reduce_retracing=True)

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
                forward, self._client_rule, kind=self._kind, mu=self._mu, metrics=metrics,
                lockstep=lockstep, jit_compile=form.endswith("+xla"),
                in_flight=_clients_in_flight() if stateless and not lockstep else 1,
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
        state = {
            "trainable": trainable,
            "non_trainable": [
                tf.constant(weights[i]) if i is not None else tf.identity(v)
                for i, v in zip(self._non_trainable_pos, self._non_trainable)
            ],
            "optimizer": self._server_rule.init(trainable),
            "algorithm": self._client_rule.init(trainable) if self._kind == "mime" else {},
            "aggregator": self._chain.initial_state(),
        }
        return state

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
        template = self.to_neutral(self.initial_state(self._model.get_weights()))
        check_neutral(template, neutral)
        state = self.initial_state(neutral.weights)
        state["optimizer"] = _slots_from_numpy(neutral.optimizer)
        state["algorithm"] = _slots_from_numpy(neutral.algorithm)
        state["aggregator"] = {k: np.asarray(v[0]) for k, v in neutral.aggregator.items()}
        return state

    # -- rounds -------------------------------------------------------------------
    def max_parallel_clients(self, clients: Sequence[ClientRound]) -> int:
        """The chunk size: the user's, else what fits in a share of free memory."""
        if self._max_parallel is not None:
            return self._max_parallel
        size = default_parallel_clients(self._model, clients, self._batch_size)
        weight_bytes = 4 * sum(int(np.prod(v.shape)) for v in self._trainable)
        cap = _LOCKSTEP_CHUNK_BYTES if self.form.startswith("lockstep") else _SEQUENTIAL_CHUNK_BYTES
        return min(size, max(1, cap // max(weight_bytes, 1)))

    def train_round(self, state: dict, clients: Sequence[ClientRound],
                    round_num: int) -> tuple[dict, RoundResult]:
        for metrics in self._replica_metrics:
            for metric in metrics:
                metric.reset_state()
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
        results = self._train_shares(state, clients, local, keep=keep)
        sums = self._replicas.all_reduce([
            self._replica_sums(state, r, share_sums)
            for r, (share_sums, _) in enumerate(results)])
        totals = sums.pop("metrics")
        if self._replicas.distributed:  # one replica: its metrics are the totals already
            for metric, values in zip(self._metrics, totals):
                for v, value in zip(metric.variables, values):
                    v.assign(value)
        gathered = None
        if keep:
            gathered = self._gather(state, [out for _, out in results], shares)
        self._rounds_run += 1
        return self._server_update(state, sums, gathered, [c.cid for c in clients], round_num)

    def _train_shares(self, state: dict, clients: Sequence[ClientRound],
                      local: list[list[int]], *, keep: bool) -> list[tuple]:
        """Each local replica's clients trained on its device: (sums, per-client
        results if ``keep``), or (None, None) for a replica without clients."""
        def train(r: int) -> tuple:
            if not local[r]:
                return None, None
            share = [clients[i] for i in local[r]]
            with tf.device(self._replicas.devices[r]):
                return self._train_share(state, share, r, holds_first=local[r][0] == 0,
                                         keep=keep)

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

    def _train_share(self, state: dict, clients: Sequence[ClientRound], replica: int, *,
                     holds_first: bool, keep: bool) -> tuple[dict, dict | None]:
        in_flight = self._works[replica].in_flight
        size = _chunk_size(len(clients), max(1, self.max_parallel_clients(clients)), in_flight)
        slots = -(-size // in_flight) * in_flight
        # One replica keeps the updates as the rows of one numpy array, filled chunk
        # by chunk (what the combiners take); replicas keep tensors to gather.
        flat = not self._replicas.distributed
        update_key = "gradient" if self._kind == "gradient" else "delta"
        sums, parts, rows = None, [], None
        for start in range(0, len(clients), size):
            out = self._run_chunk(state, clients[start:start + size], slots, replica)
            chunk_sums = self._chunk_sums(state, out, holds_first=holds_first and start == 0)
            sums = chunk_sums if sums is None else tf.nest.map_structure(tf.add, sums, chunk_sums)
            if keep and flat:
                rows = _fill_rows(rows, out[update_key], start, len(clients))
                out = {"examples": out["examples"], "finite": out["finite"]}
            if keep:
                parts.append(out)
        if not keep:
            return sums, None
        kept = {key: _concat([p[key] for p in parts]) for key in parts[0]}
        if flat:
            kept[update_key] = rows
        return sums, kept

    def _run_chunk(self, state: dict, chunk: Sequence[ClientRound], slots: int,
                   replica: int = 0) -> dict:
        packed = pack_chunk(
            chunk, batch_size=self._batch_size, num_slots=slots,
            min_rows=self._setup.largest_client,
            min_steps=self._setup.local_epochs * -(-self._setup.largest_client // self._batch_size),
        )
        real = np.zeros(slots, np.float32)
        real[: packed.real_clients] = 1.0
        metrics = self._replica_metrics[replica]
        # Only FedAvg's client work drops a non-finite client's metrics (below).
        snapshot = ([[v.numpy() for v in m.variables] for m in metrics]
                    if self._kind == "train" else None)
        out = self._call_work(packed, real, state, replica)
        finite = _finite(out, self._kind)
        bad = real * (1.0 - finite.numpy().astype(np.float32))
        if bad.any() and self._kind == "train":
            # TFF resets the metrics of a client whose update is not finite (FedAvg's
            # client work; FedSGD and Mime-lite keep them): run the chunk again with
            # that client's metrics masked out.
            for metric, values in zip(metrics, snapshot):
                for v, value in zip(metric.variables, values):
                    v.assign(value)
            out = self._call_work(packed, real - bad, state, replica)
        keep = packed.real_clients
        out = {k: (v[:keep] if not isinstance(v, list) else [t[:keep] for t in v])
               for k, v in out.items()}
        out["finite"] = finite[:keep]
        return out

    def _call_work(self, packed, metric_mask, state, replica: int = 0) -> dict:
        args = (
            to_tensors(packed.x), to_tensors(packed.y),
            None if packed.w is None else tf.constant(packed.w), tf.constant(packed.batches),
            tf.constant(packed.counts), tf.constant(metric_mask),
            state["trainable"], state["non_trainable"], state["algorithm"],
        )
        while True:
            try:
                return self._works[replica].run(*args)
            except (ValueError, TypeError, NotImplementedError, tf.errors.OpError) as e:
                fallback = _FALLBACK.get(self.form)
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
                                      skipped="no client was sampled")
        empty = np.zeros((0, sum(int(np.prod(t.shape)) for t in state["trainable"])), np.float32)
        update, aggregator, logs = self._chain.run(empty, self._context([], [], round_num),
                                                  state["aggregator"])
        new = dict(state, aggregator=aggregator)
        mean = _unflatten(update, state["trainable"])
        new["optimizer"], new["trainable"] = self._server_rule.step(
            state["optimizer"], state["trainable"], [-m for m in mean])
        return new, RoundResult(metrics=metrics, num_examples=0, update_non_finite=False,
                                aggregation=logs)

    def _context(self, cids: Sequence[str], weights, round_num: int) -> RoundContext:
        return RoundContext(cids=list(cids), weights=np.asarray(weights, np.float64),
                            expected_clients=self._setup.expected_clients,
                            seed=self._setup.seed, round_num=round_num)

    def _aggregate(self, state: dict, stacked: list, weight: tf.Tensor, finite: tf.Tensor,
                   cids: Sequence[str], round_num: int) -> tuple[list | None, dict, dict, str | None]:
        """The chain's combined update of the clients' ``stacked`` updates, as
        (update per trainable weight or None to skip, aggregator state, logs, why skipped)."""
        n = len(cids)
        if isinstance(stacked, np.ndarray):  # one replica's rows, already flat (and ours)
            flat = stacked
        else:
            flat = np.concatenate([u.numpy().reshape(n, -1) for u in stacked], axis=1)
        ok = finite.numpy() > 0
        flat[~ok] = 0.0
        if self._attack is not None:
            malicious = np.array([cid in self._setup.attackers for cid in cids]) & ok
            rng = np.random.default_rng([self._setup.seed, round_num, 0xA77ACC])
            flat = self._attack.corrupt(flat, malicious, rng)
        weights = weight.numpy()
        if not isinstance(self._chain.combiner, Mean):
            # Robust, private and secure combiners count each client once, and only
            # the clients whose update is finite.
            if not ok.all():  # (a boolean index copies every row)
                flat, cids = flat[ok], [c for c, k in zip(cids, ok) if k]
            weights = np.ones(len(cids))
            need = self._chain.combiner.min_clients()
            if len(cids) < need and self._chain.dp is None:
                why = (f"{self._chain.combiner!r} needs at least {need} clients with finite "
                       f"updates and the round had {len(cids)}")
                return None, state["aggregator"], {}, why
        update, aggregator, logs = self._chain.run(flat, self._context(cids, weights, round_num),
                                                  state["aggregator"])
        return _unflatten(update, state["trainable"]), aggregator, logs, None

    # -- combining the clients' results ------------------------------------------------
    def _replica_sums(self, state: dict, replica: int, sums: dict | None) -> dict:
        """What one local replica adds to the round: its clients' sums (zeros for
        none) and, when replicas are summed, its metric totals."""
        # Keras metrics' variables are sums (totals, counts, confusion counts), which
        # is how Keras itself aggregates them over replicas.
        metrics = [[tf.convert_to_tensor(v) for v in m.variables]
                   for m in self._replica_metrics[replica]] if self._replicas.distributed else []
        if sums is None:
            zero = tf.constant(0.0)
            sums = {
                "weight": zero, "good": zero, "examples": zero, "loss": zero,
                "update": [tf.zeros_like(t) for t in state["trainable"]],
                "state": [tf.zeros_like(t) for t in state["non_trainable"]],
            }
            if self._kind == "mime":
                sums["full"] = [tf.zeros_like(t) for t in state["trainable"]]
        return dict(sums, metrics=metrics)

    def _chunk_sums(self, state: dict, out: dict, *, holds_first: bool) -> dict:
        """A chunk's clients' weighted update sums, weights, example and loss totals."""
        update_key = "gradient" if self._kind == "gradient" else "delta"
        # TFF's semantics (model_delta_client_work, fed_sgd, mime and mean): a
        # non-finite client update is zeroed and weighted 0 (the unweighted mean
        # still counts it).
        finite = tf.cast(out["finite"], tf.float32)
        examples = out["examples"]
        weight = examples * finite if self._weighted else tf.ones_like(examples)
        good = examples * finite
        counted = finite if self._kind == "train" else tf.ones_like(finite)
        sums = {
            "weight": tf.reduce_sum(weight),
            "good": tf.reduce_sum(good),
            "examples": tf.reduce_sum(examples * counted),
            "loss": tf.reduce_sum(tf.where(counted > 0, out["loss_sum"], 0.0)),
            "update": [_weighted_sum(u, weight, finite) for u in out[update_key]],
            # Beyond TFF (which keeps them frozen): float non-trainable weights
            # (BatchNormalization's moving statistics) are averaged over the clients
            # by examples; a seed state moves on to the round's first client's.
            "state": [
                _weighted_sum(s, good, finite) if s.dtype.is_floating and i is not None
                else (s[0] if holds_first else tf.zeros_like(s[0]))
                if s.dtype.is_integer and i is None else tf.zeros_like(s[0])
                for s, i in zip(out["state"], self._non_trainable_pos)
            ],
        }
        if self._kind == "mime":
            sums["full"] = [_weighted_sum(g, weight) for g in out["gradient"]]
        return sums

    def _gather(self, state: dict, outs: list[dict | None], shares: list[list[int]]) -> dict:
        """Every client's update, example count and finiteness, in the round's order."""
        update_key = "gradient" if self._kind == "gradient" else "delta"
        if not self._replicas.distributed:  # one replica holds the round, in order
            out = outs[0]
            return {"update": out[update_key], "examples": out["examples"],
                    "finite": tf.cast(out["finite"], tf.float32)}
        width = max(len(s) for s in shares)
        local = []
        for out in outs:
            if out is None:
                local.append({
                    "update": [tf.zeros([width, *t.shape], t.dtype) for t in state["trainable"]],
                    "examples": tf.zeros([width]), "finite": tf.zeros([width])})
                continue
            pad = width - int(out["examples"].shape[0])
            grow = lambda t: tf.pad(t, [[0, pad]] + [[0, 0]] * (t.shape.rank - 1))  # noqa: E731
            local.append({"update": [grow(u) for u in out[update_key]],
                          "examples": grow(out["examples"]),
                          "finite": grow(tf.cast(out["finite"], tf.float32))})
        stacked = self._replicas.all_gather(local)
        position = np.empty(sum(len(s) for s in shares), np.int64)
        for r, share in enumerate(shares):
            for j, i in enumerate(share):
                position[i] = r * width + j
        return tf.nest.map_structure(lambda t: tf.gather(t, position), stacked)

    def _server_update(self, state: dict, sums: dict, gathered: dict | None,
                       cids: Sequence[str], round_num: int) -> tuple[dict, RoundResult]:
        # As TFF's mean and apply_optimizer_finalizer: a non-finite mean keeps the
        # weights and the server optimizer state.
        new = dict(state)
        logs: dict = {}
        skipped = None
        if gathered is None:
            total = sums["weight"]
            mean = [u / tf.cast(total, u.dtype) for u in sums["update"]]
        else:
            finite, examples = gathered["finite"], gathered["examples"]
            weight = examples * finite if self._weighted else tf.ones_like(examples)
            mean, new["aggregator"], logs, skipped = self._aggregate(
                state, gathered["update"], weight, finite, cids, round_num)
        non_finite = mean is not None and not all(
            bool(tf.reduce_all(tf.math.is_finite(m))) for m in mean)
        if mean is not None and not non_finite:
            gradient = mean if self._kind == "gradient" else [-m for m in mean]
            new["optimizer"], new["trainable"] = self._server_rule.step(
                state["optimizer"], state["trainable"], gradient)
            good_total = sums["good"]
            if float(good_total) > 0:
                new["non_trainable"] = [
                    s / tf.cast(good_total, s.dtype) if s.dtype.is_floating and i is not None
                    else s if s.dtype.is_integer and i is None else g
                    for s, g, i in zip(sums["state"], state["non_trainable"],
                                       self._non_trainable_pos)
                ]
        if self._kind == "mime":
            # Mime-lite advances the global optimizer state with the mean full
            # gradient every round, without TFF's finiteness check.
            full = [f / tf.cast(sums["weight"], f.dtype) for f in sums["full"]]
            new["algorithm"], _ = self._client_rule.step(
                state["algorithm"], [tf.zeros_like(t) for t in state["trainable"]], full)
        num_examples = int(round(float(sums["examples"])))
        metrics = {"loss": float(sums["loss"]) / num_examples if num_examples else float("nan")}
        metrics.update((m.name, float(m.result())) for m in self._metrics)
        return new, RoundResult(metrics=metrics, num_examples=num_examples,
                                update_non_finite=non_finite, aggregation=logs, skipped=skipped)

    # -- evaluation ---------------------------------------------------------------
    def _evaluate_batch_fn(self, x, y, w=None):
        pred = self._flatten(self._model(fwd.keras_inputs(x), training=False))
        if not tf.nest.is_nested(y):
            y = fwd.match_rank(y, pred)
        per = self._loss(y, pred, sample_weight=w)
        first = tf.nest.flatten(pred)[0]
        update_metrics(self._eval_metrics, y, pred, None, w)
        count = tf.cast(tf.shape(first)[0], per.dtype)
        elements = tf.cast(tf.size(per), per.dtype) / tf.maximum(count, 1.0)
        if per.shape.rank == 0:
            return per * count
        return tf.reduce_sum(per) / elements

    def _evaluate_batches_fn(self, x, y, w, starts, ends):
        # Many clients' batches in one compiled loop: rows starts[i]:ends[i] are
        # one batch of one client (its last one partial, as TFF batches it).
        total = tf.zeros((), tf.float64)
        for i in tf.range(tf.shape(starts)[0]):
            rows = slice(starts[i], ends[i])
            cut = lambda t, rows=rows: t[rows]  # noqa: E731
            total += tf.cast(self._evaluate_batch_fn(
                tf.nest.map_structure(cut, x), tf.nest.map_structure(cut, y),
                None if w is None else w[rows]), tf.float64)
        return total

    def _evaluation_groups(self, clients: Sequence[ClientRound]):
        """The clients' data in few calls: concatenated, at most about
        ``_EVAL_GROUP_BYTES`` per call (bounded memory for many clients)."""
        group: list[ClientRound] = []
        size = 0
        for client in [c for c in clients if num_rows(c.x)]:
            group.append(client)
            size += nbytes(client.x) + nbytes(client.y)
            if size >= _EVAL_GROUP_BYTES:
                yield group
                group, size = [], 0
        if group:
            yield group

    def evaluate(self, state: dict, clients: Sequence[ClientRound]) -> dict[str, float]:
        self._model.set_weights(self.get_weights(state))
        for metric in self._eval_metrics:
            metric.reset_state()
        replicas = self._replicas
        if replicas.workers > 1:  # each worker evaluates its share; the sums are added
            shares = replicas.split([num_rows(c.x) for c in clients])
            clients = [clients[i] for i in replicas.worker_share(shares)]
        sums = []
        joined = lambda *parts: tf.constant(np.concatenate(parts))  # noqa: E731
        for group in self._evaluation_groups(clients):
            sizes = [num_rows(c.x) for c in group]
            offsets = np.cumsum([0] + sizes)
            starts = np.concatenate([np.arange(o, o + n, self._batch_size)
                                     for o, n in zip(offsets, sizes)])
            ends = np.minimum(starts + self._batch_size,
                              np.repeat(offsets[1:], [-(-n // self._batch_size) for n in sizes]))
            sums.append(self._evaluate_batches(
                tf.nest.map_structure(joined, *[c.x for c in group]),
                tf.nest.map_structure(joined, *[c.y for c in group]),
                None if group[0].w is None else joined(*[c.w for c in group]),
                tf.constant(starts, tf.int32), tf.constant(ends, tf.int32)))
        loss_sum = float(tf.add_n(sums)) if sums else 0.0  # the one wait for the results
        total = sum(num_rows(c.x) for c in clients)
        if replicas.workers > 1:
            mine = {"loss": tf.constant(loss_sum, tf.float64),
                    "total": tf.constant(total, tf.int64),
                    "metrics": [[tf.convert_to_tensor(v) for v in m.variables]
                                for m in self._eval_metrics]}
            nothing = tf.nest.map_structure(tf.zeros_like, mine)
            summed = replicas.all_reduce([mine] + [nothing] * (len(replicas.devices) - 1))
            loss_sum, total = float(summed["loss"]), int(summed["total"])
            for metric, values in zip(self._eval_metrics, summed["metrics"]):
                for v, value in zip(metric.variables, values):
                    v.assign(value)
        results = {"loss": loss_sum / max(total, 1)}
        results.update((m.name, float(m.result())) for m in self._eval_metrics)
        return results

    # -- bytes ----------------------------------------------------------------------
    def _payload_bytes(self) -> tuple[int, int]:
        def nbytes(variables):
            return sum(int(np.prod(v.shape)) * np.dtype(tf.as_dtype(v.dtype).as_numpy_dtype).itemsize
                   for v in variables)

        # Counted as TFF's round moves them: the model weights and the client
        # optimizer's hyper-parameters (float32 each; FedProx adds mu) out; the
        # update, its weight and the metric sums (loss total and count, int64
        # num_examples and num_batches) back. Mime-lite also sends the global
        # optimizer state out and the full gradient (with its weight) back.
        to_client = nbytes(fwd.variables(self._model.weights))
        update = nbytes(self._trainable)
        values = sum(int(np.prod(v.shape)) for v in self._trainable)
        from_client = self._chain.update_bytes(values, self._setup.expected_clients) + 4
        if self._client_rule is not None:
            to_client += 4 * self._client_rule.num_hyperparameters() + (4 if self._mu else 0)
        if self._kind == "mime":
            for slot in self._client_rule.init(self._trainable).values():
                to_client += nbytes(slot) if isinstance(slot, list) else 4
            from_client += update + 4
        metric_bytes = sum(nbytes(m.variables) for m in self._metrics)
        from_client += metric_bytes + 8 + 16
        return to_client, from_client


_FALLBACK = {"lockstep+xla": "lockstep", "lockstep": "sequential"}


def _choose_form(model, requested: str | None) -> tuple[str, str]:
    if requested is not None:
        return requested, "requested"
    reason = fwd.StatelessForward.supported(model)
    if reason is not None:
        return "sequential", reason
    classes = fwd.layer_classes(model)
    mixing = sorted({c for c in classes if c not in fwd.PER_EXAMPLE_LAYERS})
    if mixing:
        return "sequential", f"layers {mixing} are not known to treat examples independently"
    if fwd.CONVOLUTION_LAYERS & set(classes):
        return "sequential", "convolutions train faster one client at a time on CPU"
    if KERAS_3:
        return "lockstep+xla", "per-example layers: clients stacked and trained in lockstep, XLA"
    # Measured on the 2NN round: XLA made TF 2.14's lockstep slower (0.13 s
    # against 0.11 s), while it speeds up TF 2.21's (0.057 s against 0.080 s).
    return "lockstep", "per-example layers: clients stacked and trained in lockstep"


def side_by_side(devices: Sequence[str | None]) -> bool:
    """Whether a process's replicas on ``devices`` train at the same time (threads).

    Accelerators do. Logical CPUs share one thread pool: side by side they only
    contend for it (2NN round, TF 2.21, two logical CPUs on 2 cores: 0.47 s in
    threads against 0.32 s one after the other), so they take turns.
    """
    return not any("CPU" in (d or "CPU").upper() for d in devices)


def default_parallel_clients(model, clients: Sequence[ClientRound], batch_size: int) -> int:
    """How many clients one chunk may hold in about a quarter of the free memory."""
    params = sum(int(np.prod(v.shape)) for v in fwd.variables(model.weights))
    rows = max(num_rows(c.x) for c in clients)
    example = sum(int(np.prod(a.shape[1:])) for a in [*leaves(clients[0].x),
                                                      *leaves(clients[0].y)])
    activations = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is not None:
            activations += int(np.prod([d or 1 for d in shape[1:]]))
    per_client = 4 * (6 * params + rows * example + 3 * batch_size * max(activations, 1))
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        free = 4 << 30
    return int(max(1, min(_MAX_DEFAULT_CHUNK, free * _MEMORY_SHARE // per_client)))


def _finite(out: dict, kind: str) -> tf.Tensor:
    key = "gradient" if kind == "gradient" else "delta"
    flags = [
        tf.reduce_all(tf.math.is_finite(tf.reshape(u, [tf.shape(u)[0], -1])), axis=1)
        for u in out[key]
    ]
    return tf.reduce_all(tf.stack(flags), axis=0)


def _weighted_sum(stacked: tf.Tensor, weight: tf.Tensor,
                  finite: tf.Tensor | None = None) -> tf.Tensor:
    """``sum_i weight_i * stacked_i``; clients not ``finite`` count as zeros."""
    shape = [-1] + [1] * (len(stacked.shape) - 1)
    if finite is not None:
        ok = tf.reshape(finite > 0, shape)
        stacked = tf.where(ok, stacked, tf.zeros_like(stacked))
    w = tf.reshape(tf.cast(weight, stacked.dtype), shape)
    return tf.reduce_sum(stacked * w, axis=0)


def _unflatten(flat: np.ndarray, like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """``flat`` (one vector) cut into tensors of ``like``'s shapes and dtypes."""
    out, start = [], 0
    for t in like:
        size = int(np.prod(t.shape))
        out.append(tf.constant(flat[start:start + size].reshape(tuple(t.shape)), dtype=t.dtype))
        start += size
    return out


def _chunk_size(clients: int, cap: int, in_flight: int) -> int:
    """Clients per chunk: at most ``cap``, in whole groups of the ``in_flight``
    clients the sequential form trains side by side, and about equal across the
    round (a last chunk of a few clients would leave most of its slots empty).
    A cap below one group keeps the cap (the chunk's slots are padded)."""
    if cap < in_flight:
        return cap
    groups = math.ceil(clients / in_flight)
    chunks = math.ceil(groups / (cap // in_flight))
    return math.ceil(groups / chunks) * in_flight


def _fill_rows(rows: np.ndarray | None, updates: Sequence[tf.Tensor], start: int,
               total: int) -> np.ndarray:
    """Writes a chunk's stacked updates ([k, ...] per weight) as rows start..start+k
    of the flat [total, weights] array (made on the first chunk)."""
    k = int(updates[0].shape[0])
    if rows is None:
        width = sum(int(np.prod(u.shape[1:])) for u in updates)
        rows = np.empty((total, width), updates[0].dtype.as_numpy_dtype)
    column = 0
    for u in updates:
        size = int(np.prod(u.shape[1:]))
        rows[start:start + k, column:column + size] = u.numpy().reshape(k, size)
        column += size
    return rows


def _concat(values: list) -> Any:
    if isinstance(values[0], list):
        return [tf.concat(parts, 0) for parts in zip(*values)]
    return tf.concat(values, 0)


def _slots_to_numpy(slots: dict) -> dict[str, list[np.ndarray]]:
    return {
        k: [t.numpy() for t in v] if isinstance(v, list) else [np.asarray(v)]
        for k, v in slots.items()
    }


def _slots_from_numpy(slots: dict) -> dict:
    return {
        k: tf.constant(v[0]) if k == "step" else [tf.constant(a) for a in v]
        for k, v in slots.items()
    }
