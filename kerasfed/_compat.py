"""Which TensorFlow / Keras this process runs, and what that allows.

kerasfed's data-parallel half works with TF 2.14 (Keras 2) and the newest TF
(Keras 3); the federated half needs TensorFlow Federated 0.87, which only installs
beside TF 2.14. This module is the one place that knows the difference.
"""

from __future__ import annotations

import importlib.util

import tensorflow as tf

keras = tf.keras

TF_VERSION: tuple[int, int] = tuple(int(p) for p in tf.__version__.split(".")[:2])  # type: ignore[assignment]
KERAS_3: bool = keras.__version__.startswith("3.") if hasattr(keras, "__version__") else False

FEDERATED_ENV_HINT = (
    "fit_federated needs TensorFlow Federated 0.87, which only installs beside "
    "TensorFlow 2.14 (Keras 2). Use kerasfed's default environment: "
    "`python3 dev.py demo` creates it in .venv (or `uv sync --extra federated`)."
)


class FederatedUnavailableError(ImportError):
    """Raised when the federated half is used where TFF cannot be imported."""


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
