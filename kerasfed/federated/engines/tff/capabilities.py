"""What the TFF engine can run, asked before any engine is built.

``fit_federated`` asks ``why_not`` about a checked training: with
``engine="tff"`` it raises the error returned, with ``engine="auto"`` it picks the
native engine instead. TFF 0.87's Keras wrapper takes Sequential and functional
models with one numeric input and one label array, unweighted; its aggregators
see one client's update at a time. This module does not import TFF.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from kerasfed._compat import keras
from kerasfed.errors import AlgorithmError, FederatedArgumentError, KerasfedError, ModelError
from kerasfed.federated import aggregators as agg
from kerasfed.federated.algorithms import FedAvg, FedProx, FedSGD, MimeLite
from kerasfed.federated.clients import ClientData

_CALLER = "fit_federated"

# What the TFF engine can translate into tff.aggregators (aggregators.py here).
# TFF's SecureSumFactory builds, but its worker cannot run the secure-sum
# intrinsics ("Cannot embed a federated value"), so SecureSum is native only.
TFF_AGGREGATORS = (agg.Mean, agg.ClipNorm, agg.Zeroing, agg.Quantize, agg.DPMean)
# The algorithms TFF's builders translate (algorithms.py here); user algorithms
# and SCAFFOLD run on the native engine.
TFF_ALGORITHMS = (FedAvg, FedProx, FedSGD, MimeLite)


def why_not(
    *,
    model: keras.Model,
    clients: ClientData,
    evaluation_clients: ClientData | None,
    validation_data: Any,
    aggregator: Any,
    algorithm: Any,
    attack: Any,
    personalization: Any = None,
) -> KerasfedError | None:
    """The error saying why the TFF engine cannot run this training, or None.

    Args:
      model: The compiled Keras model.
      clients, evaluation_clients: The training (and held-out) clients.
      validation_data: ``validation_data`` as given (checked elsewhere).
      aggregator: The aggregation ``Chain``.
      algorithm: The ``Algorithm``.
      attack: The ``Attack``, or None.
      personalization: ``fit_federated``'s ``personalization`` (native only), or None.

    Returns:
      A ``ModelError``, ``AlgorithmError`` or ``FederatedArgumentError`` naming
      what TFF lacks and ``engine='native'``, or None when the TFF engine can run it.
    """
    return (
        _algorithm_problem(algorithm)
        or _model_problem(model)
        or _data_problem(clients, "clients")
        or (_data_problem(evaluation_clients, "evaluation_clients")
            if evaluation_clients is not None else None)
        or _validation_problem(validation_data)
        or aggregation_problem(aggregator, algorithm=algorithm, attack=attack)
        or (FederatedArgumentError(
            f"{_CALLER}: personalization=FineTune(...) fine-tunes every evaluation client's "
            f"copy of the model, which the TFF engine cannot do. Use engine='native'.")
            if personalization is not None else None)
    )


def needs_native(data: ClientData) -> bool:
    """Whether ``data`` holds what TFF's Keras wrapper cannot take."""
    return data.structured or data.has_sample_weights or data.has_strings


def refusal(data: ClientData, what: str) -> FederatedArgumentError:
    """The error for ``data`` (argument ``what``) that only the native engine takes."""
    found = ("sample weights" if data.has_sample_weights else
             "string features or labels" if data.has_strings else
             "several arrays of features or labels (dicts, lists or tuples)")
    return FederatedArgumentError(
        f"{_CALLER}: `{what}` have {found}, which the TFF engine cannot train on (TFF's "
        f"Keras wrapper takes one numeric input and one label array, unweighted). Use "
        f"engine='native'."
    )


