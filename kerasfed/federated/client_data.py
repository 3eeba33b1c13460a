"""Clients' in-memory data for federated simulation, and the checks run on it.

A :class:`ClientData` maps client ids to ``(x, y)`` numpy arrays. Simulation
datasets fit in memory, so whatever the user passes (a dict of arrays, a dict of
``tf.data.Dataset``, a ``tff.simulation.datasets.ClientData``) is materialised to
numpy once by :func:`as_client_data`; every later step (validation, sampling,
per-round ``tf.data`` pipelines) then works on plain arrays and is reproducible
from numpy seeds alone.
"""

from __future__ import annotations

import collections.abc
import sys
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

ArrayLike = Any  # anything np.asarray accepts
Seed = int | Sequence[int] | None

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

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float

_ACCEPTED = (
    "a dict {client_id: (x, y)} of numpy arrays (or array-likes), "
    "a dict {client_id: tf.data.Dataset} whose elements are (x, y) or {'x': ..., 'y': ...}, "
    "a kerasfed.ClientData, or a tff.simulation.datasets.ClientData"
)


class ClientDataError(ValueError):
    """Clients' data cannot be used for training; the message names the client."""


class ClientDataTypeError(TypeError):
    """Clients' data was passed as a type kerasfed does not accept."""


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Returns ``value`` as an int, or raises ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"Expected `{name}` to be an int. Received: {name}={value!r} of type "
            f"{type(value).__name__}."
        )
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"Expected `{name}` {bounds}. Received: {name}={value}.")
    return value


def _check_seed(name: str, seed: Seed) -> Seed:
    """Checks a numpy seed: None, an int >= 0, or a sequence of them."""
    if seed is None:
        return None
    parts = seed if isinstance(seed, (list, tuple)) else [seed]
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, np.integer)) or part < 0:
            raise ValueError(
                f"Expected `{name}` to be None, an int >= 0 or a sequence of them. "
                f"Received: {name}={seed!r}."
            )
    return seed


