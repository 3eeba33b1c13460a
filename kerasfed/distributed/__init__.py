"""Data-parallel training with tf.distribute.

Names are imported lazily, as in ``kerasfed/__init__.py``: ``kerasfed launch``
imports ``kerasfed.distributed.tf_config`` and must not import TensorFlow.
"""

from __future__ import annotations

from typing import Any

# Public name -> module that defines it.
_EXPORTS = {
    "fit_distributed": "kerasfed.distributed.fit",
    "get_strategy": "kerasfed.distributed.strategies",
    "STRATEGY_NAMES": "kerasfed.distributed.strategies",
    "StrategyError": "kerasfed.distributed.strategies",
    "StrategyInitError": "kerasfed.distributed.strategies",
    "use_logical_cpus": "kerasfed.distributed.devices",
    "DeviceConfigError": "kerasfed.distributed.devices",
    "DataError": "kerasfed.distributed.data",
    "DataTypeError": "kerasfed.distributed.data",
    "FitArgumentError": "kerasfed.distributed.arguments",
    "ClusterConfig": "kerasfed.distributed.tf_config",
    "TFConfigError": "kerasfed.distributed.tf_config",
    "build_tf_config": "kerasfed.distributed.tf_config",
    "read_tf_config": "kerasfed.distributed.tf_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kerasfed.distributed' has no attribute {name!r}")
    # A missing TensorFlow becomes a MissingDependencyError that names the extra.
    from kerasfed._compat import import_public_module  # noqa: PLC0415

    value = getattr(import_public_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
