"""Smoke tests of an installed kerasfed wheel, run by CI in clean environments.

``python3 dev.py test`` builds the wheel, installs it into fresh virtual environments
(Python 3.13 + TensorFlow 2.21, Python 3.12 + TensorFlow 2.16) and runs this file there
from a temporary directory, so that ``import kerasfed`` can only find the installed
package, never the checkout. Each test checks a number against an independent
reference (plain Keras or numpy). Not collected by the project's own test runs
(``norecursedirs`` in pyproject.toml): in a checkout, kerasfed is not installed from a
wheel. Run by hand: ``python3 dev.py smoke``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import kerasfed  # noqa: E402


def _tiny_data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x, y


def _make_model():
    from kerasfed._compat import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1),
                  loss="sparse_categorical_crossentropy")
    return model


def test_kerasfed_is_the_installed_wheel_not_a_checkout():
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(kerasfed.__file__).resolve().is_relative_to(purelib), kerasfed.__file__
    for entry in sys.path:
        assert not (Path(entry or ".") / "pyproject.toml").exists(), f"a checkout on sys.path: {entry}"
    import tensorflow as tf

    print(f"kerasfed {kerasfed.__version__} from {kerasfed.__file__}; Python "
          f"{sys.version.split()[0]}, TensorFlow {tf.__version__}, numpy {np.__version__}")


def test_fit_distributed_matches_model_fit():
    x, y = _tiny_data()
    history = kerasfed.fit_distributed(_make_model(), x, y, epochs=2, batch_size=16,
                                       shuffle=False, verbose=0)
    reference = _make_model()
    expected = reference.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-4)
    for got, want in zip(history.model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_fit_federated_native_one_client_matches_model_fit():
    # One client, one local epoch per round, server SGD at rate 1: FedAvg is model.fit.
    x, y = _tiny_data()
    history = kerasfed.fit_federated(_make_model(), {"only": (x, y)}, rounds=2, batch_size=16,
                                     shuffle=False, engine="native", verbose=0)
    reference = _make_model()
    reference.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for got, want in zip(history.model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_fit_federated_native_with_dp_reports_dp_accountings_epsilon():
    import dp_accounting

    clients = {f"c{i}": _tiny_data(16, seed=i) for i in range(4)}
    history = kerasfed.fit_federated(
        _make_model(), clients, rounds=2, clients_per_round=2, batch_size=8, engine="native",
        aggregator=kerasfed.DPMean(noise_multiplier=1.0, clip_norm=0.5), seed=0, verbose=0)
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.SampledWithoutReplacementDpEvent(
        4, 2, dp_accounting.GaussianDpEvent(1.0)), 2)
    accountant = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(event)
    delta = kerasfed.DPMean(noise_multiplier=1.0, clip_norm=0.5).default_delta(4)
    np.testing.assert_allclose(history.history["epsilon"][-1], accountant.get_epsilon(delta),
                               rtol=1e-6)


WORKER = textwrap.dedent("""
    import os, sys
    import numpy as np
    import kerasfed
    from kerasfed._compat import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def make_model():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        return model

    history = kerasfed.fit_distributed(make_model, x, y, strategy="multi_worker", epochs=2,
                                       batch_size=16, shuffle=False, verbose=0)
    rank = os.environ["KERASFED_RANK"]
    np.save(os.path.join(sys.argv[1], f"kernel{rank}.npy"), history.model.get_weights()[0])
""")


def test_launch_two_workers_train_the_same_model(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    launcher = Path(sys.executable).with_name("kerasfed")  # the wheel's console script
    result = subprocess.run([launcher, "launch", "--workers", "2", script, tmp_path],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    kernels = [np.load(tmp_path / f"kernel{rank}.npy") for rank in (0, 1)]
    np.testing.assert_array_equal(kernels[0], kernels[1])
    assert not np.allclose(kernels[0], 0)
