"""Fine-tuning and evaluating many clients, each with its own weights (native engine).

Two pieces, both in the engine's two forms (``form.py``):

* ``ClientsEvaluation``: the loss and compiled metrics of each of many clients
  at *its own* weights (stacked on a leading client axis). **lockstep**:
  ``tf.vectorized_map`` over the model's stateless forward pass, every client's
  batch at once, padded and masked; **sequential**: one client after another
  (``VariableForward`` models: BatchNormalization under Keras 2, regularizers).
  Evaluation runs the model with ``training=False``, where every layer treats
  examples independently, so the padded rows never change the real ones.
* ``FineTuneEvaluation``: copies of one model fine-tuned on each client's
  fine-tuning part (``client_work.ClientWork``: the engine's own local
  training, padding and masks, with a fresh optimizer state per client), then
  evaluated on each client's test part with ``ClientsEvaluation``, beside the
  model before fine-tuning (the baseline) on the same test parts.

Each client's loss is Keras ``evaluate``'s: the mean per-example loss over its
examples (sample-weighted where given, without regularization terms, as
``fed_eval_loss``); its metrics are fresh Keras metric states per client.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed.federated.algorithms import ClientContext, ClientOutput, FedAvg
from kerasfed.federated.clients.structure import has_strings, num_rows, to_tensors
from kerasfed.federated.engines.base import ClientRound
from kerasfed.federated.engines.native import forward as fwd
from kerasfed.federated.engines.native.chunks import (
    LOCKSTEP_CHUNK_BYTES,
    SEQUENTIAL_CHUNK_BYTES,
    chunk_size,
    default_parallel_clients,
)
from kerasfed.federated.engines.native.client_work import ClientWork
from kerasfed.federated.engines.native.form import FALLBACK, FORM_ERRORS, choose_form
from kerasfed.federated.engines.native.packing import pack_chunk
from kerasfed.federated.output_parts import update_metrics

LOG = logging.getLogger("kerasfed")


@dataclasses.dataclass(frozen=True)
class SplitClient:
    """One evaluation client cut in two.

    Attributes:
      cid: The client id.
      x, y, w: The client's examples (``w``: sample weights or None).
      tune: Indices of the fine-tuning part, in the order it is trained on.
      test: Indices of the test part.
    """

    cid: str
    x: Any
    y: Any
    w: np.ndarray | None
    tune: np.ndarray
    test: np.ndarray


class _KeepWeights(FedAvg):
    """Local training that sends back the trained weights themselves (not a
    delta): a personalized model is read off exactly, without ``w0 + (w - w0)``."""

    def client_end(self, ctx: ClientContext, weights) -> ClientOutput:
        return ClientOutput(update=list(weights), state=list(ctx.state))


def _rows(data: Any, idx: np.ndarray) -> Any:
    return tf.nest.map_structure(lambda a: a[idx], data)


def _stack(tensors: Sequence[tf.Tensor], num: int) -> list[tf.Tensor]:
    """Each tensor repeated ``num`` times on a new leading (client) axis."""
    return [tf.repeat(tf.expand_dims(t, 0), num, axis=0) for t in tensors]


class ClientsEvaluation:
    """Loss and compiled metrics of many clients, each at its own weights.

    Args:
      forward: A ``forward.StatelessForward`` (either form) or
        ``forward.VariableForward`` (sequential only).
      loss: The per-example loss (``CompiledParts.loss_per_example()``).
      flatten: The model's outputs in ``OutputLayout`` order (``layout.flatten``).
      metrics: Fresh Keras metric objects (``[make() for make in parts.metrics]``);
        their state is reset for every client.
      batch_size: Examples per evaluation step (never changes the result).
      lockstep: All clients of a call at once (``tf.vectorized_map``), else one
        after another.

    Call ``evaluation(params, state, clients)``: ``params`` / ``state`` are the
    trainable / non-trainable weights (``forward.trainable`` /
    ``forward.non_trainable`` order), each stacked ``[len(clients), ...]``;
    ``clients`` a sequence of ``(x, y, w)`` (``w`` None or one sample weight per
    row). Returns one ``{"loss": ..., <metric name>: ...}`` dict per client, in
    order (an empty client gets NaN values).
    """

    def __init__(self, forward, *, loss: Any, flatten: Any, metrics: list, batch_size: int,
                 lockstep: bool):
        self.forward = forward
        self.metrics = metrics
        self.batch_size = batch_size
        self.lockstep = lockstep
        self._loss = fwd.batch_loss_fn(loss)
        self._flatten = flatten or (lambda pred: pred)
        for metric in metrics:
            metric.reset_state()
        # Every client's metrics start from these (Keras' reset values).
        self._initial = [[tf.constant(v.numpy()) for v in m.variables] for m in metrics]
        body = self._lockstep if lockstep else self._sequential
        self._run = tf.function(body, reduce_retracing=True)

    @property
    def names(self) -> list[str]:
        return ["loss", *(m.name for m in self.metrics)]

    def __call__(self, params: Sequence[tf.Tensor], state: Sequence[tf.Tensor],
                 clients: Sequence[tuple]) -> list[dict[str, float]]:
        rounds = [ClientRound(cid=str(i), x=x, y=y, order=np.arange(num_rows(x))[None], w=w)
                  for i, (x, y, w) in enumerate(clients)]
        packed = pack_chunk(rounds, batch_size=self.batch_size, num_slots=len(rounds),
                            min_rows=1, min_steps=1)
        loss_sum, values = self._run(
            list(params), list(state), to_tensors(packed.x), to_tensors(packed.y),
            None if packed.w is None else tf.constant(packed.w),
            tf.constant(packed.batches), tf.constant(packed.counts))
        rows = packed.counts.sum(axis=1)
        loss = loss_sum.numpy() / np.where(rows > 0, rows, np.nan)
        values = values.numpy()
        out = []
        for c, n in enumerate(rows):
            result = {"loss": float(loss[c])}
            result.update((m.name, float(values[c, j]) if n else float("nan"))
                          for j, m in enumerate(self.metrics))
            out.append(result)
        return out

    # -- the pieces ------------------------------------------------------------------
    def _predict(self, p, s, x):
        if isinstance(self.forward, fwd.StatelessForward):
            return self.forward.call(p, s, x, training=False)[0]
        self.forward.assign(p, s)
        return self._flatten(self.forward.model(fwd.keras_inputs(x), training=False))

    def _batch_loss(self, y, pred, mask, sw):
        loss_sum, elements = self._loss(y, pred, mask, sw)
        return loss_sum / elements  # the sum of the real rows' per-example losses

    def _reset_metrics(self):
        for metric, initial in zip(self.metrics, self._initial):
            for v, value in zip(metric.variables, initial):
                v.assign(value)

    def _results(self):
        if not self.metrics:
            return tf.zeros([0], tf.float32)
        return tf.stack([tf.cast(tf.reshape(m.result(), []), tf.float32) for m in self.metrics])

    # -- lockstep ----------------------------------------------------------------------
    def _lockstep(self, params, state, x, y, w, batches, counts):
        num = tf.shape(batches)[0]
        width = tf.shape(batches)[2]

        def one(args):
            p, s, xb, yb, mask, *wb = args
            pred = self._predict(p, s, xb)
            return pred, self._batch_loss(yb, pred, mask, wb[0] if wb else None)

        def step_results(step):
            idx = batches[:, step]
            take = lambda t: tf.gather(t, idx, batch_dims=1)  # noqa: E731
            xb, yb = tf.nest.map_structure(take, x), tf.nest.map_structure(take, y)
            mask = tf.sequence_mask(counts[:, step], width, dtype=tf.float32)
            args = (params, state, xb, yb, mask) + (() if w is None else (take(w),))
            pred, ls = tf.vectorized_map(one, args, fallback_to_while_loop=False)
            return pred, tf.cast(ls, tf.float32)

        # The first step outside the loop: it gives the predictions' structure,
        # which the arrays the loop writes into need (there is always one step).
        steps = tf.shape(batches)[1]
        pred, loss_sum = step_results(0)
        ta = tf.nest.map_structure(
            lambda t: tf.TensorArray(t.dtype, size=steps, element_shape=t.shape).write(0, t),
            pred)
        for step in tf.range(1, steps):
            pred, ls = step_results(step)
            loss_sum += ls
            ta = tf.nest.map_structure(lambda a, t, step=step: a.write(step, t), ta, pred)
        # [steps, C, B, ...] -> per client [steps * B, ...], in the batches' order.
        preds = tf.nest.map_structure(lambda a: a.stack(), ta)
        flat_idx = tf.reshape(batches, [num, -1])
        masks = tf.reshape(tf.sequence_mask(counts, width, dtype=tf.float32), [num, -1])
        values = tf.TensorArray(tf.float32, size=num)
        for c in tf.range(num):
            pc = tf.nest.map_structure(
                lambda t: tf.reshape(t[:, c], tf.concat([[-1], tf.shape(t)[3:]], 0)), preds)
            yc = tf.nest.map_structure(lambda t: tf.gather(t[c], flat_idx[c]), y)
            wc = None if w is None else tf.gather(w[c], flat_idx[c])
            self._reset_metrics()
            update_metrics(self.metrics, yc, pc, masks[c], wc)
            values = values.write(c, self._results())
        return loss_sum, values.stack()

    # -- sequential --------------------------------------------------------------------
    def _sequential(self, params, state, x, y, w, batches, counts):
        num = tf.shape(batches)[0]
        loss_ta = tf.TensorArray(tf.float32, size=num)
        values = tf.TensorArray(tf.float32, size=num)
        for c in tf.range(num):
            p = [t[c] for t in params]
            s = [t[c] for t in state]
            self._reset_metrics()
            loss_sum = tf.zeros((), tf.float32)
            n_steps = tf.reduce_sum(tf.cast(counts[c] > 0, tf.int32))
            for step in tf.range(n_steps):
                n = tf.cast(counts[c, step], tf.int32)
                idx = batches[c, step, :n]
                take = lambda t, c=c, idx=idx: tf.gather(t[c], idx)  # noqa: E731
                xb, yb = tf.nest.map_structure(take, x), tf.nest.map_structure(take, y)
                wb = None if w is None else take(w)
                mask = tf.ones([n], tf.float32)
                pred = self._predict(p, s, xb)
                loss_sum += tf.cast(self._batch_loss(yb, pred, mask, wb), tf.float32)
                update_metrics(self.metrics, yb, pred, mask, wb)
            loss_ta = loss_ta.write(c, loss_sum)
            values = values.write(c, self._results())
        return loss_ta.stack(), values.stack()


class FineTuneEvaluation:
    """Each client's personalized (fine-tuned) and baseline metrics on its test part.

    Args:
      model: The compiled Keras model (its variables may be used as scratch by the
        sequential form; the caller restores them).
      loss: The per-example loss (``CompiledParts.loss_per_example()``).
      flatten: The model's outputs in ``OutputLayout`` order, or None.
      metrics: Metric constructors (``CompiledParts.metrics``).
      rule: The fine-tuning update rule (``optimizers.Rule``); its state starts
        afresh for every client.
      batch_size: The fine-tuning batch size (also the evaluation step).
      epochs: Passes over each fine-tuning part.
      form: ``"lockstep"``, ``"lockstep+xla"`` or ``"sequential"``; None
        (default) picks as the engine does (``form.choose_form``), without XLA
        (measured slower here, see docs/personalization.md).
      max_parallel_clients: Clients per compiled call; None picks from memory.
    """

    def __init__(self, model, *, loss: Any, flatten: Any, metrics: Sequence[Any], rule,
                 batch_size: int, epochs: int, form: str | None = None,
                 max_parallel_clients: int | None = None):
        self._model = model
        self._loss = loss
        self._flatten = flatten
        self._metric_makers = list(metrics)
        self._rule = rule
        self._batch_size = batch_size
        self._epochs = epochs
        self._max_parallel = max_parallel_clients
        self._form_settled = False
        self.form, self.why = choose_form(model, form)
        if form is None and self.form == "lockstep+xla":
            # Measured (benchmarks/finetune_forms.py, TF 2.21, 50 clients, 2NN): XLA took 1.35 s
            # per warm call against 1.07 s without, and 47 s against 13 s to compile.
            self.form, self.why = "lockstep", "per-example layers: clients in lockstep"
        self._build(self.form)

    def _build(self, form: str) -> None:
        lockstep = form.startswith("lockstep")
        if lockstep or fwd.StatelessForward.supported(self._model) is None:
            forward = fwd.StatelessForward(self._model, self._loss, self._flatten)
        else:
            forward = fwd.VariableForward(self._model, self._loss, self._flatten)
        self._forward = forward
        self._work = ClientWork(forward, self._rule, algorithm=_KeepWeights(), metrics=[],
                                lockstep=lockstep, jit_compile=form.endswith("+xla"))
        self._evaluation = ClientsEvaluation(
            forward, loss=self._loss, flatten=self._flatten,
            metrics=[make() for make in self._metric_makers], batch_size=self._batch_size,
            lockstep=lockstep)

    @property
    def names(self) -> list[str]:
        """The loss and metric names each client gets (as ``personalized_{name}`` ...)."""
        return self._evaluation.names

    def _chunk(self, clients: Sequence[SplitClient]) -> int:
        if self._max_parallel is not None:
            return self._max_parallel
        rounds = [ClientRound(cid=c.cid, x=c.x, y=c.y, order=np.zeros((1, 0), np.int64))
                  for c in clients]
        size = default_parallel_clients(self._model, rounds, self._batch_size)
        weight_bytes = 4 * sum(int(np.prod(v.shape)) for v in self._forward.trainable)
        cap = LOCKSTEP_CHUNK_BYTES if self.form.startswith("lockstep") else SEQUENTIAL_CHUNK_BYTES
        # The baseline's and the personalized weights are both held: twice the weights.
        return max(1, min(size, cap // max(2 * weight_bytes, 1)))

    def __call__(self, trainable: Sequence[tf.Tensor], non_trainable: Sequence[tf.Tensor],
                 clients: Sequence[SplitClient]) -> dict[str, dict[str, float]]:
        """``{cid: {"personalized_<m>": ..., "baseline_<m>": ...}}`` for ``m`` in
        ``names``, the model at ``trainable`` / ``non_trainable`` (the forward's
        orders) fine-tuned per client."""
        if not clients:
            return {}
        if any(has_strings(c.x) or has_strings(c.y) for c in clients) and (
                self.form.startswith("lockstep")):
            # tf.vectorized_map has no string ops nor lookup tables (as the engine).
            self.form, self.why = "sequential", "string data is processed one client at a time"
            self._build(self.form)
        size = chunk_size(len(clients), self._chunk(clients), 1)
        out: dict[str, dict[str, float]] = {}
        for start in range(0, len(clients), size):
            out.update(self._run_chunk(list(trainable), list(non_trainable),
                                       clients[start:start + size]))
        return out

    def _run_chunk(self, trainable, non_trainable, chunk: Sequence[SplitClient]) -> dict:
        while True:
            try:
                result = self._chunk_results(trainable, non_trainable, chunk)
                self._form_settled = True
                return result
            except FORM_ERRORS as e:
                fallback = None if self._form_settled else FALLBACK.get(self.form)
                if fallback is None:
                    raise
                LOG.warning("kerasfed: fine-tuning evaluation: %s failed (%s: %s); using %s",
                            self.form, type(e).__name__, str(e).splitlines()[0][:200], fallback)
                self.form, self.why = fallback, f"{self.form} failed: {type(e).__name__}"
                self._build(self.form)

    def _chunk_results(self, trainable, non_trainable, chunk: Sequence[SplitClient]) -> dict:
        num = len(chunk)
        tune = [ClientRound(cid=c.cid, x=_rows(c.x, c.tune), y=_rows(c.y, c.tune),
                            order=np.tile(np.arange(len(c.tune)), (self._epochs, 1)),
                            w=None if c.w is None else c.w[c.tune])
                for c in chunk]
        packed = pack_chunk(tune, batch_size=self._batch_size, num_slots=num, min_rows=1)
        out = self._work.run(
            to_tensors(packed.x), to_tensors(packed.y),
            None if packed.w is None else tf.constant(packed.w), tf.constant(packed.batches),
            tf.constant(packed.counts), tf.zeros([num], tf.float32), trainable, non_trainable,
            {}, [], tf.constant(self._rule.learning_rate, tf.float32))
        tests = [(_rows(c.x, c.test), _rows(c.y, c.test), None if c.w is None else c.w[c.test])
                 for c in chunk]
        personalized = self._evaluation(out["update"], out["state"], tests)
        baseline = self._evaluation(_stack(trainable, num), _stack(non_trainable, num), tests)
        return {
            c.cid: {**{f"personalized_{k}": v for k, v in mine.items()},
                    **{f"baseline_{k}": v for k, v in base.items()}}
            for c, mine, base in zip(chunk, personalized, baseline)
        }
