"""Client-level differentially private mean: DP-FedAvg's aggregation (McMahan,
Ramage, Talwar, Zhang 2018, "Learning Differentially Private Recurrent Language
Models", ICLR).

Each update is clipped to L2 norm ``clip_norm``, the clipped updates are summed,
Gaussian noise of std ``noise_multiplier * clip_norm`` is added to the sum, and
the result is divided by the *expected* number of clients per round (a fixed
denominator, so that one client's presence moves the mean by at most
``clip_norm / expected``). With ``target_quantile`` the clip norm adapts to that
quantile of the norms (Andrew et al. 2021), from a noised count of unclipped
updates; part of the privacy budget then goes to that count, exactly as TFF's
``DifferentiallyPrivateFactory.gaussian_adaptive`` splits it (which the TFF
engine uses; ``gaussian_fixed`` for a fixed norm). Epsilon is computed with
dp-accounting (``accounting.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import (
    AggregatorError,
    Combiner,
    RoundContext,
    State,
    check_number,
    l2_norms,
    scale_to_norm,
)
from kerasfed.federated.aggregators.clip_norm import next_clip_norm

ACCOUNTANTS = ("rdp", "pld")


@dataclasses.dataclass(frozen=True)
class DPMean(Combiner):
    """Clipped, noised sum of the updates over the expected number of clients.

    Attributes:
      noise_multiplier: Noise std over the clip norm (>= 0; 0 adds no noise and
        gives no privacy).
      clip_norm: The L2 clip norm (> 0); with ``target_quantile`` the initial one.
      target_quantile: None (fixed clip), or the fraction of updates to leave
        unclipped, in (0, 1) (Andrew et al. recommend 0.5).
      delta: The delta of the reported (epsilon, delta); None (default) means
        ``min(1e-5, 1 / num_clients**1.1)``. Kept in ``History`` as ``dp_delta``.
      accountant: ``"rdp"`` (default; Renyi DP) or ``"pld"`` (privacy loss
        distributions: tighter, Poisson sampling only), both from dp-accounting.
      learning_rate: Step of the adaptive clip norm (default 0.2, as TFF's).
      clipped_count_stddev: Noise std of the adaptive clip's count (default, as
        TFF: 0.05 times the expected clients per round).

    Example:
      >>> DPMean(noise_multiplier=1.0, clip_norm=0.5).adaptive
      False
    """

    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    target_quantile: float | None = None
    delta: float | None = None
    accountant: str = "rdp"
    learning_rate: float = 0.2
    clipped_count_stddev: float | None = None
    name: ClassVar[str] = "dp_mean"

    def __post_init__(self) -> None:
        owner = "DPMean"
        check_number(owner, "noise_multiplier", self.noise_multiplier, low=0.0)
        check_number(owner, "clip_norm", self.clip_norm, low=0.0, low_open=True)
        if self.target_quantile is not None:
            check_number(owner, "target_quantile", self.target_quantile, low=0.0, high=1.0,
                         low_open=True, high_open=True)
        if self.delta is not None:
            check_number(owner, "delta", self.delta, low=0.0, high=1.0, low_open=True,
                         high_open=True)
        if self.accountant not in ACCOUNTANTS:
            raise AggregatorError(
                f"{owner}: expected `accountant` to be one of {list(ACCOUNTANTS)}. Received: "
                f"accountant={self.accountant!r}."
            )
        check_number(owner, "learning_rate", self.learning_rate, low=0.0)
        if self.clipped_count_stddev is not None:
            check_number(owner, "clipped_count_stddev", self.clipped_count_stddev, low=0.0)

    @property
    def adaptive(self) -> bool:
        return self.target_quantile is not None

    def noise_parameters(self, expected_clients: float) -> tuple[float, float]:
        """(noise multiplier of the sum, noise std of the clip count), as TFF's
        ``adaptive_clip_noise_params``: with adaptive clipping both noises together
        give the privacy of ``noise_multiplier``."""
        if not self.adaptive:
            return float(self.noise_multiplier), 0.0
        count_std = self.clipped_count_stddev
        if self.noise_multiplier == 0:
            return 0.0, float(count_std or 0.0)
        if count_std is None:
            count_std = 0.05 * expected_clients
        if self.noise_multiplier >= 2 * count_std:
            raise AggregatorError(
                f"DPMean: clipped_count_stddev={count_std} (default 0.05 x the expected "
                f"clients per round, {expected_clients}) is too small for "
                f"noise_multiplier={self.noise_multiplier} with adaptive clipping: it "
                f"must exceed noise_multiplier / 2. Raise `clipped_count_stddev` or the "
                f"clients per round, lower `noise_multiplier`, or use a fixed clip "
                f"(target_quantile=None)."
            )
        value = (self.noise_multiplier**-2 - (2 * count_std) ** -2) ** -0.5
        return float(value), float(count_std)

    def initial_state(self) -> State:
        return {"clip_norm": np.float64(self.clip_norm)} if self.adaptive else {}

    def combine(self, updates: np.ndarray, context: RoundContext,
                state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        expected = float(context.expected_clients)
        clip = float(state["clip_norm"]) if self.adaptive else float(self.clip_norm)
        value_noise, count_std = self.noise_parameters(expected)
        rng = context.rng("dp_noise")
        clipped, was_clipped = scale_to_norm(updates, clip)
        total = clipped.sum(axis=0, dtype=np.float64)
        noise_std = value_noise * clip
        if noise_std > 0:
            total = total + rng.normal(0.0, noise_std, size=total.shape)
        mean = (total / expected).astype(updates.dtype)
        logs = {
            "clip_norm": clip,
            "clipped_fraction": float(was_clipped.mean()) if len(updates) else 0.0,
            "noise_std": noise_std / expected,
        }
        if self.adaptive:
            # TensorFlow Privacy's QuantileEstimatorQuery: each client reports
            # (norm <= clip) - 0.5; the noised sum over the expected clients, + 0.5.
            below = float(np.sum((l2_norms(updates) <= clip) - 0.5))
            if count_std > 0:
                below += float(rng.normal(0.0, count_std))
            unclipped = below / expected + 0.5
            state = {"clip_norm": np.float64(next_clip_norm(
                clip, unclipped, target_quantile=self.target_quantile,
                learning_rate=self.learning_rate))}
        return mean, state, logs

    def default_delta(self, num_clients: int) -> float:
        return float(self.delta) if self.delta is not None else min(
            1e-5, 1.0 / math.pow(num_clients, 1.1))
