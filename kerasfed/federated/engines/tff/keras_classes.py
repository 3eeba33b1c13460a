"""Keeps Keras 2's global class state as it was while TFF traces Keras models.

Keras 2 keeps one *global* switch per Keras class: creating a layer, model or
metric inside a ``tf.compat.v1.Graph`` (as TFF's tracing does) rewrites the
``__bases__`` of its class and of every Keras class on the way to ``Layer`` to
the graph-mode (v1) versions (``keras/src/utils/version_utils.py``). Every
existing eager model of those classes then dispatches to v1 methods and raises
"Your Layer or Model is in an invalid state ... interleaving ... tf.compat.v1.Graph"
on ``evaluate``/``predict``/``fit``, until an instance is next created eagerly.
``keras_classes_kept`` snapshots those bases before TFF traces and restores them
afterwards, so no model the user holds changes behaviour. The traced graphs
are already serialized when the block ends and never touch the classes again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kerasfed._compat import keras


@contextlib.contextmanager
def keras_classes_kept() -> Iterator[None]:
    """Restores every Keras layer/model/metric class's ``__bases__`` after the block."""
    roots = _layer_base_classes()
    before = {cls: cls.__bases__ for cls in _subclasses(roots)}
    try:
        yield
    finally:
        for cls, bases in before.items():
            if cls.__bases__ != bases:
                cls.__bases__ = bases


def _layer_base_classes() -> list[type]:
    roots: list[type] = [keras.layers.Layer]
    try:
        from keras.src.engine import base_layer_v1  # noqa: PLC0415  (Keras 2 internals)
    except ImportError:  # pragma: no cover - a Keras without v1 layers swaps nothing
        return roots
    return [*roots, base_layer_v1.Layer]


def _subclasses(roots: list[type]) -> set[type]:
    seen: set[type] = set()
    stack = list(roots)
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.add(cls)
            stack.extend(cls.__subclasses__())
    return seen
