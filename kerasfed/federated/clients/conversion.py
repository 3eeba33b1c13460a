"""Conversion of every accepted input kind to a :class:`ClientData`."""

from __future__ import annotations

import collections.abc
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed.errors import ArgumentError
from kerasfed.federated.clients.container import ClientData
from kerasfed.federated.clients.errors import ClientDataError, ClientDataTypeError

# Key pairs recognised in dict-shaped examples, in order of preference.
KNOWN_KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("x", "y"),
    ("pixels", "label"),
    ("image", "label"),
    ("images", "labels"),
    ("features", "label"),
    ("features", "labels"),
)

# Unbatched datasets are materialised in chunks of this many examples; one
# element at a time in eager mode would be ~100x slower.
_MATERIALISE_CHUNK = 4096

_ACCEPTED = (
    "a dict {client_id: (x, y)} or {client_id: (x, y, sample_weight)} of numpy arrays "
    "(x and y may be dicts or lists of arrays), "
    "a dict {client_id: tf.data.Dataset} whose elements are (x, y), (x, y, sample_weight) "
    "or {'x': ..., 'y': ...}, "
    "a kerasfed.ClientData, a tff.simulation.datasets.ClientData, or a path (a directory "
    "written by kerasfed.write_client_data, or a TFF .sqlite client-data file)"
)


def as_client_data(
    clients: Any,
    *,
    feature_key: str | None = None,
    label_key: str | None = None,
    what: str = "clients",
) -> ClientData:
    """Converts clients' data to a :class:`ClientData` (materialised to numpy once).

    Accepted inputs:

    * a ``ClientData`` (returned as is);
    * a dict ``{client_id: (x, y)}`` of arrays or array-likes, or
      ``{client_id: {"x": ..., "y": ...}}``;
    * a dict ``{client_id: tf.data.Dataset}`` whose elements are ``(x, y)`` or
      dicts. Batched datasets are recognised by an unknown (None) leading
      dimension in both ``x`` and ``y``, as ``.batch(b)`` makes, and their
      batches are concatenated. A dataset batched with ``drop_remainder=True``
      has a fixed leading dimension and would be read as single examples: call
      ``.unbatch()`` on it first.
    * a ``tff.simulation.datasets.ClientData`` (each client's dataset as above);
    * a path: a directory written by ``kerasfed.write_client_data``, or a TFF
      SQLite client-data file (read per client when sampled, never all at once).

    Dict-shaped examples are split with ``feature_key``/``label_key`` when
    given, otherwise with the first of :data:`KNOWN_KEY_PAIRS` present
    (``x``/``y``, ``pixels``/``label``, ...). Non-str client ids are converted
    with ``str()``.

    Args:
        clients: The clients' data, as above.
        feature_key: Key of the features in dict-shaped examples (default None).
        label_key: Key of the labels in dict-shaped examples (default None).
        what: The argument's name, used in error messages (default "clients").

    Returns:
        A ClientData.

    Raises:
        ClientDataTypeError: an unsupported type (the message lists the accepted ones).
        ClientDataError: an empty dict, unknown dict keys, non-numeric or
            ragged data; the message names the client.

    Example:
        >>> cd = as_client_data({"a": (np.zeros((2, 3)), np.array([0, 1]))})
        >>> cd.client_ids
        ['a']
    """
    if (feature_key is None) != (label_key is None):
        raise ArgumentError(
            f"Pass both `feature_key` and `label_key`, or neither. Received: "
            f"feature_key={feature_key!r}, label_key={label_key!r}."
        )
    keys = None if feature_key is None else (feature_key, label_key)
    if isinstance(clients, ClientData):
        return clients
    if isinstance(clients, (str, os.PathLike)):
        # A path: a kerasfed client directory, or a TFF SQLite file.
        if os.path.isdir(clients):
            return ClientData.from_directory(clients)
        if not os.path.exists(clients):
            raise ClientDataError(
                f"`{what}` is the path {os.fspath(clients)!r}, which does not exist. Pass a "
                f"directory written by kerasfed.write_client_data or a TFF .sqlite file.")
        return ClientData.from_sqlite(clients, **(
            {"feature_key": feature_key, "label_key": label_key} if keys else {}))
    if _is_tff_client_data(clients):
        ids = [str(c) for c in clients.client_ids]
        if not ids:
            raise ClientDataError(f"`{what}` has no clients: its client_ids is empty.")
        return ClientData(
            {
                cid: _from_dataset(cid, clients.create_tf_dataset_for_client(cid), keys)
                for cid in ids
            }
        )
    if not isinstance(clients, collections.abc.Mapping):
        hint = ""
        if isinstance(clients, (tuple, list)) and clients and all(
            isinstance(c, tf.data.Dataset) or (isinstance(c, (tuple, list)) and len(c) in (2, 3))
            for c in clients
        ):
            kinds = "datasets" if isinstance(clients[0], tf.data.Dataset) else "(x, y) pairs"
            hint = (
                f" `{what}` is a {type(clients).__name__} of {len(clients)} {kinds}; kerasfed "
                f"needs each client's id: pass a dict {{client_id: data}}, e.g. "
                f"{{f'client_{{i}}': c for i, c in enumerate({what})}}. To split one (x, y) "
                f"dataset into clients use kerasfed.partition(x, y, num_clients=...)."
            )
        elif (isinstance(clients, (tuple, list)) and len(clients) == 2) or hasattr(clients, "shape"):
            hint = (
                " To split one (x, y) dataset into clients use "
                "kerasfed.partition(x, y, num_clients=...)."
            )
        elif isinstance(clients, tf.data.Dataset):
            hint = " A single dataset is one client: pass {'client_0': dataset}."
        raise ClientDataTypeError(
            f"Expected `{what}` to be {_ACCEPTED}. Received: {type(clients).__name__}.{hint}"
        )
    if not clients:
        raise ClientDataError(
            f"`{what}` is an empty dict: there are no clients. Pass at least one "
            f"client, e.g. {{'client_0': (x, y)}}."
        )
    pairs: dict[str, tuple[Any, Any]] = {}
    for key, value in clients.items():
        cid = key.decode("utf-8") if isinstance(key, bytes) else str(key)
        if cid in pairs:
            raise ClientDataError(f"`{what}` has two clients whose ids are both {cid!r} as str.")
        if isinstance(value, tf.data.Dataset):
            pairs[cid] = _from_dataset(cid, value, keys)
        else:
            pairs[cid] = _pair_selector(cid, value, keys)(value)
    return ClientData(pairs)


