"""The replicas a federated round's clients are divided among (``fit_federated(strategy=...)``).

A ``tf.distribute`` strategy gives the replicas: this process's devices (GPUs, or
logical CPUs) under ``MirroredStrategy``, and those of every worker process under
``MultiWorkerMirroredStrategy``. Each round, every process knows the same sampled
clients (sampling is seeded), so each computes the same division of them
(``split``), trains the clients of its own replicas, and then exchanges results
with the strategy's collectives: ``all_reduce`` sums (the weighted update sums of
a plain mean, metric totals) and ``all_gather`` stacks (every client's update,
for the combiners that need them all). The server update then runs identically
in every process, so every worker holds the same global model.

Without a strategy there is one replica, this process, and both collectives
return the one local value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from kerasfed.distributed.strategies import is_chief, worker_count, worker_rank


class Replicas:
    """The replicas of ``strategy`` (None: this process alone) and their collectives.

    Args:
      strategy: A ``MirroredStrategy``, ``MultiWorkerMirroredStrategy``,
        ``OneDeviceStrategy`` or the default strategy; None for no strategy.
    """

    def __init__(self, strategy: tf.distribute.Strategy | None = None):
        self.strategy = strategy
        if strategy is None:
            self.devices: list[str | None] = [None]
            self.num_replicas = 1
            self.workers, self.rank, self.chief = 1, 0, True
        else:
            self.devices = list(strategy.extended.worker_devices)
            self.num_replicas = int(strategy.num_replicas_in_sync)
            self.workers, self.rank = worker_count(strategy), worker_rank(strategy)
            self.chief = is_chief(strategy)
        # Replica ids are global: worker `rank` holds ids rank*local ... (as
        # tf.distribute numbers them, the chief first).
        self.first = self.rank * len(self.devices)

    @property
    def distributed(self) -> bool:
        """Whether there is more than one replica."""
        return self.num_replicas > 1

    def describe(self) -> str:
        if not self.distributed:
            return "one replica"
        if self.workers > 1:
            return (f"{self.num_replicas} replicas on {self.workers} workers "
                    f"(this is worker {self.rank})")
        return f"{self.num_replicas} replicas ({', '.join(_short(d) for d in self.devices)})"

    # -- dividing the clients ---------------------------------------------------------
    def split(self, sizes: Sequence[int]) -> list[list[int]]:
        """Client indices per replica (global ids), balanced by ``sizes`` (examples).

        Largest client first, each to the replica with the fewest examples so far
        (ties: the lowest id), as pfl-research balances its workers; each replica's
        clients keep the round's order. The same on every worker.
        """
        shares: list[list[int]] = [[] for _ in range(self.num_replicas)]
        load = [0] * self.num_replicas
        for i in sorted(range(len(sizes)), key=lambda i: (-int(sizes[i]), i)):
            r = min(range(self.num_replicas), key=lambda r: (load[r], r))
            shares[r].append(i)
            load[r] += int(sizes[i])
        return [sorted(s) for s in shares]

    def local_shares(self, shares: list[list[int]]) -> list[list[int]]:
        """This process's replicas' part of ``split``'s result, in device order."""
        return shares[self.first:self.first + len(self.devices)]

    def worker_share(self, shares: list[list[int]]) -> list[int]:
        """Every index this process's replicas hold, in order."""
        return sorted(i for share in self.local_shares(shares) for i in share)

    # -- collectives ---------------------------------------------------------------------
    def all_reduce(self, local: Sequence[Any]) -> Any:
        """The sum over all replicas of a nest of tensors (one nest per local replica)."""
        if self.num_replicas == 1:
            return local[0]
        return self._collective(local, lambda ctx, v: ctx.all_reduce(
            tf.distribute.ReduceOp.SUM, v))

    def all_gather(self, local: Sequence[Any]) -> Any:
        """Every replica's nest, leaves concatenated on axis 0 in replica order."""
        if self.num_replicas == 1:
            return local[0]
        return self._collective(local, lambda ctx, v: ctx.all_gather(v, axis=0))

    def _collective(self, local: Sequence[Any], op: Callable) -> Any:
        strategy = self.strategy
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: local[ctx.replica_id_in_sync_group - self.first])

        def step(value):
            # Integer leaves travel as int64, which every collective implementation sums.
            flat = tf.nest.flatten(value)
            dtypes = [t.dtype for t in flat]
            wide = [tf.cast(t, tf.int64) if t.dtype.is_integer else t for t in flat]
            out = op(tf.distribute.get_replica_context(), wide)
            return [tf.cast(t, d) for t, d in zip(out, dtypes)]

        result = strategy.experimental_local_results(strategy.run(step, args=(values,)))[0]
        with tf.device("/cpu:0"):
            result = [tf.identity(t) for t in result]
        return tf.nest.pack_sequence_as(local[0], result)


def _short(device: str | None) -> str:
    return (device or "").rsplit("/device:", 1)[-1]
