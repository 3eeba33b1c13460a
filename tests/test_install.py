"""What a user without TensorFlow or without dp-accounting gets.

kerasfed's own dependencies are numpy and tqdm: TensorFlow comes from an extra (or
is already installed), dp-accounting only matters for DP accounting. Where one is
missing, kerasfed must still import and must name the install command at the first
call that needs it. "Missing" is played by a meta-path finder that refuses the
module (in a fresh interpreter, since this one has imported TensorFlow already) or
by a ``None`` entry in ``sys.modules`` (what Python itself reports as not found).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kerasfed.errors import KerasfedError, MissingDependencyError

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[1]

# Runs `body` in a fresh interpreter where importing any of BLOCKED fails as it does
# when the package is not installed; prints the body's JSON result.
_BLOCKER = textwrap.dedent("""
    import importlib.abc, json, sys

    BLOCKED = set(sys.argv[1].split(","))

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
""")


def run_without(modules: list[str], body: str) -> dict:
    code = _BLOCKER + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", code, ",".join(modules)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


_CALLS_WITHOUT_TENSORFLOW = """
    import kerasfed
    import kerasfed.errors

    out = {"version": kerasfed.__version__}

    def attempt(label, fn):
        try:
            fn()
            out[label] = None
        except ImportError as e:
            out[label] = {"class": type(e).__name__, "message": str(e),
                          "kerasfed_error": isinstance(e, kerasfed.errors.KerasfedError)}

    attempt("attribute", lambda: kerasfed.fit_distributed)
    attempt("from_import", lambda: exec("from kerasfed import fit_federated"))
    attempt("distributed", lambda: exec("from kerasfed.distributed import fit_distributed"))
    attempt("compat", lambda: exec("from kerasfed._compat import keras"))
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def without_tensorflow() -> dict:
    """What each call gave in one interpreter where TensorFlow is not installed."""
    return run_without(["tensorflow"], _CALLS_WITHOUT_TENSORFLOW)


def test_import_kerasfed_works_without_tensorflow(without_tensorflow):
    assert without_tensorflow["version"]
    assert without_tensorflow["tensorflow_imported"] is False


@pytest.mark.parametrize("label", ["attribute", "from_import", "distributed", "compat"])
def test_first_use_without_tensorflow_names_the_extra(label, without_tensorflow):
    error = without_tensorflow[label]
    assert error is not None, f"{label}: no error without TensorFlow"
    assert error["class"] == "MissingDependencyError"
    assert error["kerasfed_error"] is True
    assert 'pip install "kerasfed[tensorflow]"' in error["message"]
    assert "`import tensorflow` failed" in error["message"]


def test_launcher_runs_without_tensorflow():
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKER + "from kerasfed.cli import main; main(['--version'])",
         "tensorflow"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("kerasfed ")


@pytest.mark.parametrize("module", ["no_such_module_xyz", "tensorflow.python.no_such_module_xyz"])
def test_other_missing_modules_keep_their_own_error(module):
    # Not "install TensorFlow": only TensorFlow itself missing means that.
    from kerasfed._compat import import_public_module

    with pytest.raises(ModuleNotFoundError, match=f"No module named '{module}'") as caught:
        import_public_module(module)
    assert not isinstance(caught.value, MissingDependencyError)


def test_missing_dependency_error_is_an_import_error():
    assert issubclass(MissingDependencyError, ImportError)
    assert issubclass(MissingDependencyError, KerasfedError)


# -- dp-accounting: only for DP accounting -------------------------------------------------


def _clients() -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(4):
        x = rng.normal(size=(16, 4)).astype(np.float32)
        out[f"c{i}"] = (x, (x[:, 0] > 0).astype(np.int64))
    return out


def _model():
    from kerasfed._compat import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


@pytest.fixture
def without_dp_accounting(monkeypatch):
    # A None entry makes `import dp_accounting` raise ModuleNotFoundError, as when it is
    # not installed (a previously imported module is put back afterwards).
    monkeypatch.setitem(sys.modules, "dp_accounting", None)


def test_epsilon_without_dp_accounting_names_the_install(without_dp_accounting):
    from kerasfed.federated.aggregators import accounting

    with pytest.raises(MissingDependencyError,
                       match=r'DPMean\'s privacy accounting .* needs the package `dp_accounting`.*'
                             r'pip install dp-accounting "numpy==' + re.escape(np.__version__) +
                             r'" .*or, in a new environment, pip install "kerasfed\[tensorflow\]"'):
        accounting.epsilon(1.0, 3, delta=1e-5, sampling="uniform", num_clients=10,
                           clients_per_round=2)
    assert accounting.epsilon(0.0, 3, delta=1e-5, sampling="uniform", num_clients=10,
                              clients_per_round=2) == float("inf")  # no noise: nothing to account


@pytest.mark.native
def test_fit_federated_with_dp_without_dp_accounting_fails_before_training(without_dp_accounting):
    import kerasfed

    with pytest.raises(MissingDependencyError, match=r"pip install dp-accounting \"numpy=="):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, clients_per_round=2,
                               engine="native", verbose=0,
                               aggregator=kerasfed.DPMean(noise_multiplier=1.0, clip_norm=0.5))


@pytest.mark.native
def test_fit_federated_without_dp_needs_no_dp_accounting(without_dp_accounting):
    # Checked against plain FedAvg arithmetic: two rounds of one client each with
    # server rate 1 are the client's own training, which model.fit reproduces.
    import kerasfed

    clients = _clients()
    history = kerasfed.fit_federated(_model(), {"c0": clients["c0"]}, rounds=2, batch_size=8,
                                     shuffle=False, engine="native", verbose=0)
    reference = _model()
    reference.fit(*clients["c0"], epochs=2, batch_size=8, shuffle=False, verbose=0)
    for got, want in zip(history.model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_kerasfed_imports_no_optional_package_until_used():
    out = run_without([], """
        import kerasfed
        kerasfed.fit_distributed, kerasfed.fit_federated, kerasfed.DPMean
        print(json.dumps({m: m in sys.modules for m in ("matplotlib", "dp_accounting")}))
    """)
    assert out == {"matplotlib": False, "dp_accounting": False}
