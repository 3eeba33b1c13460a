"""Metrics per client and their spread over the clients of a round.

A pooled metric (``fed_eval_accuracy``: all held-out examples together) hides a
model that is bad for a tenth of its clients; the spread over clients shows it.
``spread`` turns each client's values into the quantile keys ``fit_federated``
adds to ``History`` beside the pooled value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: The quantile keys' suffixes and the percentiles they are (``numpy.percentile``'s
#: default, linear interpolation).
QUANTILES = (("min", 0.0), ("p10", 10.0), ("p50", 50.0), ("p90", 90.0), ("max", 100.0))


def spread(prefix: str, per_client: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The quantiles over clients of each metric, unweighted (every client counts once).

    Args:
      prefix: Put before each metric's name, e.g. ``"fed_eval_"``.
      per_client: ``{client_id: {metric: value}}``; every client has the same metrics.

    Returns:
      ``{f"{prefix}{metric}_{q}": value}`` for ``q`` in min, p10, p50, p90, max
      (empty without clients).

    Example:
      >>> spread("fed_eval_", {"a": {"loss": 1.0}, "b": {"loss": 3.0}})["fed_eval_loss_p50"]
      2.0
    """
    if not per_client:
        return {}
    names = list(next(iter(per_client.values())))
    out: dict[str, float] = {}
    for name in names:
        values = np.asarray([float(m[name]) for m in per_client.values()], np.float64)
        for suffix, q in QUANTILES:
            out[f"{prefix}{name}_{suffix}"] = float(np.percentile(values, q))
    return out
