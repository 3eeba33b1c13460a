"""The aggregator chain and the attack on a round's gathered client updates.

Used when the round's combiner is not a plain weighted mean, or an attack
corrupts updates: every client's update is a row of one array (the chain's
numpy arithmetic takes it), non-finite rows are zeroed, the attackers' rows
corrupted, and the chain (clipping, DP noise, robust combiners, compression,
secure sums) combines them into the round's update.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from kerasfed.federated.aggregators import Mean, RoundContext
from kerasfed.federated.engines.native.combine import unflatten


class RoundAggregation:
    """Runs ``setup.aggregator`` (a ``Chain``) and ``attack`` on stacked client updates."""

    def __init__(self, chain, attack, setup):
        self.chain = chain
        self.attack = attack
        self._setup = setup
        #: The round's sampled clients that dropped out (set by the engine each round).
        self.dropped: Sequence[str] = ()

    def context(self, cids: Sequence[str], weights, round_num: int) -> RoundContext:
        return RoundContext(cids=list(cids), weights=np.asarray(weights, np.float64),
                            expected_clients=self._setup.expected_clients,
                            seed=self._setup.seed, round_num=round_num,
                            client_states=self._setup.client_states,
                            dropped=tuple(self.dropped))

    def combine(self, aggregator_state: dict, trainable: Sequence[tf.Tensor], stacked,
                weight: tf.Tensor, finite: tf.Tensor, cids: Sequence[str],
                round_num: int) -> tuple[list | None, dict, dict, str | None]:
        """The chain's combined update of the clients' ``stacked`` updates, as (update
        per trainable weight or None to skip, aggregator state, logs, why skipped)."""
        n = len(cids)
        if isinstance(stacked, np.ndarray):  # one replica's rows, already flat (and ours)
            flat = stacked
        else:
            flat = np.concatenate([u.numpy().reshape(n, -1) for u in stacked], axis=1)
        ok = finite.numpy() > 0
        flat[~ok] = 0.0
        if self.attack is not None:
            malicious = np.array([cid in self._setup.attackers for cid in cids]) & ok
            rng = np.random.default_rng([self._setup.seed, round_num, 0xA77ACC])
            flat = self.attack.corrupt(flat, malicious, rng)
        weights = weight.numpy()
        if not isinstance(self.chain.combiner, Mean):
            # Robust, private and secure combiners count each client once, and only
            # the clients whose update is finite.
            if not ok.all():  # (a boolean index copies every row)
                flat, cids = flat[ok], [c for c, k in zip(cids, ok) if k]
            weights = np.ones(len(cids))
            need = self.chain.combiner.min_clients()
            if len(cids) < need and self.chain.dp is None:
                why = (f"{self.chain.combiner!r} needs at least {need} clients with finite "
                       f"updates and the round had {len(cids)}")
                return None, aggregator_state, {}, why
        update, aggregator, logs = self.chain.run(flat, self.context(cids, weights, round_num),
                                                  aggregator_state)
        return unflatten(update, trainable), aggregator, logs, None

    def noise_only(self, aggregator_state: dict, trainable: Sequence[tf.Tensor],
                   round_num: int) -> tuple[list, dict, dict]:
        """DP-FedAvg's round without clients: the chain's noise alone (the privacy
        analysis counts the round)."""
        empty = np.zeros((0, sum(int(np.prod(t.shape)) for t in trainable)), np.float32)
        update, aggregator, logs = self.chain.run(empty, self.context([], [], round_num),
                                                  aggregator_state)
        return unflatten(update, trainable), aggregator, logs
