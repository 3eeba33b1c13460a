"""The TFF engine: ``fit_federated``'s rounds as TensorFlow Federated 0.87 computations.

``TffEngine`` turns a compiled Keras model (as a ``ModelRecipe``) into a TFF
``LearningProcess`` (and, when asked, a federated evaluation process) and runs
them inside a kerasfed-owned TFF runtime (``runtime.py``): initial server state
from the user's weights, one call per round on ``tf.data`` datasets cut from the
round's ``ClientRound`` orders, global weights out of the state, the state to and
from the engine-neutral form, and the bytes each round moves, read from the
round computation's TFF types. This package is the only place that imports TFF.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from kerasfed._compat import keras
from kerasfed._keras_model import ModelError
from kerasfed.federated.clients.pipelines import batches_in_order
from kerasfed.federated.engines.base import (
    ClientRound,
    Engine,
    EngineSetup,
    Evaluation,
    NeutralState,
    RoundResult,
    check_neutral,
)
from kerasfed.federated.engines.tff.aggregators import model_aggregator
from kerasfed.federated.engines.tff.algorithms import build_learning_process
from kerasfed.federated.engines.tff.keras_classes import keras_classes_kept
from kerasfed.federated.engines.tff.learning_rates import with_round_rates
from kerasfed.federated.engines.tff.optimizers import tff_client_optimizer, tff_server_optimizer
from kerasfed.federated.engines.tff.payload import round_payload_bytes
from kerasfed.federated.engines.tff.runtime import federated_runtime

# The optimizer state entries that are state; the others are hyper-parameters,
# which the neutral form leaves out (they are the training's settings,
# fingerprinted). RMSprop's slots are those of kerasfed's own rule (keras_rules.py),
# which Mime-lite keeps as its global client optimizer state.
_SLOT_KEYS = ("step", "accumulator", "preconditioner",
              "velocity", "momentum_accumulator", "average_gradient")


class TffEngine(Engine):
    """A compiled Keras model's TFF learning process (and federated evaluation).

    Starts kerasfed's TFF runtime (a worker process on 127.0.0.1) when built;
    ``close()`` stops it.
    """

    name = "tff"

    def __init__(self, setup: EngineSetup):
        self._stack = contextlib.ExitStack()
        # The worker trains at most `max_parallel_clients` clients at once.
        self._stack.enter_context(federated_runtime(
            max_concurrent_clients=setup.max_parallel_clients, quiet=True))
        try:
            self._build(setup)
        except BaseException:
            self._stack.close()
            raise

    def _build(self, setup: EngineSetup) -> None:
        self._layout = _WeightLayout.of(setup.model)
        self._batch_size = setup.batch_size
        self._mime = setup.algorithm.name.startswith("mime")
        self._server_rate, self._client_rate = (setup.server_learning_rate,
                                                setup.client_learning_rate)
        element_spec, recipe, parts = setup.element_spec, setup.recipe, setup.parts

        def model_fn():
            # A fresh, uncompiled model in TFF's graph; the weights it starts with
            # are replaced by `initial_state`, so random initialisation is fine.
            keras_model = recipe.build(compile=False, weights=False)
            return tff.learning.models.from_keras_model(
                keras_model, loss=parts.loss(), input_spec=element_spec,
                metrics=list(parts.metrics),
            )

        client_spec = setup.client_optimizer
        if client_spec is not None and setup.client_learning_rate is not None:
            client_spec = dataclasses.replace(
                client_spec, learning_rate=setup.client_learning_rate(0))
        client_optimizer = tff_client_optimizer(client_spec) if client_spec else None
        aggregation = None
        if setup.aggregator is not None:
            aggregation = model_aggregator(setup.aggregator, weighted=setup.algorithm.weighted,
                                           expected_clients=setup.expected_clients)
        factory, weighted = aggregation if aggregation else (None, None)
        self._metric_names = ["loss", *(m().name for m in parts.metrics)]
        with keras_classes_kept():
            self._process = build_learning_process(
                setup.algorithm, model_fn=model_fn, client_optimizer=client_optimizer,
                # Built with round 0's rates; `with_round_rates` sets later rounds'.
                server_optimizer=tff_server_optimizer(
                    setup.server_optimizer, setup.server_learning_rate(0)),
                model_aggregator=factory, weighted=weighted,
            )
            self._eval_process = (
                tff.learning.algorithms.build_fed_eval(model_fn)
                if setup.federated_evaluation else None
            )
        self._template = self._process.initialize()
        self._eval_state = self._eval_process.initialize() if self._eval_process else None
        self.bytes_to_client, self.bytes_from_client = round_payload_bytes(
            tff, self._process.next
        )

    def close(self) -> None:
        self._stack.close()

    def describe(self) -> str:
        return "TFF engine (TensorFlow Federated 0.87, one client after another in its worker)"

    # -- State -------------------------------------------------------------------
    def initial_state(self, weights: Sequence[np.ndarray]) -> Any:
        return self._process.set_model_weights(self._template, self._layout.to_tff(weights))

    def get_weights(self, state: Any) -> list[np.ndarray]:
        return self._layout.to_keras(self._process.get_model_weights(state))

    def to_neutral(self, state: Any) -> NeutralState:
        return NeutralState(
            weights=self.get_weights(state),
            optimizer=_slots(state.finalizer),
            algorithm=_slots(state.client_work[0]) if self._mime else {},
            # TFF's own aggregator state (an adaptive clip norm), leaf by leaf.
            aggregator={f"tff/{i:03d}": [np.asarray(leaf)]
                        for i, leaf in enumerate(tf.nest.flatten(state.aggregator))},
        )

    def from_neutral(self, neutral: NeutralState) -> Any:
        check_neutral(self.to_neutral(self._template), neutral)
        state = self.initial_state(neutral.weights)
        state = state._replace(finalizer=_with_slots(state.finalizer, neutral.optimizer))
        if neutral.aggregator:
            leaves = [neutral.aggregator[k][0] for k in sorted(neutral.aggregator)]
            state = state._replace(
                aggregator=tf.nest.pack_sequence_as(state.aggregator, leaves))
        if self._mime:
            work = state.client_work
            state = state._replace(
                client_work=(_with_slots(work[0], neutral.algorithm), *work[1:]))
        return state

    # -- Rounds ------------------------------------------------------------------
    def _datasets(self, clients: Sequence[ClientRound]) -> list[tf.data.Dataset]:
        return [_capped(batches_in_order(c.x, c.y, c.order, self._batch_size), c.max_steps)
                for c in clients]

    def train_round(self, state: Any, clients: Sequence[ClientRound], round_num: int,
                    *, dropped: Sequence[str] = ()) -> tuple[Any, RoundResult]:
        del dropped  # TFF's secure sum runs over the clients that report
        if not clients:  # Poisson sampling drew none; TFF cannot run an empty round
            return state, RoundResult(
                metrics={name: float("nan") for name in self._metric_names}, num_examples=0,
                update_non_finite=False, skipped="no client was sampled")
        state = with_round_rates(state, round_num, server_rate=self._server_rate,
                                 client_rate=self._client_rate, mime=self._mime)
        output = self._process.next(state, self._datasets(clients))
        train = dict(output.metrics["client_work"]["train"])
        num_examples = int(train.pop("num_examples"))
        train.pop("num_batches", None)
        finalizer = output.metrics.get("finalizer")
        non_finite = isinstance(finalizer, collections.abc.Mapping) and bool(
            finalizer.get("update_non_finite", 0)
        )
        return output.state, RoundResult(
            metrics=_loss_first(train),
            num_examples=num_examples,
            update_non_finite=non_finite,
            aggregation=_aggregation_logs(output.metrics.get("aggregator"), len(clients)),
        )

    def evaluate(self, state: Any, clients: Sequence[ClientRound]) -> Evaluation:
        """The pooled values from one call over all ``clients`` (TFF's federated
        evaluation), and each client's from one call with that client alone: TFF
        sums the clients of a call, so a client's own values need its own call
        (about one TFF call's cost per client)."""
        if self._eval_process is None:
            raise RuntimeError("this engine was built without federated_evaluation=True")
        eval_state = self._eval_process.set_model_weights(
            self._eval_state, self._process.get_model_weights(state)
        )

        def run(datasets):
            output = self._eval_process.next(eval_state, datasets)
            metrics = dict(output.metrics["client_work"]["eval"]["current_round_metrics"])
            metrics.pop("num_examples", None)
            metrics.pop("num_batches", None)
            return _loss_first(metrics)

        pooled = run(self._datasets(clients))
        per_client = {str(c.cid): run(self._datasets([c])) for c in clients if len(c.order[0])}
        return Evaluation(pooled=pooled, per_client=per_client)


def _aggregation_logs(measurements: Any, clients: int) -> dict[str, float]:
    """TFF's aggregator measurements under the native engine's History names."""
    flat: dict[str, float] = {}

    def walk(value):
        if isinstance(value, collections.abc.Mapping):
            for key, item in value.items():
                if isinstance(item, collections.abc.Mapping):
                    walk(item)
                elif np.ndim(item) == 0:
                    flat[str(key)] = float(item)

    walk(measurements or {})
    logs = {}
    # (TFF's DP query reports the clip norm after its update, the next round's:
    # left out, so that `clip_norm` always means the norm this round clipped to.)
    if "clipping_norm" in flat:
        logs["clip_norm"] = flat["clipping_norm"]
    for key, name in (("clipped_count", "clipped_fraction"), ("zeroed_count", "zeroed_fraction")):
        if key in flat and clients:
            logs[name] = flat[key] / clients
    return logs


def _loss_first(metrics: dict) -> dict[str, float]:
    # Keras lists the loss before the metrics; TFF appends it after them.
    ordered = {"loss": float(metrics["loss"])} if "loss" in metrics else {}
    ordered.update((k, float(v)) for k, v in metrics.items() if k != "loss")
    return ordered


def _slots(optimizer_state: Any) -> dict[str, list[np.ndarray]]:
    return {
        key: [np.asarray(v) for v in value] if key != "step" else [np.asarray(value)]
        for key, value in optimizer_state.items() if key in _SLOT_KEYS
    }


def _with_slots(optimizer_state: Any, slots: dict[str, list[np.ndarray]]) -> Any:
    state = collections.OrderedDict(optimizer_state)
    for key, values in slots.items():
        state[key] = values[0] if key == "step" else list(values)
    return state


@dataclasses.dataclass(frozen=True)
class _WeightLayout:
    """Where TFF's trainable / non-trainable lists sit in Keras' ``get_weights()``."""

    trainable: tuple[int, ...]
    non_trainable: tuple[int, ...]

    @classmethod
    def of(cls, model: keras.Model) -> _WeightLayout:
        position = {id(v): i for i, v in enumerate(model.weights)}
        layout = cls(
            trainable=tuple(position[id(v)] for v in model.trainable_weights),
            non_trainable=tuple(position[id(v)] for v in model.non_trainable_weights),
        )
        if sorted(layout.trainable + layout.non_trainable) != list(range(len(position))):
            raise ModelError(
                f"fit_federated: the model {model.name!r} lists some weights twice or "
                f"outside its trainable/non-trainable weights; TFF cannot map them."
            )
        return layout

    def to_tff(self, weights: Sequence[np.ndarray]) -> Any:
        return tff.learning.models.ModelWeights(
            trainable=[np.asarray(weights[i]) for i in self.trainable],
            non_trainable=[np.asarray(weights[i]) for i in self.non_trainable],
        )

    def to_keras(self, model_weights: Any) -> list[np.ndarray]:
        weights: list[Any] = [None] * (len(self.trainable) + len(self.non_trainable))
        for i, w in zip(self.trainable, model_weights.trainable):
            weights[i] = np.asarray(w)
        for i, w in zip(self.non_trainable, model_weights.non_trainable):
            weights[i] = np.asarray(w)
        return weights


def _capped(dataset: tf.data.Dataset, max_steps: int | None) -> tf.data.Dataset:
    """The first ``max_steps`` batches (a step cap or a straggler's partial work)."""
    return dataset if max_steps is None else dataset.take(max_steps)
