"""The engines that run ``fit_federated``'s rounds, by name.

==========  ==============================================================
name        engine
==========  ==============================================================
``"tff"``     TensorFlow Federated 0.87 computations in a TFF worker process
            (the reference; TF 2.14 / Keras 2 only).
``"native"``  Pure TensorFlow in this process, clients trained in lockstep
            (any TensorFlow kerasfed supports).
``"auto"``    ``"tff"`` where TFF is installed, otherwise ``"native"``.
==========  ==============================================================
"""

from __future__ import annotations

from typing import Any

from kerasfed._compat import FEDERATED_ENV_HINT, tff_available
from kerasfed.errors import EngineError, EngineTypeError  # noqa: F401  (defined with the family)
from kerasfed.federated.engines.base import (
    ClientRound,
    Engine,
    EngineSetup,
    Evaluation,
    NeutralState,
    RoundResult,
)

ENGINE_NAMES: tuple[str, ...] = ("auto", "tff", "native")


def resolve_engine(name: Any) -> str:
    """``"tff"`` or ``"native"``: the engine ``name`` means here.

    Raises:
      EngineTypeError: ``name`` is not a string.
      EngineError: An unknown name, or ``"tff"`` where TFF cannot be used.
    """
    if not isinstance(name, str):
        raise EngineTypeError(
            f"Expected `engine` to be one of {list(ENGINE_NAMES)}. Received: engine={name!r} "
            f"of type {type(name).__name__}."
        )
    key = name.lower()
    if key not in ENGINE_NAMES:
        raise EngineError(
            f"Unknown engine: engine={name!r}. Expected one of {list(ENGINE_NAMES)}: 'tff' "
            f"(TensorFlow Federated, the default environment), 'native' (any TensorFlow) or "
            f"'auto' (TFF where installed, else native)."
        )
    if key == "auto":
        return "tff" if tff_available() else "native"
    if key == "tff" and not tff_available():
        from kerasfed._compat import FederatedUnavailableError  # noqa: PLC0415
        import tensorflow as tf  # noqa: PLC0415

        raise FederatedUnavailableError(
            f"engine='tff' needs TensorFlow Federated, which is not usable here (TensorFlow "
            f"{tf.__version__}). Choices: {list(ENGINE_NAMES)}. {FEDERATED_ENV_HINT}"
        )
    return key


def make_engine(name: str, setup: EngineSetup) -> Engine:
    """Builds engine ``name`` (``"tff"`` or ``"native"``); call ``close()`` when done."""
    if name == "tff":
        from kerasfed.federated.engines.tff.engine import TffEngine  # noqa: PLC0415  (TFF)

        return TffEngine(setup)
    from kerasfed.federated.engines.native.engine import NativeEngine  # noqa: PLC0415

    return NativeEngine(setup)


__all__ = [
    "ENGINE_NAMES",
    "ClientRound",
    "Engine",
    "EngineError",
    "EngineSetup",
    "EngineTypeError",
    "Evaluation",
    "NeutralState",
    "RoundResult",
    "make_engine",
    "resolve_engine",
]