def _readonly_array(cid: str, what: str, value: ArrayLike) -> np.ndarray:
    """Converts one client's features or labels to a read-only numpy array."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise ClientDataError(
            f"Client {cid!r}: its {what} cannot be converted to one numpy array "
            f"({e}). Every client's {what} must be one rectangular numeric array."
        ) from None
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise ClientDataError(
            f"Client {cid!r}: its {what} have dtype {array.dtype}, which is not numeric. "
            f"Expected bool, integer or float arrays; encode strings or ragged data "
            f"as fixed-shape numbers first."
        )
    if array.ndim == 0:
        raise ClientDataError(
            f"Client {cid!r}: its {what} are a scalar; expected an array whose first "
            f"dimension indexes the client's examples."
        )
    # A read-only view: the ClientData stays immutable without copying the data.
    array = array.view()
    array.flags.writeable = False
    return array


class ClientData(collections.abc.Mapping):
    """An immutable mapping ``client_id -> (x, y)`` of numpy arrays.

    Iterating yields the client ids in their given order. ``x`` and ``y`` are
    read-only views (not copies) of the arrays passed in. Per-client structure
    (numeric arrays, equal numbers of features and labels) is checked here;
    properties that involve several clients or the model (equal shapes, label
    range, finiteness, empty clients) are checked by :meth:`validate`.

    Args:
        clients: ``{client_id: (x, y)}`` with ``str`` ids and array-likes.
            Use :func:`as_client_data` for other inputs.

    Raises:
        ClientDataTypeError: ``clients`` is not a mapping of str to pairs.
        ClientDataError: no clients; a client's data is non-numeric, scalar, or
            has different numbers of features and labels.

    Example:
        >>> cd = ClientData({"a": (np.zeros((3, 2)), np.array([0, 1, 1]))})
        >>> cd.num_examples("a")
        3
    """

    def __init__(self, clients: Mapping[str, tuple[ArrayLike, ArrayLike]]):
        if not isinstance(clients, collections.abc.Mapping):
            raise ClientDataTypeError(
                f"ClientData expects a dict {{client_id: (x, y)}}. Received: "
                f"{type(clients).__name__}. Use kerasfed.as_client_data for other inputs."
            )
        if not clients:
            raise ClientDataError("There are no clients: the dict of clients is empty.")
        data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for cid, pair in clients.items():
            if not isinstance(cid, str):
                raise ClientDataTypeError(
                    f"Client ids must be str. Received: {cid!r} of type "
                    f"{type(cid).__name__}. kerasfed.as_client_data converts ids with str()."
                )
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ClientDataTypeError(
                    f"Client {cid!r}: expected an (x, y) pair of arrays. Received: "
                    f"{type(pair).__name__}. Use kerasfed.as_client_data for datasets "
                    f"or dicts of arrays."
                )
            x = _readonly_array(cid, "features", pair[0])
            y = _readonly_array(cid, "labels", pair[1])
            if len(x) != len(y):
                raise ClientDataError(
                    f"Client {cid!r} has {len(x)} feature rows but {len(y)} labels. "
                    f"x and y must have the same first dimension."
                )
            data[cid] = (x, y)
        self._data = data
        self._ids = list(data)

    # -- Mapping -----------------------------------------------------------------
    def __getitem__(self, cid: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._data[cid]
        except (KeyError, TypeError):
            shown = ", ".join(repr(c) for c in self._ids[:5])
            more = ", ..." if len(self._ids) > 5 else ""
            raise KeyError(
                f"Unknown client id {cid!r}. This ClientData has {len(self._ids)} "
                f"clients: [{shown}{more}]."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    # Mapping's __eq__ compares values, which is ambiguous for numpy arrays.
    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        total = sum(len(x) for x, _ in self._data.values())
        return (
            f"ClientData({len(self)} clients, {total} examples, "
            f"x: {self.feature_shape} {self.feature_dtype}, "
            f"y: {self.label_shape} {self.label_dtype})"
        )

    # -- Structure ---------------------------------------------------------------
    @property
    def client_ids(self) -> list[str]:
        """The client ids, in order (a new list)."""
        return list(self._ids)

    def num_examples(self, cid: str) -> int:
        """The number of examples of client ``cid``."""
        return len(self[cid][0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one example's features (first client's; see :meth:`validate`)."""
        return self._data[self._ids[0]][0].shape[1:]

    @property
    def feature_dtype(self) -> np.dtype:
        """The features' numpy dtype (first client's)."""
        return self._data[self._ids[0]][0].dtype

    @property
    def label_shape(self) -> tuple[int, ...]:
        """The shape of one example's label (first client's): ``()`` for sparse labels."""
        return self._data[self._ids[0]][1].shape[1:]

    @property
    def label_dtype(self) -> np.dtype:
        """The labels' numpy dtype (first client's)."""
        return self._data[self._ids[0]][1].dtype

    @property
    def element_spec(self) -> tuple[tf.TensorSpec, tf.TensorSpec]:
        """The ``(x, y)`` spec of the batches :meth:`dataset` yields (batch dim None)."""
        return (
            tf.TensorSpec((None, *self.feature_shape), tf.as_dtype(self.feature_dtype)),
            tf.TensorSpec((None, *self.label_shape), tf.as_dtype(self.label_dtype)),
        )

    # -- Pipelines ---------------------------------------------------------------
    def dataset(
        self,
        cid: str,
        *,
        batch_size: int,
        epochs: int = 1,
        shuffle: bool = True,
        shuffle_seed: Seed = None,
    ) -> tf.data.Dataset:
        """The client's examples as a ``tf.data.Dataset`` of ``(x, y)`` batches.

        Each epoch is a fresh permutation of the client's examples cut into
        batches of ``batch_size`` (the last one may be smaller); batches never
        span two epochs, as in Keras ``fit`` and the FedAvg paper's local epochs.
        The order is drawn with numpy when the dataset is built, so it is the
        same every time this dataset is iterated: build a new dataset (with a
        new seed) for each round.

        Args:
            cid: The client id.
            batch_size: Examples per batch, >= 1.
            epochs: Local epochs, >= 1 (default 1).
            shuffle: Whether to permute the examples in each epoch (default True).
            shuffle_seed: Seed for ``np.random.default_rng`` (an int or a
                sequence of ints, e.g. ``(seed, round_num)``); None (default)
                draws a fresh one.

        Returns:
            A dataset whose element spec is :attr:`element_spec`.

        Raises:
            KeyError: unknown ``cid``.
            ValueError, TypeError: bad ``batch_size``, ``epochs`` or ``shuffle_seed``.
        """
        x, y = self[cid]
        batch_size = check_int("batch_size", batch_size, 1)
        epochs = check_int("epochs", epochs, 1)
        n = len(x)
        _warn_seed_without_shuffle(shuffle, shuffle_seed)
        if shuffle:
            rng = np.random.default_rng(_check_seed("shuffle_seed", shuffle_seed))
            order = np.stack([rng.permutation(n) for _ in range(epochs)])
        else:
            order = np.tile(np.arange(n), (epochs, 1))
        return _batches_in_order(x, y, order.astype(np.int64), batch_size)

    def datasets(
        self,
        cids: Iterable[str] | None = None,
        *,
        batch_size: int,
        epochs: int = 1,
        shuffle: bool = True,
        shuffle_seed: Seed = None,
    ) -> list[tf.data.Dataset]:
        """:meth:`dataset` for several clients (all when ``cids`` is None).

        With a ``shuffle_seed``, each client gets its own seed derived from
        ``shuffle_seed`` and its id, so that a client's order does not depend on
        which other clients were sampled with it.
        """
        cids = self._ids if cids is None else list(cids)
        _warn_seed_without_shuffle(shuffle, shuffle_seed)
        if not shuffle:
            shuffle_seed = None  # warned once here, not once per client
        _check_seed("shuffle_seed", shuffle_seed)
        return [
            self.dataset(
                cid,
                batch_size=batch_size,
                epochs=epochs,
                shuffle=shuffle,
                shuffle_seed=_client_seed(shuffle_seed, cid),
            )
            for cid in cids
        ]

    # -- Derived views -----------------------------------------------------------
    def subset(self, cids: Iterable[str]) -> ClientData:
        """A ClientData with only ``cids``, in that order (data not copied)."""
        cids = list(cids)
        if len(set(cids)) != len(cids):
            raise ValueError(f"`cids` contains duplicates: {cids!r}.")
        return ClientData({cid: self[cid] for cid in cids})

    def label_counts(self, num_classes: int | None = None) -> np.ndarray:
        """Examples per class for each client, to inspect how non-IID a split is.

        Args:
            num_classes: Number of classes; None (default) infers ``max label + 1``
                (sparse labels) or the one-hot width.

        Returns:
            An int64 array of shape ``(len(self), num_classes)``, rows in
            :attr:`client_ids` order. One-hot labels are counted by argmax.

        Raises:
            ClientDataError: labels that are not class indices or one-hot rows,
                or out of ``[0, num_classes)``.
        """
        classes = {cid: _class_indices(cid, y) for cid, (_, y) in self._data.items()}
        if num_classes is None:
            tops = [c.max() for c in classes.values() if len(c)]
            widths = [y.shape[1] for _, y in self._data.values() if y.ndim == 2 and y.shape[1] > 1]
            num_classes = max([int(t) + 1 for t in tops] + widths + [1])
        num_classes = check_int("num_classes", num_classes, 1)
        rows = []
        for cid, c in classes.items():
            if len(c) and c.max() >= num_classes:
                raise ClientDataError(
                    f"Client {cid!r} has label {int(c.max())}; expected labels in "
                    f"[0, {num_classes}) for num_classes={num_classes}."
                )
            rows.append(np.bincount(c, minlength=num_classes))
        return np.stack(rows).astype(np.int64)

    # -- Checks ------------------------------------------------------------------
    def validate(
        self, *, num_classes: int | None = None, sparse_labels: bool | None = None
    ) -> None:
        """Checks that every client can be trained on; raises naming the client.

        Checks, for each client: it has at least one example; its per-example
        feature and label shapes and dtypes equal the first client's; float
        features and labels are finite; labels fit the model (below). Non-numeric
        data and unequal numbers of features and labels were already rejected
        (also with ClientDataError) when the ClientData was built.

        Args:
            num_classes: The model's number of classes, or None (default) for no
                label-range check (e.g. regression).
            sparse_labels: True for integer class labels of shape ``(n,)`` or
                ``(n, 1)`` (sparse categorical losses), False for one-hot / dense
                labels of shape ``(n, num_classes)``, None (default) to infer from
                the labels' shape when ``num_classes`` is given. For 0/1 labels
                and one sigmoid output unit pass ``num_classes=2``.

        Raises:
            ClientDataError: the first problem found, naming the client.
            ValueError, TypeError: bad ``num_classes`` or ``sparse_labels``.
        """
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, 1)
        if sparse_labels is not None and not isinstance(sparse_labels, bool):
            raise TypeError(
                f"Expected `sparse_labels` to be True, False or None. "
                f"Received: sparse_labels={sparse_labels!r}."
            )
        first = self._ids[0]
        fx, fy = self._data[first]
        for cid, (x, y) in self._data.items():
            if len(x) == 0:
                raise ClientDataError(
                    f"Client {cid!r} has no examples. Every client needs at least one; "
                    f"drop it (e.g. client_data.subset(...)) or partition differently."
                )
            _check_same(cid, first, "features", x, fx)
            _check_same(cid, first, "labels", y, fy)
            _check_finite(cid, "features", x)
            _check_finite(cid, "labels", y)
            _check_labels(cid, y, num_classes, sparse_labels)


