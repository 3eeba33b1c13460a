"""The errors raised for clients' data that kerasfed cannot use."""

from __future__ import annotations


class ClientDataError(ValueError):
    """Clients' data cannot be used for training; the message names the client."""


class ClientDataTypeError(TypeError):
    """Clients' data was passed as a type kerasfed does not accept."""
