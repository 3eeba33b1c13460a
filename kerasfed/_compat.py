"""Which TensorFlow / Keras this process runs, and what that allows.

kerasfed works with TF 2.14 (Keras 2) and the newest TF (Keras 3); only
``fit_federated``'s TFF engine needs TensorFlow Federated 0.87, which only
installs beside TF 2.14. This module is the one place that knows the difference.
"""

from __future__ import annotations

import importlib.util

import tensorflow as tf

keras = tf.keras

TF_VERSION: tuple[int, int] = tuple(int(p) for p in tf.__version__.split(".")[:2])  # type: ignore[assignment]
KERAS_3: bool = keras.__version__.startswith("3.") if hasattr(keras, "__version__") else False

FEDERATED_ENV_HINT = (
    "The TFF engine needs TensorFlow Federated 0.87, which only installs beside "
    "TensorFlow 2.14 (Keras 2): kerasfed's default environment, which "
    "`python3 dev.py demo` creates in .venv (or `uv sync --extra federated`). "
    "engine='native' runs everywhere."
)


class FederatedUnavailableError(ImportError):
    """Raised when the TFF engine is asked for where TFF cannot be imported."""


def tff_available() -> bool:
    """Whether TensorFlow Federated can be used here (installed, beside TF 2.14)."""
    return TF_VERSION == (2, 14) and importlib.util.find_spec("tensorflow_federated") is not None


def require_tff():
    """Returns the ``tensorflow_federated`` module, or raises a clear error."""
    if importlib.util.find_spec("tensorflow_federated") is None:
        raise FederatedUnavailableError(
            f"tensorflow_federated is not installed in this environment "
            f"(TensorFlow {tf.__version__}). {FEDERATED_ENV_HINT}"
        )
    if TF_VERSION != (2, 14):
        raise FederatedUnavailableError(
            f"This environment runs TensorFlow {tf.__version__}; "
            f"{FEDERATED_ENV_HINT}"
        )
    import tensorflow_federated as tff  # noqa: PLC0415  (heavy; import on demand)

    return tff
