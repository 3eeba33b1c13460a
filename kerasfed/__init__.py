"""kerasfed: train a compiled Keras model data-parallel or by federated simulation.

Two calls, one shape (a compiled Keras model in, a Keras ``History`` with the
trained ``.model`` out):

- ``fit_distributed``: synchronous data-parallel training under ``tf.distribute``
  (MirroredStrategy on one host, MultiWorkerMirroredStrategy across processes
  and hosts configured by ``TF_CONFIG``; see ``kerasfed launch``).
- ``fit_federated``: federated-learning simulation (FedAvg and its family over
  many simulated clients), on TensorFlow Federated or on kerasfed's native
  in-process engine.

Names are imported lazily: ``import kerasfed`` does not import TensorFlow, so the
``kerasfed launch`` command starts in a fraction of a second.
"""

from __future__ import annotations

from typing import Any

from kerasfed._version import __version__

# Public name -> module that defines it.
_EXPORTS = {
    # Data-parallel training.
    "fit_distributed": "kerasfed.distributed.fit",
    "get_strategy": "kerasfed.distributed.strategies",
    "use_logical_cpus": "kerasfed.distributed.devices",
    # Output.
    "quiet_tensorflow_startup": "kerasfed._tf_startup",
    "plot_history": "kerasfed.plotting",  # needs matplotlib (the `plots` extra)
    # Federated simulation.
    "fit_federated": "kerasfed.federated.fit",
    "partition": "kerasfed.federated.partition",
    "ClientData": "kerasfed.federated.clients",
    "as_client_data": "kerasfed.federated.clients",
    "write_client_data": "kerasfed.federated.clients",
    "FedAvg": "kerasfed.federated.algorithms",
    "FedProx": "kerasfed.federated.algorithms",
    "FedSGD": "kerasfed.federated.algorithms",
    "MimeLite": "kerasfed.federated.algorithms",
    "Scaffold": "kerasfed.federated.algorithms",
    "Ditto": "kerasfed.federated.algorithms",
    "FedNova": "kerasfed.federated.algorithms",
    "Algorithm": "kerasfed.federated.algorithms",
    "ClientContext": "kerasfed.federated.algorithms",
    "ClientOutput": "kerasfed.federated.algorithms",
    "ServerContext": "kerasfed.federated.algorithms",
    "Mean": "kerasfed.federated.aggregators",
    "Median": "kerasfed.federated.aggregators",
    "TrimmedMean": "kerasfed.federated.aggregators",
    "Krum": "kerasfed.federated.aggregators",
    "Bulyan": "kerasfed.federated.aggregators",
    "DPMean": "kerasfed.federated.aggregators",
    "SecureSum": "kerasfed.federated.aggregators",
    "ClipNorm": "kerasfed.federated.aggregators",
    "Zeroing": "kerasfed.federated.aggregators",
    "Quantize": "kerasfed.federated.aggregators",
    "TopK": "kerasfed.federated.aggregators",
    "AGGREGATOR_NAMES": "kerasfed.federated.aggregators",
    "Attack": "kerasfed.federated.attack",
    "Devices": "kerasfed.federated.devices",
    "FedBuff": "kerasfed.federated.asynchronous",
    "LogNormal": "kerasfed.federated.devices",
    "FineTune": "kerasfed.federated.personalization",
    "ServerSGD": "kerasfed.federated.server_optimizers",
    "ServerAdam": "kerasfed.federated.server_optimizers",
    "ServerYogi": "kerasfed.federated.server_optimizers",
    "ServerAdagrad": "kerasfed.federated.server_optimizers",
    "ENGINE_NAMES": "kerasfed.federated.engines",
    # Errors: one family, all defined in kerasfed/errors.py (see docs/errors.md).
    "KerasfedError": "kerasfed.errors",
    "ArgumentError": "kerasfed.errors",
    "ArgumentTypeError": "kerasfed.errors",
    "SignatureError": "kerasfed.errors",
    "VerboseError": "kerasfed.errors",
    "CallbacksTypeError": "kerasfed.errors",
    "StrategyError": "kerasfed.errors",
    "EngineError": "kerasfed.errors",
    "EngineTypeError": "kerasfed.errors",
    "AlgorithmError": "kerasfed.errors",
    "AlgorithmTypeError": "kerasfed.errors",
    "AggregatorError": "kerasfed.errors",
    "AggregatorTypeError": "kerasfed.errors",
    "ServerOptimizerError": "kerasfed.errors",
    "ServerOptimizerTypeError": "kerasfed.errors",
    "ModelError": "kerasfed.errors",
    "ModelTypeError": "kerasfed.errors",
    "ClientOptimizerError": "kerasfed.errors",
    "ClientOptimizerTypeError": "kerasfed.errors",
    "DataError": "kerasfed.errors",
    "DataTypeError": "kerasfed.errors",
    "LabelError": "kerasfed.errors",
    "IdxFormatError": "kerasfed.errors",
    "TFConfigError": "kerasfed.errors",
    "CheckpointError": "kerasfed.errors",
    "CheckpointMismatchError": "kerasfed.errors",
    "MissingDependencyError": "kerasfed.errors",
    "FederatedUnavailableError": "kerasfed.errors",
    "StrategyInitError": "kerasfed.errors",
    "DeviceConfigError": "kerasfed.errors",
    "WorkerStartError": "kerasfed.errors",
    "WorkerDiedError": "kerasfed.errors",
    # Older names of errors, kept as aliases of the class of their kind.
    "FitArgumentError": "kerasfed.errors",
    "FederatedArgumentError": "kerasfed.errors",
    "FederatedArgumentTypeError": "kerasfed.errors",
    "PartitionError": "kerasfed.errors",
    "LaunchArgumentError": "kerasfed.errors",
    "ClientDataError": "kerasfed.errors",
    "ClientDataTypeError": "kerasfed.errors",
}

__all__ = sorted(["__version__", *_EXPORTS])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kerasfed' has no attribute {name!r}")
    # A missing TensorFlow becomes a MissingDependencyError that names the extra.
    from kerasfed._compat import import_public_module  # noqa: PLC0415

    value = getattr(import_public_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
