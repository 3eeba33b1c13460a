"""The public surface of ``kerasfed``: pinned, importable, and cheap to import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import kerasfed

pytestmark = pytest.mark.distributed  # runs in both environments

PUBLIC = {
    "__version__",
    "quiet_tensorflow_startup",
    "plot_history",
    "fit_distributed", "get_strategy", "use_logical_cpus", "TFConfigError", "StrategyError",
    "StrategyInitError", "DataError", "DataTypeError", "FitArgumentError", "DeviceConfigError",
    "fit_federated", "partition", "PartitionError", "ClientData", "as_client_data",
    "ClientDataError", "ClientDataTypeError", "FedAvg", "FedProx", "FedSGD", "MimeLite",
    "Scaffold", "Ditto", "FedNova", "FedBuff", "Devices", "LogNormal", "Algorithm", "ClientContext", "ClientOutput", "ServerContext",
    "ServerSGD", "ServerAdam", "ServerYogi", "ServerAdagrad", "FederatedUnavailableError",
    "ModelError", "ModelTypeError",
    "ENGINE_NAMES", "EngineError", "EngineTypeError", "FederatedArgumentError",
    "FederatedArgumentTypeError", "AlgorithmError", "AlgorithmTypeError",
    "ServerOptimizerError", "ServerOptimizerTypeError", "ClientOptimizerError",
    "ClientOptimizerTypeError", "CheckpointError", "CheckpointMismatchError",
    "VerboseError", "CallbacksTypeError",
    "Mean", "Median", "TrimmedMean", "Krum", "Bulyan", "DPMean", "SecureSum", "ClipNorm",
    "Zeroing", "Quantize", "TopK", "AGGREGATOR_NAMES", "AggregatorError",
    "AggregatorTypeError", "Attack", "write_client_data",
    "FineTune",
    # The error family (kerasfed/errors.py); tests/test_errors.py checks each class.
    "KerasfedError", "ArgumentError", "ArgumentTypeError", "SignatureError", "LabelError",
    "IdxFormatError", "MissingDependencyError", "WorkerStartError", "WorkerDiedError",
    "LaunchArgumentError",
}


def test_public_names_are_pinned():
    assert set(kerasfed.__all__) == PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_resolves(name):
    # Also in the TF 2.21 environment: the federated names import without TFF.
    assert getattr(kerasfed, name) is not None


def test_engine_names():
    assert kerasfed.ENGINE_NAMES == ("auto", "tff", "native")


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'fit'"):
        kerasfed.fit  # noqa: B018


def test_import_kerasfed_does_not_import_tensorflow():
    code = "import sys, kerasfed; print(any(m.split('.')[0] == 'tensorflow' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_is_the_package_version():
    from importlib.metadata import version

    assert kerasfed.__version__ == version("kerasfed")
