"""``fit_federated(personal_layers=...)``: which of the model's weights stay on each client.

The argument names layers (a name, a list of names, a predicate on layers, or
``"batch_norm"`` for every BatchNormalization layer: FedBN); every weight of
those layers, trainable or not, is personal. Trainable ones are handled by the
``PersonalLayers`` algorithm wrapper (``algorithms/personal.py``); the
non-trainable ones (BatchNormalization's moving statistics) by the engine, which
keeps them per client instead of averaging them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kerasfed.errors import ArgumentError, ArgumentTypeError
from kerasfed.federated.engines.native import forward as fwd

_CALLER = "fit_federated"
BATCH_NORM = "batch_norm"


@dataclasses.dataclass(frozen=True)
class PersonalWeights:
    """The personal weights of a model.

    Attributes:
      layers: The names of the personal layers.
      trainable: Their trainable weights' positions in the model's trainable
        variables (the algorithm's order).
      non_trainable: Their non-trainable weights' positions in the model's
        non-trainable variables (the engine's order).
    """

    layers: tuple[str, ...]
    trainable: tuple[int, ...]
    non_trainable: tuple[int, ...]


def _all_layers(model: Any) -> list:
    """Every layer of ``model``, nested ones included, each once, in order."""
    out, seen = [], set()

    def visit(layer):
        for sub in getattr(layer, "layers", []):
            if id(sub) not in seen:
                seen.add(id(sub))
                out.append(sub)
                visit(sub)

    visit(model)
    return out


def _chooser(spec: Any, names: list[str]) -> Callable[[Any], bool]:
    if spec == BATCH_NORM:
        return lambda layer: "BatchNormalization" in type(layer).__name__
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, (list, tuple, set, frozenset)):
        wanted = list(spec)
        bad = [n for n in wanted if not isinstance(n, str)]
        if bad:
            raise ArgumentTypeError(
                f"{_CALLER}: expected `personal_layers` to hold layer names (strings). "
                f"Received {bad[0]!r} of type {type(bad[0]).__name__} among {wanted!r}.")
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ArgumentError(
                f"{_CALLER}: personal_layers={wanted!r} names {unknown}, which the model "
                f"has no layer of. Its layers: {names}. Pass layer names as "
                f"`model.summary()` shows them, or '{BATCH_NORM}'.")
        return lambda layer: layer.name in wanted
    if callable(spec):
        return spec
    raise ArgumentTypeError(
        f"{_CALLER}: expected `personal_layers` to be a layer name, a list of names, "
        f"'{BATCH_NORM}' or a function of a layer returning True for personal ones. "
        f"Received: personal_layers={spec!r} of type {type(spec).__name__}.")


def resolve_personal_layers(spec: Any, model: Any) -> PersonalWeights | None:
    """The personal weights ``spec`` picks in ``model``, or None for ``spec=None``.

    Raises:
      ArgumentTypeError: ``spec`` is of no accepted kind.
      ArgumentError: It names no layer of the model, picks no weight, or
        picks every trainable weight (nothing would be federated).
    """
    if spec is None:
        return None
    layers = _all_layers(model)
    names = [layer.name for layer in layers]
    choose = _chooser(spec, names)
    chosen = [layer for layer in layers if choose(layer)]
    # Weights of a chosen layer (and of the layers inside it).
    ids = {id(v) for layer in chosen for v in fwd.variables(layer.weights)}
    trainable = tuple(i for i, v in enumerate(fwd.variables(model.trainable_variables))
                      if id(v) in ids)
    non_trainable = tuple(i for i, v in enumerate(fwd.variables(model.non_trainable_variables))
                          if id(v) in ids)
    if not trainable and not non_trainable:
        raise ArgumentError(
            f"{_CALLER}: personal_layers={spec!r} picks no weight of the model (the layers "
            f"chosen: {[layer.name for layer in chosen]}). Its layers: {names}.")
    if len(trainable) == len(fwd.variables(model.trainable_variables)):
        raise ArgumentError(
            f"{_CALLER}: personal_layers={spec!r} makes every trainable weight personal, so "
            f"nothing would be federated. Keep some layers shared (FedPer keeps the head "
            f"personal, FedBN the BatchNormalization layers).")
    return PersonalWeights(layers=tuple(layer.name for layer in chosen), trainable=trainable,
                           non_trainable=non_trainable)
