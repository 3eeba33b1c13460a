"""What every federated algorithm is: a small frozen value of hyper-parameters.

An algorithm says what clients do and how the server combines them; it runs
nothing itself. Each engine translates it: the TFF engine into a
``tff.learning`` process (``engines/tff/algorithms.py``), the native engine
into its own compiled client work (``engines/native``).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from kerasfed.errors import (  # noqa: F401  (defined with the family)
    AlgorithmError,
    AlgorithmTypeError,
)


class Algorithm(abc.ABC):
    """A federated training algorithm.

    Subclasses are frozen dataclasses whose fields are the algorithm's
    hyper-parameters, checked at construction.
    """

    #: Whether clients train with the compiled optimizer. FedSGD's do not: they
    #: only compute gradients, which the server optimizer applies.
    uses_client_optimizer: ClassVar[bool] = True

    #: Whether clients are weighted by their numbers of examples. Subclasses with
    #: a choice make this a dataclass field.
    weighted: ClassVar[bool] = True

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Short identifier, e.g. ``"fedavg"`` (registry names build these values)."""


def check_bool(owner: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise AlgorithmTypeError(
            f"Expected `{field}` of {owner} to be True or False. Received: "
            f"{field}={value!r} of type {type(value).__name__}."
        )
