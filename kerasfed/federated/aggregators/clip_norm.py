"""L2 clipping of each client's update: fixed, or adaptive to a quantile of the norms.

Adaptive clipping follows Andrew, Thakkar, McMahan, Ramaswamy (2021),
"Differentially Private Learning with Adaptive Clipping", NeurIPS, as TFF and
TensorFlow Privacy implement it: each round the updates are clipped to the
current norm ``C``; then, with ``b`` the fraction of updates whose norm was at
most ``C``, ``C <- C * exp(-learning_rate * (b - target_quantile))``. On the
TFF engine this is ``tff.aggregators.clipping_factory`` (adaptive:
``PrivateQuantileEstimationProcess.no_noise``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from kerasfed.federated.aggregators._base import (
    RoundContext,
    State,
    Transform,
    check_number,
    l2_norms,
    scale_to_norm,
)


def next_clip_norm(clip: float, unclipped: float, *, target_quantile: float,
                   learning_rate: float) -> float:
    """Andrew et al.'s geometric step of the clip norm (``unclipped`` in [0, 1])."""
    unclipped = min(1.0, max(0.0, unclipped))
    return float(clip * np.exp(-learning_rate * (unclipped - target_quantile)))


@dataclasses.dataclass(frozen=True)
class ClipNorm(Transform):
    """Scales every update with L2 norm above ``clip_norm`` down to it.

    Attributes:
      clip_norm: The clip norm (> 0); with ``target_quantile`` the initial one.
      target_quantile: None (default: fixed clipping), or the fraction of updates
        to leave unclipped, in (0, 1): the norm then adapts every round.
      learning_rate: Step of the adaptive norm (default 0.2, as TFF's).

    Example:
      >>> ClipNorm(1.0).adaptive, ClipNorm(0.1, target_quantile=0.5).adaptive
      (False, True)
    """

    clip_norm: float = 1.0
    target_quantile: float | None = None
    learning_rate: float = 0.2
    name: ClassVar[str] = "clip_norm"

    def __post_init__(self) -> None:
        check_number("ClipNorm", "clip_norm", self.clip_norm, low=0.0, low_open=True)
        if self.target_quantile is not None:
            check_number("ClipNorm", "target_quantile", self.target_quantile,
                         low=0.0, high=1.0, low_open=True, high_open=True)
        check_number("ClipNorm", "learning_rate", self.learning_rate, low=0.0)

    @property
    def adaptive(self) -> bool:
        return self.target_quantile is not None

    def initial_state(self) -> State:
        return {"clip_norm": np.float64(self.clip_norm)} if self.adaptive else {}

    def apply(self, updates: np.ndarray, context: RoundContext,
              state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        clip = float(state["clip_norm"]) if self.adaptive else float(self.clip_norm)
        clipped, was_clipped = scale_to_norm(updates, clip)
        logs = {"clip_norm": clip, "clipped_fraction": float(was_clipped.mean())
                if len(was_clipped) else 0.0}
        if self.adaptive and len(updates):
            unclipped = float(np.mean(l2_norms(updates) <= clip))
            state = {"clip_norm": np.float64(next_clip_norm(
                clip, unclipped, target_quantile=self.target_quantile,
                learning_rate=self.learning_rate))}
        return clipped, state, logs
