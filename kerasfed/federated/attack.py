"""Simulated malicious clients, to measure how well an aggregator holds up.

``Attack(kind, fraction)`` makes ``round(fraction * num_clients)`` clients,
drawn once from the run's seed, malicious for the whole run:

- ``"sign_flip"``: sends ``-scale`` times its honest update;
- ``"scale"``: sends ``scale`` times its honest update;
- ``"gaussian"``: sends a random direction with ``scale`` times the honest norm;
- ``"label_flip"``: trains honestly on wrong labels (class ``c`` becomes
  ``num_classes - 1 - c``; one-hot labels reversed; binary labels ``1 - y``).

The update attacks act on the native engine's collected updates, before the
aggregation chain (so ``ClipNorm`` and ``Zeroing`` act as server-side defences);
label flipping changes the attackers' data, so it runs on both engines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from kerasfed.federated.aggregators._base import AggregatorError, check_number

ATTACK_KINDS = ("sign_flip", "scale", "gaussian", "label_flip")


@dataclasses.dataclass(frozen=True)
class Attack:
    """A seeded fraction of malicious clients.

    Attributes:
      kind: One of ``"sign_flip"``, ``"scale"``, ``"gaussian"``, ``"label_flip"``.
      fraction: Share of all clients that attack, in (0, 1).
      scale: Factor of the update attacks (default 1.0).

    Example:
      >>> sorted(Attack("sign_flip", 0.5).attackers(["a", "b", "c", "d"], seed=0))
      ['b', 'c']
    """

    kind: str
    fraction: float
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise AggregatorError(
                f"Attack: expected `kind` to be one of {list(ATTACK_KINDS)}. Received: "
                f"kind={self.kind!r}."
            )
        check_number("Attack", "fraction", self.fraction, low=0.0, high=1.0,
                     low_open=True, high_open=True)
        check_number("Attack", "scale", self.scale, low=0.0)

    @property
    def on_updates(self) -> bool:
        return self.kind != "label_flip"

    def attackers(self, client_ids: Sequence[str], seed: int) -> frozenset[str]:
        """The malicious clients: a fixed draw from ``seed``."""
        ids = list(client_ids)
        count = int(round(self.fraction * len(ids)))
        rng = np.random.default_rng([seed, 0xA77ACC])
        return frozenset(ids[i] for i in rng.choice(len(ids), size=count, replace=False))

    def corrupt(self, updates: np.ndarray, malicious: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
        """``updates`` with the rows where ``malicious`` replaced by the attack's."""
        out = updates.copy()
        rows = np.flatnonzero(malicious)
        if not len(rows):
            return out
        if self.kind == "sign_flip":
            out[rows] = -self.scale * updates[rows]
        elif self.kind == "scale":
            out[rows] = self.scale * updates[rows]
        elif self.kind == "gaussian":
            noise = rng.standard_normal((len(rows), updates.shape[1]))
            norms = np.linalg.norm(updates[rows].astype(np.float64), axis=1, keepdims=True)
            unit = noise / np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-30)
            out[rows] = (unit * norms * self.scale).astype(updates.dtype)
        return out


def flip_labels(y: np.ndarray, *, num_classes: int, sparse: bool) -> np.ndarray:
    """Label flipping: class ``c`` -> ``num_classes - 1 - c`` (reversed one-hot)."""
    if not sparse:
        return y[..., ::-1].copy()
    if np.issubdtype(y.dtype, np.floating) and num_classes == 2:
        return (1 - y).astype(y.dtype)
    return (num_classes - 1 - y).astype(y.dtype)
