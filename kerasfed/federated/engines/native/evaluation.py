"""Federated evaluation on the native engine: the global model over held-out clients.

The clients' batches run in compiled loops over their concatenated data, about
``_EVAL_GROUP_BYTES`` per call (bounded memory for many clients), each client's
examples cut into batches as TFF batches them (its last one partial). Under
several workers each evaluates its share and the sums are added.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from kerasfed.federated.clients.structure import nbytes, num_rows
from kerasfed.federated.engines.base import ClientRound
from kerasfed.federated.engines.native import forward as fwd
from kerasfed.federated.output_parts import update_metrics

# 200 clients of 60 rows, batch 10, the 2NN's first layer, TF 2.21: 0.59 s per
# evaluation with a call per batch, 0.42 s with a call per client, 0.30 s now.
_EVAL_GROUP_BYTES = 64 << 20


class FederatedEvaluation:
    """Loss and compiled metrics of a model over many clients' examples.

    Args:
      model: The Keras model (its variables are set to the weights evaluated).
      loss: The per-example loss (``CompiledParts.loss_per_example()``).
      flatten: The model's outputs in ``OutputLayout`` order.
      metrics: Fresh Keras metric objects (reset per evaluation).
      batch_size: The clients' batch size.
      replicas: The run's ``Replicas``.
    """

    def __init__(self, model, loss, flatten, metrics: list, batch_size: int, replicas):
        self._model = model
        self._loss = loss
        self._flatten = flatten
        self.metrics = metrics
        self._batch_size = batch_size
        self._replicas = replicas
        self._batches = tf.function(self._batches_fn, reduce_retracing=True)

    def _batch_fn(self, x, y, w=None):
        pred = self._flatten(self._model(fwd.keras_inputs(x), training=False))
        if not tf.nest.is_nested(y):
            y = fwd.match_rank(y, pred)
        per = self._loss(y, pred, sample_weight=w)
        first = tf.nest.flatten(pred)[0]
        update_metrics(self.metrics, y, pred, None, w)
        count = tf.cast(tf.shape(first)[0], per.dtype)
        elements = tf.cast(tf.size(per), per.dtype) / tf.maximum(count, 1.0)
        if per.shape.rank == 0:
            return per * count
        return tf.reduce_sum(per) / elements

    def _batches_fn(self, x, y, w, starts, ends):
        # Many clients' batches in one compiled loop: rows starts[i]:ends[i] are
        # one batch of one client.
        total = tf.zeros((), tf.float64)
        for i in tf.range(tf.shape(starts)[0]):
            rows = slice(starts[i], ends[i])
            cut = lambda t, rows=rows: t[rows]  # noqa: E731
            total += tf.cast(self._batch_fn(
                tf.nest.map_structure(cut, x), tf.nest.map_structure(cut, y),
                None if w is None else w[rows]), tf.float64)
        return total

    @staticmethod
    def _groups(clients: Sequence[ClientRound]):
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

    def __call__(self, weights: list, clients: Sequence[ClientRound]) -> dict[str, float]:
        self._model.set_weights(weights)
        for metric in self.metrics:
            metric.reset_state()
        replicas = self._replicas
        if replicas.workers > 1:  # each worker evaluates its share; the sums are added
            shares = replicas.split([num_rows(c.x) for c in clients])
            clients = [clients[i] for i in replicas.worker_share(shares)]
        sums = []
        joined = lambda *parts: tf.constant(np.concatenate(parts))  # noqa: E731
        batch = self._batch_size
        for group in self._groups(clients):
            sizes = [num_rows(c.x) for c in group]
            offsets = np.cumsum([0] + sizes)
            starts = np.concatenate([np.arange(o, o + n, batch) for o, n in zip(offsets, sizes)])
            ends = np.minimum(starts + batch,
                              np.repeat(offsets[1:], [-(-n // batch) for n in sizes]))
            sums.append(self._batches(
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
                                for m in self.metrics]}
            nothing = tf.nest.map_structure(tf.zeros_like, mine)
            summed = replicas.all_reduce([mine] + [nothing] * (len(replicas.devices) - 1))
            loss_sum, total = float(summed["loss"]), int(summed["total"])
            for metric, values in zip(self.metrics, summed["metrics"]):
                for v, value in zip(metric.variables, values):
                    v.assign(value)
        results = {"loss": loss_sum / max(total, 1)}
        results.update((m.name, float(m.result())) for m in self.metrics)
        return results