def _batches_in_order(
    x: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int
) -> tf.data.Dataset:
    """A dataset of ``(x[i], y[i])`` batches for each row ``i`` of ``order``.

    Each epoch's examples are gathered with numpy and sliced by ``tf.data``
    without any traced function: a round builds one dataset per sampled client,
    and tracing a ``map``/``flat_map`` function for each of them cost more than
    the data it moves (about 30 ms per client on 2 cores).
    """
    epochs = [
        tf.data.Dataset.from_tensor_slices((x[row], y[row])).batch(batch_size) for row in order
    ]
    dataset = epochs[0]
    for epoch in epochs[1:]:  # batches never span two epochs
        dataset = dataset.concatenate(epoch)
    return dataset


def _warn_seed_without_shuffle(shuffle: bool, shuffle_seed: Seed) -> None:
    if not shuffle and shuffle_seed is not None:
        warnings.warn(
            "`shuffle_seed` has no effect with shuffle=False: examples keep their order.",
            stacklevel=3,  # _warn_seed_without_shuffle < dataset(s) < caller
        )


def _client_seed(seed: Seed, cid: str) -> Seed:
    """A per-client seed from a round seed and the client id (stable across runs)."""
    if seed is None:
        return None
    parts = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    return [int(p) for p in parts] + [zlib.crc32(cid.encode("utf-8"))]


