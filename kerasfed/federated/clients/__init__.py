"""Clients' in-memory data for federated simulation: container, conversion, checks, sampling.

A :class:`ClientData` maps client ids to ``(x, y)`` numpy arrays;
:func:`as_client_data` builds one from any accepted input, and
:func:`sample_clients`, :func:`client_shuffle_seed` and :func:`epoch_orders`
fix which clients train in a round and the order of their examples.
"""

from __future__ import annotations

from kerasfed.federated.clients.arguments import check_int
from kerasfed.federated.clients.container import ClientData
from kerasfed.federated.clients.conversion import KNOWN_KEY_PAIRS, as_client_data
from kerasfed.federated.clients.errors import ClientDataError, ClientDataTypeError
from kerasfed.federated.clients.on_disk import write_client_data
from kerasfed.federated.clients.sampling import client_shuffle_seed, epoch_orders, sample_clients

__all__ = [
    "KNOWN_KEY_PAIRS",
    "ClientData",
    "ClientDataError",
    "ClientDataTypeError",
    "as_client_data",
    "check_int",
    "client_shuffle_seed",
    "epoch_orders",
    "sample_clients",
    "write_client_data",
]
