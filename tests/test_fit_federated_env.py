"""fit_federated in an environment without TensorFlow Federated (e.g. TF 2.21).

``import kerasfed`` must work there (the data-parallel half does), and
fit_federated must say which environment it needs instead of failing on an import.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.distributed


def test_fit_federated_names_the_environment_it_needs():
    if importlib.util.find_spec("tensorflow_federated") is not None:
        pytest.skip("TensorFlow Federated is installed here; see tests/test_fit_federated.py")
    import kerasfed  # noqa: F401,PLC0415  (must import without TFF)
    from kerasfed._compat import FEDERATED_ENV_HINT, FederatedUnavailableError, keras  # noqa: PLC0415
    from kerasfed.federated.fit import fit_federated  # noqa: PLC0415

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    clients = {"a": (np.zeros((2, 4), np.float32), np.array([0, 1]))}
    with pytest.raises(FederatedUnavailableError, match="needs TensorFlow Federated 0.87") as info:
        fit_federated(model, clients, rounds=1)
    assert FEDERATED_ENV_HINT in str(info.value)
