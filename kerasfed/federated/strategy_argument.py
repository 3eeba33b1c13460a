"""``fit_federated(strategy=...)``: the check, and agreement between workers.

The strategy is resolved by the same code as ``fit_distributed``'s
(``kerasfed.distributed.strategies``); the native engine then divides each round's
clients among its replicas (``replicas.py``). The TFF engine runs in one host's
TFF worker process and takes no strategy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed.distributed.strategies import StrategyError, check_strategy, get_strategy
from kerasfed.federated.replicas import Replicas

_CALLER = "fit_federated"

# What the replica collectives (ReplicaContext.all_reduce / all_gather) run on.
_SUPPORTED = (
    tf.distribute.MirroredStrategy,
    tf.distribute.MultiWorkerMirroredStrategy,
    tf.distribute.OneDeviceStrategy,
)


def engine_for_strategy(engine: Any, strategy: Any) -> Any:
    """The engine ``"auto"`` means when a strategy is asked for: the native one."""
    if strategy is not None and isinstance(engine, str) and engine.lower() == "auto":
        return "native"
    return engine


def resolve_replicas(strategy: Any, engine: str) -> Replicas | None:
    """The ``Replicas`` of ``strategy`` (None: no strategy, one process).

    Raises:
      StrategyError: ``strategy`` with the TFF engine, an unknown name, or a
        strategy whose replicas cannot exchange updates (TPU, parameter servers).
      StrategyInitError, TFConfigError: as ``kerasfed.get_strategy``.
    """
    if strategy is None:
        return None
    if engine == "tff":
        raise StrategyError(
            f"{_CALLER}: engine='tff' runs every client in one host's TFF worker process "
            f"and cannot spread rounds over a tf.distribute strategy. Received: "
            f"strategy={strategy!r}. Use engine='native' (the default when a strategy is "
            f"given), or drop `strategy`."
        )
    if isinstance(strategy, tf.distribute.Strategy):
        # Taken as it is: fit_federated never calls Model.fit, so a plain
        # MultiWorkerMirroredStrategy under Keras 3 (which fit_distributed refuses
        # for keras#20585) works here.
        instance = strategy
    else:
        check_strategy(strategy)
        instance = get_strategy(strategy)
    default = not tf.distribute.has_strategy() and instance is tf.distribute.get_strategy()
    if not default and not isinstance(instance, _SUPPORTED):
        raise StrategyError(
            f"{_CALLER}: strategy={type(instance).__name__} is not supported; rounds are "
            f"spread over MirroredStrategy ('mirrored'), MultiWorkerMirroredStrategy "
            f"('multi_worker'), OneDeviceStrategy or the default strategy. Pass one of "
            f"those, or strategy=None."
        )
    return Replicas(None if default else instance)


def agree_between_workers(replicas: Replicas | None, *, seed: int,
                          rounds_completed: int, checkpoint_dir: str | None) -> int:
    """The chief's seed, after checking that every worker resumes the same round.

    Every worker must start from the same server state. Each reads
    ``checkpoint_dir`` itself, so that directory must be one all of them see (the
    same path on one host, or shared storage across hosts).

    Raises:
      StrategyError: The workers found different checkpoints.
    """
    if replicas is None or replicas.workers == 1:
        return seed
    mine = np.array([rounds_completed, seed], np.int64)
    local = [tf.constant(mine[None])] * len(replicas.devices)
    everyone = replicas.all_gather(local).numpy()[:: len(replicas.devices)]
    rounds = everyone[:, 0].tolist()
    if len(set(rounds)) > 1:
        raise StrategyError(
            f"{_CALLER}: the workers would resume from different rounds {rounds} (worker "
            f"order): each reads checkpoint_dir={checkpoint_dir!r} itself, so it must be a "
            f"directory every worker sees (shared storage when the workers are on several "
            f"hosts)."
        )
    return int(everyone[0, 1])
