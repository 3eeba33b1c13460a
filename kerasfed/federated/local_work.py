"""How much each client trains in a round: local epochs (per client) and a step cap.

``fit_federated(local_epochs=...)`` takes a number, or a function of the client
id for unequal work (devices that train more or less); ``local_steps=`` caps a
client's local steps (batches) per round whatever its size. FedNova (Wang et
al. 2020) normalizes the updates of such unequal work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from kerasfed.errors import FederatedArgumentError, FederatedArgumentTypeError

_CALLER = "fit_federated"


@dataclasses.dataclass(frozen=True)
class LocalWork:
    """Each client's local epochs, and the cap on its local steps.

    Attributes:
      epochs: ``{client_id: local epochs}`` of every training client.
      steps: The most local steps a client takes in a round, or None.
      varies: Whether ``local_epochs`` was a function of the client id.
    """

    epochs: dict[str, int]
    steps: int | None = None
    varies: bool = False

    @property
    def max_epochs(self) -> int:
        """The most local epochs of any client (the native engine's padding)."""
        return max(self.epochs.values(), default=1)

    def epochs_of(self, cid: str) -> int:
        return self.epochs[cid]

    def fingerprint(self) -> dict[str, str]:
        """Checkpoint fingerprint entries (none for the defaults, so older ones resume)."""
        entries = {}
        if self.varies:
            digest = hashlib.sha256(json.dumps(sorted(self.epochs.items())).encode())
            entries["local_epochs_by_client"] = digest.hexdigest()[:16]
        if self.steps is not None:
            entries["local_steps"] = repr(self.steps)
        return entries


def check_local_work(local_epochs: Any, local_steps: Any, client_ids: Sequence[str],
                     *, trains_locally: bool) -> LocalWork:
    """``local_epochs`` and ``local_steps``, checked (a function is asked once per client).

    Raises:
      FederatedArgumentError, FederatedArgumentTypeError: A bad value, or a step
        cap for an algorithm whose clients take no local steps.
    """
    varies = callable(local_epochs)
    if varies:
        epochs = {cid: _epochs_of(local_epochs, cid) for cid in client_ids}
    else:
        epochs = dict.fromkeys(client_ids, _positive_int("local_epochs", local_epochs))
    steps = None
    if local_steps is not None:
        steps = _positive_int("local_steps", local_steps)
        if not trains_locally:
            raise FederatedArgumentError(
                f"{_CALLER}: local_steps={local_steps} caps local training steps, and this "
                f"algorithm's clients take none (they compute one gradient of their mean "
                f"loss). Drop local_steps, or pick an algorithm with local training.")
    return LocalWork(epochs=epochs, steps=steps, varies=varies)


def _epochs_of(function: Callable[[str], Any], cid: str) -> int:
    value = function(cid)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise FederatedArgumentError(
            f"{_CALLER}: `local_epochs` is a function of the client id, and it returned "
            f"{value!r} for client {cid!r}; expected an int >= 1 for every client.")
    return int(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kinds = "an int, or a function of the client id returning one" if (
            name == "local_epochs") else "None or an int"
        raise FederatedArgumentTypeError(
            f"{_CALLER}: expected `{name}` to be {kinds}. Received: {name}={value!r} of "
            f"type {type(value).__name__}.")
    if value < 1:
        raise FederatedArgumentError(
            f"{_CALLER}: expected `{name}` to be an int >= 1. Received: {name}={value}.")
    return int(value)
