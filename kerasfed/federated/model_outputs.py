"""A model's outputs in one fixed order, and clients' labels put in that order.

A model with several outputs returns a list or a dict, and Keras takes its labels
as a list (by position) or a dict (by output name). The engines work on one
canonical form: one tensor for a single-output model (exactly as before), else a
tuple in ``model.output_names`` order, for both the predictions and the labels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from kerasfed.federated.clients import ClientDataError
from kerasfed.federated.clients.structure import is_structured


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    """The names of a model's outputs, in the order the engines use.

    Attributes:
      names: ``model.output_names`` (one name for a single-output model).
    """

    names: tuple[str, ...]

    @classmethod
    def of(cls, model: Any) -> OutputLayout:
        names = None
        try:
            names = getattr(model, "output_names", None)
        except (AttributeError, ValueError):  # a subclassed model that was never traced
            names = None
        return cls(tuple(names) if names else ("output",))

    @property
    def single(self) -> bool:
        return len(self.names) == 1

    def flatten(self, pred: Any) -> Any:
        """The model's output as one tensor (single output) or a tuple in ``names`` order."""
        if isinstance(pred, dict):
            values = tuple(pred[name] for name in self.names) if set(pred) == set(
                self.names) else tuple(pred[k] for k in sorted(pred))
        elif isinstance(pred, (list, tuple)):
            values = tuple(pred)
        else:
            return pred
        if self.single and len(values) == 1:
            return values[0]
        return values

    def canonical_labels(self, y: Any, *, where: str) -> Any:
        """``y`` (an array, or a list/tuple/dict of them) in the canonical form.

        Raises:
          ClientDataError: labels that do not match the model's outputs; the message
            names ``where`` (a client, or an argument) and the outputs.
        """
        n = len(self.names)
        if self.single:
            if isinstance(y, dict) and len(y) == 1:
                return next(iter(y.values()))
            if isinstance(y, (list, tuple)) and len(y) == 1:
                return y[0]
            if not is_structured(y):
                return y
        elif isinstance(y, dict):
            missing = [k for k in self.names if k not in y]
            extra = [k for k in y if k not in self.names]
            if not missing and not extra:
                return tuple(y[name] for name in self.names)
            raise ClientDataError(
                f"{where}: its labels are a dict with keys {sorted(y)}, but the model's "
                f"outputs are {list(self.names)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {extra})" if extra else "")
                + ". Key the labels by output name."
            )
        elif isinstance(y, (list, tuple)) and len(y) == n and not any(
                is_structured(part) for part in y):
            return tuple(y)
        shown = tf.nest.map_structure(lambda a: f"array{tuple(getattr(a, 'shape', ()))}", y)
        raise ClientDataError(
            f"{where}: the model has {n} output{'s' if n > 1 else ''} {list(self.names)}, "
            f"but its labels are {shown}. Pass "
            + ("one label array" if n == 1 else
               f"a list of {n} label arrays (in that order) or a dict keyed by output name")
            + "."
        )
