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

import importlib
from typing import Any

from kerasfed._version import __version__

# Public name -> module that defines it.
_EXPORTS = {
    # Data-parallel training.
    "fit_distributed": "kerasfed.distributed.fit",
    "get_strategy": "kerasfed.distributed.strategies",
    "use_logical_cpus": "kerasfed.distributed.devices",
    "TFConfigError": "kerasfed.distributed.tf_config",
    "StrategyError": "kerasfed.distributed.strategies",
    "StrategyInitError": "kerasfed.distributed.strategies",
    "DataError": "kerasfed.distributed.data",
    "DataTypeError": "kerasfed.distributed.data",
    "FitArgumentError": "kerasfed.distributed.arguments",
    "DeviceConfigError": "kerasfed.distributed.devices",
    # Federated simulation.
    "fit_federated": "kerasfed.federated.fit",
    "partition": "kerasfed.federated.partition",
    "PartitionError": "kerasfed.federated.partition",
    "ClientData": "kerasfed.federated.clients",
    "as_client_data": "kerasfed.federated.clients",
    "write_client_data": "kerasfed.federated.clients",
    "ClientDataError": "kerasfed.federated.clients",
    "ClientDataTypeError": "kerasfed.federated.clients",
    "FedAvg": "kerasfed.federated.algorithms",
    "FedProx": "kerasfed.federated.algorithms",
    "FedSGD": "kerasfed.federated.algorithms",
    "MimeLite": "kerasfed.federated.algorithms",
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
    "AggregatorError": "kerasfed.federated.aggregators",
    "AggregatorTypeError": "kerasfed.federated.aggregators",
    "Attack": "kerasfed.federated.attack",
    "ServerSGD": "kerasfed.federated.server_optimizers",
    "ServerAdam": "kerasfed.federated.server_optimizers",
    "ServerYogi": "kerasfed.federated.server_optimizers",
    "ServerAdagrad": "kerasfed.federated.server_optimizers",
    "FederatedUnavailableError": "kerasfed._compat",
    "ENGINE_NAMES": "kerasfed.federated.engines",
    "EngineError": "kerasfed.federated.engines",
    "EngineTypeError": "kerasfed.federated.engines",
    "FederatedArgumentError": "kerasfed.federated.arguments",
    "FederatedArgumentTypeError": "kerasfed.federated.arguments",
    "AlgorithmError": "kerasfed.federated.algorithms",
    "AlgorithmTypeError": "kerasfed.federated.algorithms",
    "ServerOptimizerError": "kerasfed.federated.server_optimizers",
    "ServerOptimizerTypeError": "kerasfed.federated.server_optimizers",
    "ClientOptimizerError": "kerasfed.federated.client_optimizers",
    "ClientOptimizerTypeError": "kerasfed.federated.client_optimizers",
    "CheckpointError": "kerasfed.federated.checkpoint",
    "CheckpointMismatchError": "kerasfed.federated.checkpoint",
    # Shared.
    "ModelError": "kerasfed._keras_model",
    "ModelTypeError": "kerasfed._keras_model",
    "VerboseError": "kerasfed._arguments",
    "CallbacksTypeError": "kerasfed._arguments",
}

__all__ = sorted(["__version__", *_EXPORTS])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kerasfed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