def _is_tff_client_data(obj: Any) -> bool:
    # Only an already-imported TFF can have made `obj`, so this never imports it.
    tff = sys.modules.get("tensorflow_federated")
    return tff is not None and isinstance(obj, tff.simulation.datasets.ClientData)


def _pair_selector(
    cid: str, structure: Any, keys: tuple[str, str] | None
) -> Callable[[Any], tuple[Any, Any]]:
    """How to get ``(x, y)`` from examples shaped like ``structure``."""
    if isinstance(structure, (tuple, list)):
        if len(structure) not in (2, 3):
            raise ClientDataError(
                f"Client {cid!r}: expected (x, y) pairs or (x, y, sample_weight) triples, "
                f"got a {type(structure).__name__} of length {len(structure)}."
            )
        return lambda s: tuple(s)
    if isinstance(structure, collections.abc.Mapping):
        found = list(structure)
        candidates = [keys] if keys is not None else KNOWN_KEY_PAIRS
        for fk, lk in candidates:
            if fk in structure and lk in structure:
                return lambda s: (s[fk], s[lk])
        expected = (
            f"keys {keys[0]!r} and {keys[1]!r} (feature_key, label_key)"
            if keys is not None
            else "one of the key pairs " + ", ".join(f"{a!r}/{b!r}" for a, b in KNOWN_KEY_PAIRS)
        )
        raise ClientDataError(
            f"Client {cid!r}: its examples are dicts with keys {found}, but kerasfed "
            f"needs {expected}. Pass feature_key=... and label_key=... naming the "
            f"features and the labels."
        )
    raise ClientDataTypeError(
        f"Client {cid!r}: expected (x, y), a dict with features and labels, or a "
        f"tf.data.Dataset. Received: {type(structure).__name__}."
    )


def _from_dataset(
    cid: str, ds: tf.data.Dataset, keys: tuple[str, str] | None
) -> tuple:
    """Materialises one client's dataset to ``(x, y)`` (or ``(x, y, w)``) numpy arrays;
    ``x`` and ``y`` may be dicts or tuples of arrays."""
    select = _pair_selector(cid, ds.element_spec, keys)
    specs = select(ds.element_spec)
    names = ("features", "labels", "sample weights")
    for what, part in zip(names, specs):
        for spec in tf.nest.flatten(part):
            if not isinstance(spec, tf.TensorSpec):
                raise ClientDataError(
                    f"Client {cid!r}: its dataset's {what} are {type(spec).__name__} "
                    f"({spec}); kerasfed needs dense tensors (one per model input or output)."
                )
    flat_specs = tf.nest.flatten(specs)
    batched = all(
        spec.shape.rank is not None and spec.shape.rank >= 1 and spec.shape[0] is None
        for spec in flat_specs
    )
    if not batched:
        ds = ds.batch(_MATERIALISE_CHUNK)
    parts = []
    try:
        for element in ds.as_numpy_iterator():
            parts.append(select(element))
        if not parts:  # an empty client: keep its declared shape for validate()
            inner = 1 if batched else 0

            def empty(spec: tf.TensorSpec) -> np.ndarray:
                dims = [d or 0 for d in spec.shape.as_list()[inner:]] if spec.shape.rank else []
                dtype = object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
                return np.zeros([0, *dims], dtype)

            return tf.nest.map_structure(empty, specs)
        return tf.nest.map_structure(lambda *chunks: np.concatenate(chunks), *parts)
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise ClientDataError(
            f"Client {cid!r}: its dataset's examples do not have one fixed shape "
            f"({type(e).__name__}: {str(e).splitlines()[0]}). Pad or resize them first."
        ) from None
