"""Which TensorFlow / Keras this process runs, what that allows, and what is missing.

kerasfed works with TF 2.14 (Keras 2) and TF 2.16 to 2.21 (Keras 3); only
``fit_federated``'s TFF engine needs TensorFlow Federated 0.87, which only
installs beside TF 2.14. This module is the one place that knows the difference.

It imports TensorFlow only when one of its TensorFlow attributes (``tf``,
``keras``, ``TF_VERSION``, ``KERAS_3``) is first asked for: ``import kerasfed``
works without TensorFlow, and where TensorFlow is not installed the first call that
needs it raises ``MissingDependencyError`` naming the extra to install, instead of
a bare ``ModuleNotFoundError``. Optional packages (dp-accounting) are imported the
same way, by ``import_optional``, when they are used.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any, Callable

# Defined with kerasfed's error family (both are ImportErrors and KerasfedErrors).
from kerasfed.errors import FederatedUnavailableError, MissingDependencyError  # noqa: F401

TENSORFLOW_INSTALL_HINT = (
    'Install TensorFlow 2.16-2.21 with kerasfed\'s extra: pip install "kerasfed[tensorflow]" '
    '(or uv add "kerasfed[tensorflow]"); an installed TensorFlow 2.14 or 2.16-2.21 works too.'
)

FEDERATED_ENV_HINT = (
    "The TFF engine needs TensorFlow Federated 0.87, which only installs beside "
    "TensorFlow 2.14 (Keras 2) on Python 3.11: the `tff` extra "
    '(`pip install "kerasfed[tff]"` needs the jax override described in docs/install.md), '
    "or kerasfed's default environment, which `python3 dev.py demo` creates in .venv. "
    "engine='native' runs everywhere."
)


def _dp_accounting_hint() -> str:
    import numpy  # noqa: PLC0415  (a dependency of kerasfed: always there)

    # The numpy pin matters: dp-accounting's newest scipy needs numpy 2, and pip would
    # upgrade the numpy an installed TensorFlow 2.16-2.19 needs (< 2, or < 2.1/2.2).
    return (
        f'pip install dp-accounting "numpy=={numpy.__version__}" (the numpy pin keeps the '
        f"numpy your TensorFlow runs with), or, in a new environment, "
        f'pip install "kerasfed[tensorflow]"'
    )


# The module an optional piece comes from -> the install command for the message.
OPTIONAL_PACKAGES: dict[str, Callable[[], str]] = {
    "dp_accounting": _dp_accounting_hint,
}

_TENSORFLOW_ATTRIBUTES = ("tf", "keras", "TF_VERSION", "KERAS_3")


def missing_tensorflow_error(cause: ModuleNotFoundError) -> MissingDependencyError:
    """The error for TensorFlow (or its Keras) not being importable, naming the extra."""
    error = MissingDependencyError(
        f"kerasfed needs TensorFlow for this, and it is not installed in this Python "
        f"environment (`import {cause.name}` failed: {cause}). {TENSORFLOW_INSTALL_HINT}"
    )
    error.name = cause.name
    return error


def import_tensorflow() -> ModuleType:
    """Returns the ``tensorflow`` module, or raises ``MissingDependencyError``."""
    try:
        import tensorflow  # noqa: PLC0415  (heavy and optional: imported on first use)
    except ModuleNotFoundError as e:
        if e.name != "tensorflow":
            raise  # something TensorFlow itself needs is missing: TensorFlow's own error
        raise missing_tensorflow_error(e) from e
    return tensorflow


def import_public_module(module_name: str) -> ModuleType:
    """``importlib.import_module``, with a missing TensorFlow reported as what to install.

    The lazy ``kerasfed.<name>`` lookups use this: ``kerasfed.fit_distributed`` imports
    a module that imports TensorFlow at its top.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only TensorFlow itself: a module missing inside an installed TensorFlow (or
        # any other) keeps its own error.
        if e.name == "tensorflow":
            raise missing_tensorflow_error(e) from e
        raise


def import_optional(module_name: str, *, needed_for: str) -> ModuleType:
    """Imports an optional package when a feature uses it.

    Args:
        module_name: A key of ``OPTIONAL_PACKAGES`` (e.g. ``"dp_accounting"``).
        needed_for: What the caller is doing, for the message (e.g. ``"DPMean's epsilon"``).

    Raises:
        MissingDependencyError: The package is not installed; the message says how to
            install it.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        error = MissingDependencyError(
            f"{needed_for} needs the package `{module_name}`, which is not installed in "
            f"this Python environment. Install it: {OPTIONAL_PACKAGES[module_name]()}."
        )
        error.name = module_name
        raise error from e


def _tensorflow_attributes() -> dict[str, Any]:
    tf = import_tensorflow()
    keras = tf.keras
    return {
        "tf": tf,
        "keras": keras,
        "TF_VERSION": tuple(int(p) for p in tf.__version__.split(".")[:2]),
        "KERAS_3": keras.__version__.startswith("3.") if hasattr(keras, "__version__") else False,
    }


def __getattr__(name: str) -> Any:
    # Module attributes computed on first use (PEP 562): `from kerasfed._compat import
    # keras` imports TensorFlow then, and not a moment before.
    if name not in _TENSORFLOW_ATTRIBUTES:
        raise AttributeError(f"module 'kerasfed._compat' has no attribute {name!r}")
    for key, value in _tensorflow_attributes().items():
        globals().setdefault(key, value)  # a value a test set already stays
    return globals()[name]


def _tf_version() -> tuple[int, int]:
    # Through the module attribute, so that a test's monkeypatched TF_VERSION counts.
    return globals()["TF_VERSION"] if "TF_VERSION" in globals() else __getattr__("TF_VERSION")


def tff_available() -> bool:
    """Whether TensorFlow Federated can be used here (installed, beside TF 2.14)."""
    return _tf_version() == (2, 14) and importlib.util.find_spec("tensorflow_federated") is not None


def require_tff():
    """Returns the ``tensorflow_federated`` module, or raises a clear error."""
    tf = import_tensorflow()
    if importlib.util.find_spec("tensorflow_federated") is None:
        raise FederatedUnavailableError(
            f"tensorflow_federated is not installed in this environment "
            f"(TensorFlow {tf.__version__}). {FEDERATED_ENV_HINT}"
        )
    if _tf_version() != (2, 14):
        raise FederatedUnavailableError(
            f"This environment runs TensorFlow {tf.__version__}; "
            f"{FEDERATED_ENV_HINT}"
        )
    import tensorflow_federated as tff  # noqa: PLC0415  (heavy; import on demand)

    return tff
