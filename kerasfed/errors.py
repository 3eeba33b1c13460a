"""Every exception kerasfed raises on purpose, in one family.

``KerasfedError`` is the base of them all, and each class also derives from the
built-in that fits the mistake (``ValueError``, ``TypeError``, ``ImportError``,
``RuntimeError``), so ``except ValueError`` keeps working::

    try:
        kerasfed.fit_federated(model, clients, rounds=10)
    except kerasfed.KerasfedError as e:   # anything kerasfed refused
        ...

There is one class per kind of mistake, the same from ``fit_federated``,
``fit_distributed``, ``partition`` and ``kerasfed launch``: a bad ``verbose`` is a
``VerboseError`` from all of them, a bad argument value an ``ArgumentError``.
Narrower classes (``EngineError``, ``AggregatorError``...) subclass the broad
ones, so ``except kerasfed.ArgumentError`` catches every bad argument.

Older names are kept as aliases of the class that now stands for their kind
(``FitArgumentError``, ``FederatedArgumentError``, ``PartitionError`` and
``LaunchArgumentError`` are ``ArgumentError``; ``ClientDataError`` is
``DataError``...); see ``docs/errors.md``.

This module imports nothing heavy: ``import kerasfed.errors`` does not import
TensorFlow.
"""

from __future__ import annotations


class KerasfedError(Exception):
    """Base of every exception kerasfed raises on purpose."""


# -- Arguments of a call -------------------------------------------------------------------


class ArgumentError(KerasfedError, ValueError):
    """An argument of a kerasfed call has a value it cannot take (e.g. ``rounds=0``)."""


class ArgumentTypeError(KerasfedError, TypeError):
    """An argument of a kerasfed call has a type it cannot take (e.g. ``rounds="3"``)."""


class SignatureError(ArgumentTypeError):
    """A call's arguments do not fit its signature.

    An unknown keyword (``fit_federated(..., epochs=3)``), too many positional
    arguments (``fit_federated(model, x, y)``) or a missing required one. Raised
    instead of Python's bare ``TypeError``; the message names the argument, the
    close matches and the fix.
    """


class VerboseError(ArgumentError):
    """``verbose`` is not one of ``"auto"``, 0, 1, 2 (the same from every call)."""


class CallbacksTypeError(ArgumentTypeError):
    """``callbacks`` is not a list of ``keras.callbacks.Callback``."""


class StrategyError(ArgumentError):
    """``strategy`` names no strategy, or one this process cannot run."""


class EngineError(ArgumentError):
    """An unknown engine name, or the TFF engine where TFF is missing."""


class EngineTypeError(ArgumentTypeError):
    """``engine`` is not a string."""


class AlgorithmError(ArgumentError):
    """Unknown algorithm name, or a bad hyper-parameter."""


class AlgorithmTypeError(ArgumentTypeError):
    """An algorithm or hyper-parameter has the wrong type."""


class AggregatorError(ArgumentError):
    """Unknown aggregator name, a bad setting, or a chain that cannot work."""


class AggregatorTypeError(ArgumentTypeError):
    """An aggregator or one of its settings has the wrong type."""


class ServerOptimizerError(ArgumentError):
    """Unknown server optimizer name, or a hyper-parameter out of range."""


class ServerOptimizerTypeError(ArgumentTypeError):
    """The server optimizer (or a hyper-parameter) has the wrong type."""


# -- The model -----------------------------------------------------------------------------


class ModelError(KerasfedError, ValueError):
    """The ``model`` argument is not a usable compiled Keras model."""


class ModelTypeError(KerasfedError, TypeError):
    """The ``model`` argument is neither a Keras model nor a function returning one."""


class ClientOptimizerError(ModelError):
    """The model's compiled optimizer (or a setting of it) has no federated equivalent."""


class ClientOptimizerTypeError(ModelTypeError):
    """The compiled optimizer's config is not a ``{"class_name": ..., "config": ...}`` dict."""


# -- The data ------------------------------------------------------------------------------


class DataError(KerasfedError, ValueError):
    """Training, validation or clients' data cannot be used (mismatched, empty, non-finite...).

    For clients' data the message names the client.
    """


class DataTypeError(KerasfedError, TypeError):
    """Training, validation or clients' data is of a form kerasfed does not take."""


class LabelError(DataError):
    """Labels do not fit the model's loss or output.

    One-hot labels with a sparse loss, class indices with a categorical loss, or
    a class index outside ``[0, units)`` of the output.
    """


class IdxFormatError(DataError):
    """A file read by ``kerasfed.datasets`` is not a valid IDX file."""


# -- Configuration and saved state ---------------------------------------------------------


class TFConfigError(KerasfedError, ValueError):
    """``TF_CONFIG`` (or an address meant for it) is malformed or inconsistent."""


class CheckpointError(KerasfedError, ValueError):
    """A checkpoint cannot be read or does not fit this training."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was written by a training with a different configuration."""


class ClientStateError(KerasfedError, ValueError):
    """Per-client state (``ClientStateStore``) used with a wrong table, shape or id."""


# -- Missing pieces ------------------------------------------------------------------------


class MissingDependencyError(KerasfedError, ImportError):
    """A package kerasfed needs for this call is not installed; the message names the extra."""


class FederatedUnavailableError(MissingDependencyError):
    """The TFF engine is asked for where TensorFlow Federated cannot be imported."""


# -- What went wrong while running ---------------------------------------------------------


class StrategyInitError(KerasfedError, RuntimeError):
    """TensorFlow's state in this process no longer allows creating the strategy."""


class DeviceConfigError(KerasfedError, RuntimeError):
    """TensorFlow's devices were initialised before they could be configured."""


class WorkerStartError(KerasfedError, RuntimeError):
    """The TFF worker process exited or did not listen in time."""


class WorkerDiedError(KerasfedError, RuntimeError):
    """The TFF worker process ended while computations still needed it."""


# -- Older names, kept so that existing code keeps working ---------------------------------
# Each was one call's class for a kind of mistake other calls raised under another name.

FitArgumentError = ArgumentError
FederatedArgumentError = ArgumentError
FederatedArgumentTypeError = ArgumentTypeError
PartitionError = ArgumentError
LaunchArgumentError = ArgumentError
ClientDataError = DataError
ClientDataTypeError = DataTypeError

ALIASES: dict[str, type[KerasfedError]] = {
    "FitArgumentError": FitArgumentError,
    "FederatedArgumentError": FederatedArgumentError,
    "FederatedArgumentTypeError": FederatedArgumentTypeError,
    "PartitionError": PartitionError,
    "LaunchArgumentError": LaunchArgumentError,
    "ClientDataError": ClientDataError,
    "ClientDataTypeError": ClientDataTypeError,
}
"""Old name -> the class it now is."""
