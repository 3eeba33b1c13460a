"""Federated algorithms, by name or as values with hyper-parameters.

==========================  =================================================
name                        value
==========================  =================================================
``"fedavg"``                ``FedAvg()`` (example-weighted; McMahan et al. 2017)
``"fedavg_unweighted"``     ``FedAvg(weighted=False)``
``"fedsgd"``                ``FedSGD()`` (McMahan et al. 2017)
``"fedprox"``               ``FedProx(mu=0.01)`` (Li et al. 2020)
``"mime"``                  ``MimeLite()`` (Karimireddy et al. 2021)
``"scaffold"``              ``Scaffold()`` (Karimireddy et al. 2020)
``"ditto"``                 ``Ditto(lam=0.1)`` (Li et al. 2021; personal models)
``"fednova"``               ``FedNova()`` (Wang et al. 2020; unequal local steps)
==========================  =================================================

Any other ``Algorithm`` subclass runs too (on the native engine): see
``_base.py`` for the pieces an algorithm is made of.

Example:
  >>> get_algorithm("fedprox")
  FedProx(mu=0.01, weighted=True)
  >>> get_algorithm(FedProx(mu=0.1)).name
  'fedprox'
"""

from __future__ import annotations

import functools
from typing import Callable, Union

from kerasfed.federated.algorithms._base import (
    Algorithm,
    AlgorithmError,
    AlgorithmTypeError,
    ClientContext,
    ClientOutput,
    ServerContext,
)
from kerasfed.federated.algorithms.ditto import Ditto
from kerasfed.federated.algorithms.fedavg import FedAvg
from kerasfed.federated.algorithms.fednova import FedNova
from kerasfed.federated.algorithms.fedprox import FedProx
from kerasfed.federated.algorithms.fedsgd import FedSGD
from kerasfed.federated.algorithms.mime import MimeLite
from kerasfed.federated.algorithms.scaffold import Scaffold

_REGISTRY: dict[str, Callable[[], Algorithm]] = {
    "fedavg": FedAvg,
    "fedavg_unweighted": functools.partial(FedAvg, weighted=False),
    "fedsgd": FedSGD,
    "fedprox": FedProx,
    "mime": MimeLite,
    "scaffold": Scaffold,
    "ditto": Ditto,
    "fednova": FedNova,
}

ALGORITHM_NAMES: tuple[str, ...] = tuple(_REGISTRY)

AlgorithmLike = Union[str, Algorithm]


def get_algorithm(spec: AlgorithmLike) -> Algorithm:
    """Returns the algorithm a registered name (default hyper-parameters) or value means.

    Args:
      spec: A name in ``ALGORITHM_NAMES`` (case-insensitive), or an ``Algorithm``
        such as ``FedProx(mu=0.1)``.

    Raises:
      AlgorithmError: ``spec`` is an unknown name.
      AlgorithmTypeError: ``spec`` is neither a string nor an ``Algorithm``.
    """
    if isinstance(spec, Algorithm):
        return spec
    if isinstance(spec, str):
        make = _REGISTRY.get(spec.lower())
        if make is None:
            raise AlgorithmError(
                f"Unknown federated algorithm: algorithm={spec!r}. Expected one of "
                f"{list(ALGORITHM_NAMES)}, or an instance such as FedProx(mu=0.1) to set "
                f"hyper-parameters."
            )
        return make()
    if isinstance(spec, type) and issubclass(spec, Algorithm):
        raise AlgorithmTypeError(
            f"Expected `algorithm` to be a name in {list(ALGORITHM_NAMES)} or an Algorithm "
            f"(FedAvg, FedProx, FedSGD, MimeLite, Scaffold, Ditto, FedNova, FedBuff, or a subclass of "
            f"kerasfed.Algorithm) instance. Received the class {spec.__name__}: pass an instance, "
            f"algorithm={spec.__name__}().")
    raise AlgorithmTypeError(
        f"Expected `algorithm` to be a name in {list(ALGORITHM_NAMES)} or an Algorithm "
        f"(FedAvg, FedProx, FedSGD, MimeLite, Scaffold, Ditto, FedNova, FedBuff, or a subclass of "
        f"kerasfed.Algorithm). Received: algorithm={spec!r} of type "
        f"{type(spec).__name__}."
    )


__all__ = [
    "ALGORITHM_NAMES",
    "Algorithm",
    "AlgorithmError",
    "AlgorithmLike",
    "AlgorithmTypeError",
    "ClientContext",
    "ClientOutput",
    "Ditto",
    "FedAvg",
    "FedNova",
    "FedProx",
    "FedSGD",
    "MimeLite",
    "Scaffold",
    "ServerContext",
    "get_algorithm",
]
