"""Epsilon of a DP-FedAvg run, from dp-accounting (nothing of it rewritten here).

Each round is one sampled Gaussian mechanism on the clients: with Poisson
sampling a ``PoissonSampledDpEvent`` under the add-or-remove-one relation; with
uniform sampling of a fixed number of clients a
``SampledWithoutReplacementDpEvent`` under replace-one. ``rounds`` rounds are
that event self-composed, so a resumed run's epsilon continues from its round
count alone.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import TYPE_CHECKING

from kerasfed._compat import import_optional
from kerasfed.federated.aggregators._base import AggregatorError

if TYPE_CHECKING:
    import dp_accounting


def _dp_accounting() -> ModuleType:
    # Imported when DP accounting is asked for, not with fit_federated: dp-accounting is
    # optional (the `tensorflow` extra brings it; an installed TensorFlow may lack it).
    return import_optional("dp_accounting", needed_for="DPMean's privacy accounting (epsilon)")


def round_event(noise_multiplier: float, *, sampling: str, num_clients: int,
                clients_per_round: int) -> tuple[dp_accounting.DpEvent, object]:
    """(one round's DpEvent, its neighbouring relation)."""
    dp_accounting = _dp_accounting()
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    relation = dp_accounting.NeighboringRelation
    if sampling == "poisson":
        return (dp_accounting.PoissonSampledDpEvent(clients_per_round / num_clients, gaussian),
                relation.ADD_OR_REMOVE_ONE)
    return (dp_accounting.SampledWithoutReplacementDpEvent(num_clients, clients_per_round,
                                                           gaussian),
            relation.REPLACE_ONE)


def make_accountant(name: str, relation: object) -> dp_accounting.PrivacyAccountant:
    dp_accounting = _dp_accounting()
    if name == "pld":
        return dp_accounting.pld.PLDAccountant(neighboring_relation=relation)
    return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)


def check_supported(name: str, *, sampling: str, noise_multiplier: float) -> None:
    """Raises unless ``name`` can account for this sampling (checked before training)."""
    event, relation = round_event(max(noise_multiplier, 1.0), sampling=sampling,
                                  num_clients=10, clients_per_round=2)
    if not make_accountant(name, relation).supports(event):
        raise AggregatorError(
            f"DPMean: accountant={name!r} cannot account for client_sampling={sampling!r} "
            f"in dp-accounting. Use accountant='rdp', or client_sampling='poisson' (which "
            f"the PLD accountant supports)."
        )


def epsilon(noise_multiplier: float, rounds: int, *, delta: float, sampling: str,
            num_clients: int, clients_per_round: int, accountant: str = "rdp") -> float:
    """Epsilon after ``rounds`` rounds, at ``delta``; inf without noise."""
    if noise_multiplier == 0:
        return float("inf")
    event, relation = round_event(noise_multiplier, sampling=sampling,
                                  num_clients=num_clients, clients_per_round=clients_per_round)
    account = make_accountant(accountant, relation)
    dp_accounting = _dp_accounting()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # dp-accounting 0.5 warns about orders it skips
    try:
        account.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
        return float(account.get_epsilon(delta))
    finally:
        absl.setLevel(level)
