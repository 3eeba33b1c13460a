"""What every aggregator is: a small frozen value of settings, plus its arithmetic.

A round's client updates reach the server as one float array ``(clients,
values)`` (each client's update flattened). A chain of aggregators turns them
into the one update the server optimizer applies: first the *transforms*, which
act on each client's update alone (clipping, zeroing, quantization,
sparsification: what a client would do before sending), then one *combiner*,
which makes one vector of many (the mean, a robust statistic, a private or a
secure sum). The arithmetic is numpy on those arrays, so it is the same for
every engine that collects the updates (the native engine); the TFF engine
translates the aggregators TFF has into ``tff.aggregators`` factories instead.
"""

from __future__ import annotations

import abc
import dataclasses
import zlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from kerasfed.errors import (  # noqa: F401  (defined with the family)
    AggregatorError,
    AggregatorTypeError,
)

# Aggregator state: named arrays, kept between rounds and in checkpoints.
State = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class RoundContext:
    """What an aggregator may know about the round beyond the updates.

    Attributes:
      cids: The round's client ids, one per row of the updates.
      weights: Each client's weight in a weighted mean (examples, or ones).
      expected_clients: Clients a round is meant to have (``clients_per_round``;
        with Poisson sampling its expectation): DP's denominator.
      seed, round_num: Every random draw comes from ``(seed, round_num, name)``,
        so a resumed run draws the same numbers.
      client_states: The run's ``ClientStateStore`` (per-client state, such as
        ``TopK``'s residuals), or None where there is none.
      step: The chain step's prefix (``"1/"``), set by ``Chain.run``: it names
        the step's tables, so two steps of one kind keep apart.
      dropped: Clients sampled this round that dropped out after the masks were
        agreed (they never report): ``SecureSum`` removes their pairwise masks as
        SecAgg's unmasking does.
    """

    cids: Sequence[str]
    weights: np.ndarray
    expected_clients: int
    seed: int
    round_num: int
    client_states: Any = None
    step: str = ""
    dropped: Sequence[str] = ()

    def rng(self, name: str) -> np.random.Generator:
        """The round's generator for ``name`` (e.g. ``"quantize"``)."""
        return np.random.default_rng([self.seed, self.round_num, zlib.crc32(name.encode())])

    def client_table(self, owner: str, name: str, template: Sequence[np.ndarray]) -> Any:
        """The step's per-client table ``name`` (``ClientStateStore.table``).

        Raises:
          AggregatorError: The round has no client state store.
        """
        if self.client_states is None:
            raise AggregatorError(
                f"{owner} keeps state for each client, and this round has no client state "
                f"store. Pass `client_states=kerasfed.federated.client_state.ClientStateStore()` "
                f"to RoundContext (fit_federated makes one per run)."
            )
        return self.client_states.table(self.step + name, template)


class Aggregator(abc.ABC):
    """A step of the aggregation chain (a frozen dataclass of its settings)."""

    #: The name used in strings and messages, e.g. ``"median"``.
    name: ClassVar[str]

    def initial_state(self) -> State:
        """State kept between rounds (adaptive clip norm, error feedback)."""
        return {}

    def update_bytes(self, num_values: int, clients: int) -> int:
        """Bytes one client sends for an update of ``num_values`` float32 values in
        a round of ``clients`` clients."""
        return 4 * num_values


class Transform(Aggregator):
    """Acts on each client's update alone, before the combiner."""

    @abc.abstractmethod
    def apply(self, updates: np.ndarray, context: RoundContext,
              state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        """Returns (new updates, new state, per-round logs)."""


class Combiner(Aggregator):
    """Makes one update of many: the last step of a chain."""

    #: Whether the combiner uses the algorithm's client weights (the mean does;
    #: robust and private combiners count every client once).
    weighted: ClassVar[bool] = False

    @abc.abstractmethod
    def combine(self, updates: np.ndarray, context: RoundContext,
                state: State) -> tuple[np.ndarray, State, dict[str, float]]:
        """Returns (the combined update, new state, per-round logs)."""

    def min_clients(self) -> int:
        """The fewest clients a round must have (Krum needs n > 2f + 2)."""
        return 1


def check_number(owner: str, field: str, value: Any, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False) -> None:
    """Raises unless ``value`` is a number in the stated range."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise AggregatorTypeError(
            f"{owner}: expected `{field}` to be {'an int' if integer else 'a number'}. "
            f"Received: {field}={value!r} of type {type(value).__name__}."
        )
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high or not np.isfinite(value):
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise AggregatorError(
            f"{owner}: expected `{field}` {bounds}. Received: {field}={value!r}."
        )


def check_bool(owner: str, field: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise AggregatorTypeError(
            f"{owner}: expected `{field}` to be True or False. Received: {field}={value!r} "
            f"of type {type(value).__name__}."
        )


def l2_norms(updates: np.ndarray) -> np.ndarray:
    """Each client's update norm, accumulated in float64."""
    return np.sqrt(np.einsum("ij,ij->i", updates, updates, dtype=np.float64))


def scale_to_norm(updates: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Updates with L2 norm above ``bound`` scaled down to it; (clipped, was_clipped)."""
    norms = l2_norms(updates)
    clipped = norms > bound
    factor = np.where(clipped, bound / np.maximum(norms, 1e-30), 1.0)
    return (updates * factor[:, None].astype(updates.dtype)), clipped


# Coordinate-wise combiners sort each coordinate's client values: in blocks of
# columns of about this size, not the whole [clients, weights] array at once, so
# their scratch memory stays bounded (150 clients x 2.0M weights: 1.1 GiB of
# updates, which a whole-array sort copies once more).
_COLUMN_BLOCK_BYTES = 32 << 20


def by_columns(updates: np.ndarray, combine: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``combine`` (a [clients, k] block -> its [k] result) over blocks of columns."""
    n, width = updates.shape
    step = max(1, _COLUMN_BLOCK_BYTES // max(1, n * updates.itemsize))
    out = np.empty(width, updates.dtype)
    for start in range(0, width, step):
        out[start:start + step] = combine(updates[:, start:start + step])
    return out