def _check_same(cid: str, first: str, what: str, a: np.ndarray, ref: np.ndarray) -> None:
    if a.shape[1:] != ref.shape[1:] or a.dtype != ref.dtype:
        raise ClientDataError(
            f"Client {cid!r} has {what} of per-example shape {a.shape[1:]} and dtype "
            f"{a.dtype}, but client {first!r} has shape {ref.shape[1:]} and dtype "
            f"{ref.dtype}. All clients must share one shape and dtype; convert them "
            f"(e.g. .astype(np.float32)) before training."
        )


def _check_finite(cid: str, what: str, a: np.ndarray) -> None:
    if a.dtype.kind != "f":
        return
    finite = np.isfinite(a)
    if not finite.all():
        nans = int(np.isnan(a).sum())
        infs = int(a.size - finite.sum()) - nans
        raise ClientDataError(
            f"Client {cid!r} has {nans} NaN and {infs} infinite values in its {what}. "
            f"Remove or impute them before training."
        )


def _check_labels(
    cid: str, y: np.ndarray, num_classes: int | None, sparse_labels: bool | None
) -> None:
    trailing = y.shape[1:]
    if sparse_labels is None:
        if num_classes is None:
            return  # nothing to check against
        sparse_labels = trailing in ((), (1,))
    if not sparse_labels:
        if num_classes is not None and trailing != (num_classes,):
            raise ClientDataError(
                f"Client {cid!r} has labels of per-example shape {trailing}, but the "
                f"model has {num_classes} classes, so one-hot labels need shape "
                f"({num_classes},). Use integer labels with a sparse loss, or one-hot "
                f"encode with {num_classes} columns."
            )
        return
    if trailing not in ((), (1,)):
        raise ClientDataError(
            f"Client {cid!r} has labels of per-example shape {trailing}; sparse "
            f"(integer) labels need shape (n,) or (n, 1). For one-hot labels use a "
            f"categorical (not sparse) loss."
        )
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise ClientDataError(
            f"Client {cid!r} has non-integer values in its labels (dtype {y.dtype}), "
            f"but sparse labels are class indices."
        )
    low, high = y.min().item(), y.max().item()  # Python scalars print plainly
    if low < 0 or (num_classes is not None and high >= num_classes):
        bad = low if low < 0 else high
        allowed = ">= 0" if num_classes is None else f"in [0, {num_classes})"
        raise ClientDataError(
            f"Client {cid!r} has label {bad!r}; sparse labels must be class indices "
            f"{allowed}. Check the model's number of output units or remap the labels."
        )


def _class_indices(cid: str, y: np.ndarray) -> np.ndarray:
    """Class index per example from sparse or one-hot labels."""
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1) if len(y) else np.zeros(0, np.int64)
    flat = y.reshape(len(y), -1)
    if flat.shape[1] != 1 or (y.dtype.kind == "f" and not np.array_equal(y, np.round(y))):
        raise ClientDataError(
            f"Client {cid!r}: labels of per-example shape {y.shape[1:]} and dtype "
            f"{y.dtype} are neither class indices nor one-hot rows."
        )
    flat = flat[:, 0]
    if len(flat) and flat.min() < 0:
        raise ClientDataError(f"Client {cid!r} has negative label {flat.min().item()!r}.")
    return flat.astype(np.int64)


