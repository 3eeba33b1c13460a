"""fit_federated in an environment without TensorFlow Federated (e.g. TF 2.21).

``import kerasfed`` must work there, fit_federated trains on the native engine
(``engine="auto"`` picks it), and ``engine="tff"`` says which environment it needs
instead of failing on an import.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(
        importlib.util.find_spec("tensorflow_federated") is not None,
        reason="TensorFlow Federated is installed here; see tests/test_fit_federated.py",
    ),
]


def _model_and_clients():
    from kerasfed._compat import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    clients = {
        f"c{i}": (rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n))
        for i, n in enumerate((2, 5, 7))
    }
    return model, clients


def test_fit_federated_trains_on_the_native_engine():
    import kerasfed  # noqa: PLC0415  (must import without TFF)

    model, clients = _model_and_clients()
    before = model.get_weights()
    history = kerasfed.fit_federated(model, clients, rounds=2, seed=0, verbose=0)
    assert history.params["engine"] == "native"
    assert history.model is model
    assert history.history["num_examples"] == [14, 14]
    assert all(np.isfinite(history.history["loss"]))
    assert not np.allclose(model.get_weights()[0], before[0])
    assert "tensorflow_federated" not in sys.modules


def test_the_tff_engine_names_the_environment_it_needs():
    import tensorflow as tf  # noqa: PLC0415

    import kerasfed  # noqa: PLC0415
    from kerasfed._compat import FEDERATED_ENV_HINT  # noqa: PLC0415

    model, clients = _model_and_clients()
    with pytest.raises(kerasfed.FederatedUnavailableError, match="needs TensorFlow Federated") as info:
        kerasfed.fit_federated(model, clients, rounds=1, engine="tff", verbose=0)
    message = str(info.value)
    assert f"TensorFlow {tf.__version__}" in message
    assert FEDERATED_ENV_HINT in message  # TF 2.14 + TFF 0.87: the default environment