def aggregation_problem(chain: Any, *, algorithm: Any, attack: Any) -> KerasfedError | None:
    """Why TFF 0.87's aggregators cannot run ``chain`` (or ``attack``), or None."""
    native_only = [s for s in chain.steps if not isinstance(s, TFF_AGGREGATORS)
                   or (isinstance(s, agg.Quantize) and (s.rotation or s.clip_range))]
    if native_only:
        return FederatedArgumentError(
            f"{_CALLER}: the TFF engine has no {', '.join(repr(s) for s in native_only)} "
            f"(TFF 0.87's aggregators cannot see every client's update at once, keep "
            f"client memories, or rotate, and its worker cannot run secure sums). Use "
            f"engine='native'."
        )
    if chain.dp is not None and isinstance(algorithm, FedSGD):
        return FederatedArgumentError(
            f"{_CALLER}: TFF's FedSGD takes only example-weighted aggregators, and "
            f"{chain.combiner.name} counts every client once. Use engine='native'."
        )
    if attack is not None and attack.on_updates:
        return FederatedArgumentError(
            f"{_CALLER}: the TFF engine cannot alter clients' updates, so "
            f"Attack({attack.kind!r}) runs on engine='native' only (label_flip runs on both)."
        )
    return None


def _algorithm_problem(algorithm: Any) -> AlgorithmError | None:
    if type(algorithm) in TFF_ALGORITHMS:
        return None
    if type(algorithm).__name__ == "PersonalLayers":
        return AlgorithmError(
            f"{_CALLER}: personal_layers keeps weights on each client, between rounds, which "
            f"TFF's training process has no place for. Use engine='native' (or engine='auto').")
    return AlgorithmError(
        f"{_CALLER}: the TFF engine runs the built-in algorithms "
        f"({', '.join(a.__name__ for a in TFF_ALGORITHMS)}); algorithm={algorithm!r} runs on "
        f"engine='native'. Pass engine='native' (or engine='auto').")


def _model_problem(model: keras.Model) -> ModelError | None:
    try:
        shapes = (("input", model.input_shape), ("output", model.output_shape))
    except (AttributeError, ValueError):  # a subclassed model: no fixed input/output shape
        return ModelError(
            f"{_CALLER}: the model {model.name!r} of class {type(model).__name__} has no "
            f"fixed input and output shape (a subclassed model). The TFF engine trains "
            f"Sequential and functional models only; rebuild it with keras.Sequential or "
            f"keras.Model(inputs, outputs), or use engine='native' under Keras 3."
        )
    for what, shape in shapes:
        if not isinstance(shape, tuple) or (shape and isinstance(shape[0], (tuple, list))):
            return ModelError(
                f"{_CALLER}: the model {model.name!r} has several {what}s ({shape}). "
                f"The TFF engine trains models with one input and one output; use "
                f"engine='native', which takes several inputs and outputs."
            )
    if _several_inputs_or_outputs(model):
        return ModelError(
            f"{_CALLER}: the model {model.name!r} takes or gives a dict or several tensors. "
            f"The TFF engine trains models with one input and one output; use "
            f"engine='native', which takes several inputs and outputs."
        )
    position = {id(v): i for i, v in enumerate(model.weights)}
    listed = [id(v) for v in [*model.trainable_weights, *model.non_trainable_weights]]
    if sorted(position.get(i, -1) for i in listed) != list(range(len(position))):
        return ModelError(
            f"{_CALLER}: the model {model.name!r} lists some weights twice or outside its "
            f"trainable/non-trainable weights; TFF cannot map them. Use engine='native'."
        )
    return None


def _several_inputs_or_outputs(model: keras.Model) -> bool:
    try:
        return len(model.inputs) > 1 or len(model.outputs) > 1 or isinstance(
            model.output, dict) or isinstance(model.input, dict)
    except (AttributeError, ValueError, TypeError):  # subclassed: no fixed inputs
        return False


def _data_problem(data: ClientData, what: str) -> FederatedArgumentError | None:
    return refusal(data, what) if needs_native(data) else None


def _validation_problem(value: Any) -> FederatedArgumentError | None:
    """``validation_data`` that only the native engine takes; data that does not
    convert is left to its full check (which names what is wrong with it)."""
    if value is None or isinstance(value, tf.data.Dataset):  # a dataset: checked later
        return None
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        return None
    try:
        data = ClientData({"validation_data": tuple(value)})
    except (ValueError, TypeError):  # the family's classes derive from these
        return None
    return _data_problem(data, "validation_data")