# -- Conversion --------------------------------------------------------------------


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
    * a ``tff.simulation.datasets.ClientData`` (each client's dataset as above).

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
        raise ValueError(
            f"Pass both `feature_key` and `label_key`, or neither. Received: "
            f"feature_key={feature_key!r}, label_key={label_key!r}."
        )
    keys = None if feature_key is None else (feature_key, label_key)
    if isinstance(clients, ClientData):
        return clients
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
        if isinstance(clients, (tuple, list)) and len(clients) == 2:
            hint = " To split one (x, y) dataset into clients use kerasfed.partition(x, y, num_clients)."
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
        if len(structure) != 2:
            raise ClientDataError(
                f"Client {cid!r}: expected (x, y) pairs, got a {type(structure).__name__} "
                f"of length {len(structure)}."
            )
        return lambda s: (s[0], s[1])
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
) -> tuple[np.ndarray, np.ndarray]:
    """Materialises one client's dataset to ``(x, y)`` numpy arrays."""
    select = _pair_selector(cid, ds.element_spec, keys)
    x_spec, y_spec = select(ds.element_spec)
    for what, spec in (("features", x_spec), ("labels", y_spec)):
        if not isinstance(spec, tf.TensorSpec):
            raise ClientDataError(
                f"Client {cid!r}: its dataset's {what} are {type(spec).__name__} "
                f"({spec}); kerasfed needs one dense tensor each for features and labels."
            )
    batched = (
        x_spec.shape.rank is not None
        and y_spec.shape.rank is not None
        and x_spec.shape.rank >= 1
        and y_spec.shape.rank >= 1
        and x_spec.shape[0] is None
        and y_spec.shape[0] is None
    )
    if not batched:
        ds = ds.batch(_MATERIALISE_CHUNK)
    xs, ys = [], []
    try:
        for element in ds.as_numpy_iterator():
            x, y = select(element)
            xs.append(x)
            ys.append(y)
        if not xs:  # an empty client: keep its declared shape for validate()
            inner = 1 if batched else 0

            def empty(spec: tf.TensorSpec) -> np.ndarray:
                dims = [d or 0 for d in spec.shape.as_list()[inner:]] if spec.shape.rank else []
                return np.zeros([0, *dims], spec.dtype.as_numpy_dtype)

            return empty(x_spec), empty(y_spec)
        return np.concatenate(xs), np.concatenate(ys)
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise ClientDataError(
            f"Client {cid!r}: its dataset's examples do not have one fixed shape "
            f"({type(e).__name__}: {str(e).splitlines()[0]}). Pad or resize them first."
        ) from None


# -- Sampling ----------------------------------------------------------------------


def sample_clients(
    client_ids: Iterable[str],
    clients_per_round: int | None,
    round_num: int,
    seed: int | None,
) -> list[str]:
    """The clients that take part in round ``round_num``.

    Sampling is without replacement and depends only on ``(seed, round_num)``
    (``np.random.default_rng([seed, round_num])``), so a resumed run samples the
    same clients in the same rounds. The result keeps ``client_ids`` order.

    Args:
        client_ids: All client ids (a list, or a ClientData).
        clients_per_round: How many to sample, in [1, number of clients]; None
            means all clients, in order.
        round_num: The round, >= 0.
        seed: An int >= 0, or None for fresh randomness every call.

    Returns:
        The sampled client ids.

    Raises:
        ValueError, TypeError: no clients, or a bad argument.

    Example:
        >>> sample_clients(["a", "b", "c"], 2, round_num=0, seed=1)  # doctest: +SKIP
        ['a', 'c']
    """
    ids = list(client_ids)
    if not ids:
        raise ValueError("`client_ids` is empty: there are no clients to sample from.")
    round_num = check_int("round_num", round_num, 0)
    if seed is not None:
        seed = check_int("seed", seed, 0)
    if clients_per_round is None:
        return ids
    clients_per_round = check_int("clients_per_round", clients_per_round, 1, len(ids))
    rng = np.random.default_rng(None if seed is None else [seed, round_num])
    chosen = np.sort(rng.choice(len(ids), size=clients_per_round, replace=False))
    return [ids[i] for i in chosen]
