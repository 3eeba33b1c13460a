"""Each client's own training metrics, computed beside the round's pooled ones.

The pooled metrics are Keras metric objects that every client's batches update
(one set of variables for the round). A client's own values need a state per
client; keeping one metric object per client would cost a metric update per
client per local step. Most compiled metrics are means of a per-example value
(every metric given by name or function becomes a ``MeanMetricWrapper``; the
per-output loss trackers are ``Mean``\\ s of the output's loss), so a client's
value is a weighted sum over its examples divided by the sum of the weights:
two numbers per client and metric, computed for all clients of a step at once
from the per-example values. Metric objects that are not means of per-example
values (``AUC``, ``Precision``...) are pooled only.

Keras 2's ``Mean`` counts elements and Keras 3's counts samples (after averaging
a sample's elements); with the same number of elements per sample, as every
output has, both are the mean of each sample's element mean, which is what is
computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from kerasfed._compat import keras
from kerasfed.federated.output_parts import OutputMetric, match_rank, per_example


def _inner(metric: Any) -> Any:
    return metric.metric if isinstance(metric, OutputMetric) else metric


def has_client_values(metric: Any) -> bool:
    """Whether ``metric`` is a mean of per-example values (see the module docstring)."""
    if isinstance(metric, OutputMetric) and metric.loss is not None:
        return True
    return isinstance(_inner(metric), keras.metrics.MeanMetricWrapper)


def per_client_names(metrics: Sequence[Any]) -> list[str]:
    """The names of the metrics that have per-client values, in order."""
    return [m.name for m in metrics if has_client_values(m)]


def _values_and_weight(metric: Any, y, pred, weight, sample_weight):
    """One metric's per-example values ([N]) and the weights of its mean ([N])."""
    if isinstance(metric, OutputMetric):
        if metric.index is not None:
            y, pred = y[metric.index], pred[metric.index]
        y = match_rank(y, pred)
        if metric.loss is not None:  # an output's loss tracker: a Mean of its loss
            values = tf.cast(per_example(metric.loss(y, pred)), tf.float32)
            if sample_weight is not None:
                values = values * sample_weight
            return values, weight
        if metric.weighted and sample_weight is not None:
            weight = sample_weight * weight
        inner = metric.metric
    else:
        y, inner = match_rank(y, pred), metric
    # As the wrapper's update_state does (Keras 2 casts both: int labels against
    # float predictions would not compare).
    y, pred = tf.cast(y, inner.dtype), tf.cast(pred, inner.dtype)
    values = inner._fn(y, pred, **inner._fn_kwargs)  # noqa: SLF001  (the wrapper's function)
    return per_example(tf.cast(values, tf.float32)), weight


def client_sums(metrics: Sequence[Any], y, pred, weight, sample_weight=None):
    """``(totals, counts)``, each ``[clients, metrics]``, of one step's batches.

    Args:
      metrics: The round's metric objects (those without per-client values are skipped).
      y, pred: Labels and predictions with a leading client axis, ``[C, B, ...]``
        (structures for several outputs).
      weight: ``[C, B]``: the engine's mask (padding rows and dropped clients 0).
      sample_weight: ``[C, B]`` user sample weights, or None.
    """
    chosen = [m for m in metrics if has_client_values(m)]
    clients = tf.shape(weight)[0]
    if not chosen:
        empty = tf.zeros(tf.stack([clients, 0]), tf.float32)
        return empty, empty
    flat = lambda t: tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))  # noqa: E731
    y_flat, pred_flat = tf.nest.map_structure(flat, y), tf.nest.map_structure(flat, pred)
    w_flat = tf.reshape(weight, [-1])
    sw_flat = None if sample_weight is None else tf.reshape(sample_weight, [-1])
    totals, counts = [], []
    for metric in chosen:
        values, w = _values_and_weight(metric, y_flat, pred_flat, w_flat, sw_flat)
        totals.append(tf.reduce_sum(tf.reshape(values * w, [clients, -1]), axis=1))
        counts.append(tf.reduce_sum(tf.reshape(w, [clients, -1]), axis=1))
    return tf.stack(totals, axis=1), tf.stack(counts, axis=1)


def client_values(names: Sequence[str], loss_sums, examples, totals, counts,
                  cids: Sequence[str], keep: Sequence[bool]) -> dict[str, dict[str, float]]:
    """``{client_id: {"loss": ..., name: ...}}`` for the clients ``keep`` marks."""
    out: dict[str, dict[str, float]] = {}
    for i, (cid, kept) in enumerate(zip(cids, keep)):
        if not kept:
            continue
        n = float(examples[i])
        values = {"loss": float(loss_sums[i]) / n if n else float("nan")}
        for j, name in enumerate(names):
            c = float(counts[i][j])
            values[name] = float(totals[i][j]) / c if c else float("nan")
        out[str(cid)] = values
    return out
