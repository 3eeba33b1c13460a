"""What to say when a ``fit_federated`` call does not fit its signature.

Users come from ``model.fit`` and write ``epochs=`` or ``fit_federated(model, x, y)``;
Python's bare ``TypeError`` names neither federated learning's counterparts nor the
fix. ``kerasfed._arguments.checked_call`` raises ``SignatureError`` with these.
"""

from __future__ import annotations

import collections.abc

_PARTITION = (
    "fit_federated trains on clients, not on one (x, y): split the data into clients "
    "with `clients = kerasfed.partition(x, y, num_clients=...)` (scheme='iid' by "
    "default, or 'dirichlet'/'shards' for non-IID clients) and call "
    "`fit_federated(model, clients, rounds=...)`."
)

SIGNATURE_HINTS: dict[str, str] = {
    "epochs": (
        "fit_federated counts training in rounds: use `rounds=` (rounds of federated "
        "training; each round the sampled clients train and the server combines their "
        "updates) and/or `local_epochs=` (epochs each client trains on its own data per "
        "round)."
    ),
    "x": _PARTITION,
    "y": _PARTITION,
    "validation_split": (
        "fit_federated has no validation_split: pass `validation_data=(x_val, y_val)` "
        "(evaluated centrally) or `evaluation_clients=` (held-out clients)."
    ),
    "steps_per_epoch": (
        "each client trains `local_epochs=` passes over its own data per round; "
        "use `rounds=` for the length of training."
    ),
}
"""Unknown keyword -> the fix (``model.fit`` habits that mean something else here)."""


def too_many_positionals(args: tuple) -> str:
    """The fix for a third positional argument: ``fit_federated(model, x, y)`` or ``(model, clients, 10)``."""
    data = args[1] if len(args) > 1 else None
    if hasattr(data, "shape") and not isinstance(data, collections.abc.Mapping):
        return _PARTITION
    return "Pass the arguments after (model, clients) by keyword, e.g. rounds=10."
