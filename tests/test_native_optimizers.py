"""The native engine's client rules take the same steps as the compiled Keras optimizer.

The same cases as tests/test_client_optimizers.py (which checks the TFF
optimizers), through ``client_optimizer_from_keras`` and the native
``client_rule``. Needs no TFF: runs under TF 2.14 (Keras 2) and the newest TF
(Keras 3), each against its own Keras.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kerasfed._compat import KERAS_3
from kerasfed.federated.client_optimizers import (
    SUPPORTED_KERAS_OPTIMIZERS,
    ClientOptimizerSpec,
    client_optimizer_from_keras,
)
from kerasfed.federated.engines.native.optimizers import client_rule

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from optimizer_cases import (  # noqa: E402  (shared with test_client_optimizers.py)
    INITIAL,
    MATCHING,
    STEPS,
    assert_close_to_keras,
    config,
    gradients,
    keras_steps,
)

pytestmark = pytest.mark.native


def _native_steps(rule) -> list[np.ndarray]:
    weights = [tf.constant(w) for w in INITIAL]
    state = rule.init(weights)

    @tf.function  # the native engine runs its rules inside graphs
    def step(state, weights):
        return rule.step(state, weights, gradients(weights))

    for _ in range(STEPS):
        state, weights = step(state, weights)
    return [np.asarray(w) for w in weights]


@pytest.mark.parametrize("make", MATCHING.values(), ids=MATCHING.keys())
def test_native_rule_takes_the_keras_steps(make):
    expected = keras_steps(make())
    spec = client_optimizer_from_keras(config(make()))
    assert isinstance(spec, ClientOptimizerSpec)
    assert_close_to_keras(_native_steps(client_rule(spec)), expected)


def test_every_supported_name_is_covered():
    covered = {type(make()).__name__ for make in MATCHING.values()}
    assert covered == set(SUPPORTED_KERAS_OPTIMIZERS)
    assert any(name.startswith("legacy_") for name in MATCHING) is not KERAS_3
