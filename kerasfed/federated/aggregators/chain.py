"""The aggregation chain: ``fit_federated(aggregator=...)`` resolved and checked.

A chain is transforms (each client's update alone, in the order given) then one
combiner. ``resolve_chain`` accepts a name, an aggregator value, or a list of
them, and refuses chains that cannot work before any training starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasfed.federated.aggregators._base import (
    Aggregator,
    AggregatorError,
    AggregatorTypeError,
    Combiner,
    RoundContext,
    State,
    Transform,
)
from kerasfed.federated.aggregators.bulyan import Bulyan
from kerasfed.federated.aggregators.dp_mean import DPMean
from kerasfed.federated.aggregators.krum import Krum
from kerasfed.federated.aggregators.mean import Mean
from kerasfed.federated.aggregators.median import Median
from kerasfed.federated.aggregators.quantize import Quantize
from kerasfed.federated.aggregators.secure_sum import SecureSum
from kerasfed.federated.aggregators.trimmed_mean import TrimmedMean

_NAMES = {
    "mean": Mean, "median": Median, "trimmed_mean": TrimmedMean, "krum": Krum,
    "bulyan": Bulyan, "quantize": Quantize, "secure_sum": SecureSum,
}
AGGREGATOR_NAMES: tuple[str, ...] = tuple(_NAMES)
_VALID = '[kerasfed.ClipNorm(1.0), kerasfed.Quantize(bits=8), "mean"]'


@dataclasses.dataclass(frozen=True)
class Chain:
    """Transforms, then a combiner."""

    transforms: tuple[Transform, ...]
    combiner: Combiner

    @property
    def steps(self) -> tuple[Aggregator, ...]:
        return (*self.transforms, self.combiner)

    @property
    def is_plain_mean(self) -> bool:
        return not self.transforms and isinstance(self.combiner, Mean)

    @property
    def dp(self) -> DPMean | None:
        return self.combiner if isinstance(self.combiner, DPMean) else None

    def describe(self) -> str:
        return " -> ".join(repr(s) for s in self.steps)

    def initial_state(self) -> State:
        state: State = {}
        for i, step in enumerate(self.steps):
            state.update({f"{i}/{k}": v for k, v in step.initial_state().items()})
        return state

    def update_bytes(self, num_values: int, clients: int) -> int:
        """What one client sends: the last step that changes the encoding decides."""
        size = 4 * num_values
        for step in self.steps:
            if type(step).update_bytes is not Aggregator.update_bytes:
                size = step.update_bytes(num_values, clients)
        return size

    def run(self, updates: np.ndarray, context: RoundContext,
            state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        """The combined update of ``updates`` (one row per client), new state, logs."""
        new_state: State = {}
        logs: dict[str, float] = {}
        for i, step in enumerate(self.steps):
            prefix = f"{i}/"
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            step_context = dataclasses.replace(context, step=prefix)
            if isinstance(step, Transform):
                updates, own, step_logs = step.apply(updates, step_context, own)
            else:
                updates, own, step_logs = step.combine(updates, step_context, own)
            new_state.update({prefix + k: v for k, v in own.items()})
            logs.update(step_logs)
        return updates, new_state, logs


def resolve_chain(value: Any) -> Chain:
    """The ``Chain`` that ``fit_federated(aggregator=value)`` means.

    Raises:
      AggregatorError: An unknown name or an invalid chain.
      AggregatorTypeError: Something that is not a name or an aggregator.
    """
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise AggregatorError(
            f"fit_federated: `aggregator` is an empty list. Pass a name such as 'mean', "
            f"an aggregator, or a chain such as {_VALID}."
        )
    steps = [_one(item) for item in items]
    combiners = [s for s in steps if isinstance(s, Combiner)]
    if sum(isinstance(s, DPMean) for s in steps) > 1:
        raise AggregatorError(
            f"fit_federated: the aggregator chain {_show(steps)} applies differential privacy "
            f"twice. Use one DPMean as the combiner, e.g. [kerasfed.Quantize(bits=8), "
            f"kerasfed.DPMean(noise_multiplier=1.0, clip_norm=0.1)]."
        )
    if len(combiners) > 1:
        raise AggregatorError(
            f"fit_federated: the aggregator chain {_show(steps)} has {len(combiners)} "
            f"combiners ({', '.join(c.name for c in combiners)}); a chain has one, last. "
            f"A valid chain: {_VALID}."
        )
    if combiners and not isinstance(steps[-1], Combiner):
        after = [s.name for s in steps[steps.index(combiners[0]) + 1:]]
        raise AggregatorError(
            f"fit_federated: in the aggregator chain {_show(steps)}, {after} come after the "
            f"combiner {combiners[0].name!r}; client-side transforms go first. A valid "
            f"chain: {_VALID}."
        )
    combiner = combiners[0] if combiners else Mean()
    transforms = tuple(s for s in steps if isinstance(s, Transform))
    return Chain(transforms=transforms, combiner=combiner)


def _one(item: Any) -> Aggregator:
    if isinstance(item, Aggregator):
        return item
    if isinstance(item, str):
        make = _NAMES.get(item.lower())
        if make is None:
            raise AggregatorError(
                f"fit_federated: unknown aggregator {item!r}. Expected one of "
                f"{list(AGGREGATOR_NAMES)}, or a value such as kerasfed.ClipNorm(1.0), "
                f"kerasfed.Zeroing(10.0), kerasfed.TopK(0.01), kerasfed.DPMean("
                f"noise_multiplier=1.0, clip_norm=0.1)."
            )
        return make()
    raise AggregatorTypeError(
        f"fit_federated: expected `aggregator` to be a name in {list(AGGREGATOR_NAMES)}, an "
        f"aggregator such as kerasfed.Median(), or a list of them. Received: {item!r} of "
        f"type {type(item).__name__}."
    )


def _show(steps: Sequence[Aggregator]) -> str:
    return "[" + ", ".join(s.name for s in steps) + "]"
