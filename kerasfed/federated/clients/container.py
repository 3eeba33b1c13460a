"""The :class:`ClientData` mapping: clients' ``(x, y)`` or ``(x, y, sample_weight)`` arrays.

``x`` and ``y`` are each one numpy array or a dict/list/tuple of them (models
with several inputs or outputs, see ``structure.py``); ``sample_weight`` is one
float array of one weight per example.

Every input kind is materialised to numpy once (see :func:`as_client_data`),
except clients on disk (``ClientData.from_directory`` / ``from_sqlite``), which
are read when a round asks for them; validation, sampling and the per-round
``tf.data`` pipelines then work on plain arrays, reproducible from numpy seeds.
"""

from __future__ import annotations

import collections.abc
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed.errors import ArgumentError
from kerasfed.federated.clients import structure, validation
from kerasfed.federated.clients.validation import client_name
from kerasfed.federated.clients.arguments import ArrayLike, Seed, check_int, check_seed
from kerasfed.federated.clients.errors import ClientDataError, ClientDataTypeError
from kerasfed.federated.clients.pipelines import batches_in_order, warn_seed_without_shuffle
from kerasfed.federated.clients.sampling import epoch_orders, per_client_seed

class ClientData(collections.abc.Mapping):
    """An immutable mapping ``client_id -> (x, y)`` or ``(x, y, sample_weight)``.

    ``x`` and ``y`` are numpy arrays, or dicts/lists/tuples of them for models with
    several inputs or outputs; ``sample_weight`` (optional) has one float weight per
    example. Either every client has sample weights or none has.

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
            data[cid] = _entry(cid, pair)
        weighted = {len(entry) == 3 for entry in data.values()}
        if len(weighted) > 1:
            raise ClientDataError(
                "Some clients have sample weights (x, y, sample_weight) and others do not "
                "(x, y). Give every client sample weights (ones where none are meant), or none."
            )
        self._data = data
        self._ids = list(data)

    @classmethod
    def _of_store(cls, store: Any) -> ClientData:
        # Data read when a client is asked for (on_disk.ClientStore); nothing loaded here.
        data = cls.__new__(cls)
        data._data = store
        data._ids = list(store)
        if not data._ids:
            raise ClientDataError(f"There are no clients in {store.description}.")
        return data

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> ClientData:
        """Clients on disk, written by ``kerasfed.write_client_data``: only an
        index is read now; each client's arrays when a round samples it."""
        from kerasfed.federated.clients.on_disk import open_client_directory

        return cls._of_store(open_client_directory(directory))

    @classmethod
    def from_sqlite(cls, path: str | os.PathLike, *, split: str | None = None,
                    feature_key: str = "pixels", label_key: str = "label",
                    feature_shape: tuple[int, ...] | None = None) -> ClientData:
        """Clients of a TFF SQLite client-data file, read per client when sampled
        (see ``on_disk.open_sqlite_client_data`` for the arguments)."""
        from kerasfed.federated.clients.on_disk import open_sqlite_client_data

        return cls._of_store(open_sqlite_client_data(
            path, split=split, feature_key=feature_key, label_key=label_key,
            feature_shape=feature_shape))

    @property
    def on_disk(self) -> bool:
        """Whether clients' arrays are read from disk when asked for."""
        return not isinstance(self._data, dict)

    # -- Mapping -----------------------------------------------------------------
    def __getitem__(self, cid: str) -> tuple:
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
        total = sum(self.num_examples(cid) for cid in self._ids)
        weights = ", with sample weights" if self.has_sample_weights else ""
        return (
            f"ClientData({len(self)} clients, {total} examples, "
            f"x: {self.feature_shape} {self.feature_dtype}, "
            f"y: {self.label_shape} {self.label_dtype}{weights})"
        )

    # -- Structure ---------------------------------------------------------------
    @property
    def client_ids(self) -> list[str]:
        """The client ids, in order (a new list)."""
        return list(self._ids)

    def num_examples(self, cid: str) -> int:
        """The number of examples of client ``cid`` (from the index when on disk)."""
        counter = getattr(self._data, "num_examples", None)
        if counter is not None and cid in self._data:
            return counter(cid)
        return structure.num_rows(self[cid][0])

    @property
    def _first(self) -> tuple:
        return self._data[self._ids[0]]

    @property
    def structured(self) -> bool:
        """Whether ``x`` or ``y`` is a dict/list/tuple of arrays rather than one array."""
        if self.on_disk:
            return False
        x, y = self._first[:2]
        return structure.is_structured(x) or structure.is_structured(y)

    @property
    def has_sample_weights(self) -> bool:
        """Whether the clients are ``(x, y, sample_weight)``."""
        return not self.on_disk and len(self._first) == 3

    @property
    def has_strings(self) -> bool:
        """Whether some features or labels are strings."""
        return not self.on_disk and structure.has_strings(self._first[:2])

    @property
    def feature_shape(self) -> Any:
        """The shape of one example's features (first client's; see :meth:`validate`);
        a structure of shapes for structured features."""
        if self.on_disk:
            return self._data.spec[0]
        return structure.map_leaves(lambda a: a.shape[1:], self._first[0])

    @property
    def feature_dtype(self) -> Any:
        """The features' numpy dtype (first client's; ``object`` for strings)."""
        if self.on_disk:
            return self._data.spec[1]
        return structure.map_leaves(lambda a: a.dtype, self._first[0])

    @property
    def label_shape(self) -> Any:
        """The shape of one example's label (first client's): ``()`` for sparse labels."""
        if self.on_disk:
            return self._data.spec[2]
        return structure.map_leaves(lambda a: a.shape[1:], self._first[1])

    @property
    def label_dtype(self) -> Any:
        """The labels' numpy dtype (first client's)."""
        if self.on_disk:
            return self._data.spec[3]
        return structure.map_leaves(lambda a: a.dtype, self._first[1])

    @property
    def element_spec(self) -> tuple:
        """The ``(x, y)`` spec of the batches :meth:`dataset` yields (batch dim None);
        ``(x, y, sample_weight)`` for clients with sample weights."""
        if self.on_disk:
            return (
                tf.TensorSpec((None, *self.feature_shape), tf.as_dtype(self.feature_dtype)),
                tf.TensorSpec((None, *self.label_shape), tf.as_dtype(self.label_dtype)),
            )
        return tuple(structure.specs(part) for part in self._first)

    def map_labels(self, fn: Any) -> ClientData:
        """A ClientData whose labels are ``fn(y)`` (arrays not copied)."""
        if self.on_disk:
            return self
        return ClientData({cid: (entry[0], fn(entry[1]), *entry[2:])
                           for cid, entry in self._data.items()})

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
        The order (:func:`epoch_orders`) is drawn with numpy when the dataset
        is built, so it is the same every time this dataset is iterated: build
        a new dataset (with a new seed) for each round.

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
            ArgumentError, ArgumentTypeError: bad ``batch_size``, ``epochs`` or ``shuffle_seed``.
        """
        entry = self[cid]
        batch_size = check_int("batch_size", batch_size, 1)
        epochs = check_int("epochs", epochs, 1)
        warn_seed_without_shuffle(shuffle, shuffle_seed)
        if shuffle:  # checked here so that the error names `shuffle_seed`
            check_seed("shuffle_seed", shuffle_seed)
        order = epoch_orders(structure.num_rows(entry[0]), epochs=epochs, shuffle=shuffle,
                             seed=shuffle_seed)
        return batches_in_order(*entry[:2], order, batch_size, *entry[2:])

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
        warn_seed_without_shuffle(shuffle, shuffle_seed)
        if not shuffle:
            shuffle_seed = None  # warned once here, not once per client
        check_seed("shuffle_seed", shuffle_seed)
        return [
            self.dataset(
                cid,
                batch_size=batch_size,
                epochs=epochs,
                shuffle=shuffle,
                shuffle_seed=per_client_seed(shuffle_seed, cid),
            )
            for cid in cids
        ]

    # -- Derived views -----------------------------------------------------------
    def subset(self, cids: Iterable[str]) -> ClientData:
        """A ClientData with only ``cids``, in that order (data not copied)."""
        cids = list(cids)
        if len(set(cids)) != len(cids):
            raise ArgumentError(f"`cids` contains duplicates: {cids!r}.")
        if self.on_disk:
            for cid in cids:
                if cid not in self._data:
                    self[cid]  # raises the KeyError that names the known ids
            return ClientData._of_store(self._data.subset(cids))
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
        return validation.label_counts(self._data, num_classes)

    # -- Checks ------------------------------------------------------------------
    def validate(
        self, *, num_classes: int | None = None, sparse_labels: bool | None = None,
        label_rules: Any = None,
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
            label_rules: For labels that are a structure (several outputs): a
                sequence of ``(output_name, num_classes, sparse_labels)``, one per
                leaf of ``y`` in ``tf.nest`` order; replaces the two above.

        Raises:
            ClientDataError: the first problem found, naming the client.
            ArgumentError, ArgumentTypeError: bad ``num_classes`` or ``sparse_labels``.
        """
        validation.validate(self._data, num_classes=num_classes, sparse_labels=sparse_labels,
                            label_rules=label_rules)


def _entry(cid: str, value: Any) -> tuple:
    """One client's ``(x, y)`` or ``(x, y, sample_weight)`` as read-only arrays."""
    if not (isinstance(value, (tuple, list)) and len(value) in (2, 3)):
        raise ClientDataTypeError(
            f"Client {cid!r}: expected an (x, y) pair of arrays. Received: "
            f"{type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
            + ". Pass (x, y) or (x, y, sample_weight); use kerasfed.as_client_data for "
            "datasets or dicts of arrays."
        )
    x = structure.readonly_leaves(cid, "features", value[0])
    y = structure.readonly_leaves(cid, "labels", value[1])
    entry: tuple = (x, y)
    if len(value) == 3 and value[2] is not None:
        w = structure.readonly_array(cid, "sample weights", value[2])
        if w.ndim != 1 or w.dtype.kind not in "biuf":
            raise ClientDataError(
                f"Client {cid!r}: its sample weights have shape {w.shape} and dtype "
                f"{w.dtype}; expected one number per example, shape ({len(w)},).")
        if w.dtype != np.float32:
            w = structure.readonly_array(cid, "sample weights", w.astype(np.float32))
        entry = (x, y, w)
    structure.check_rows(cid, entry)
    return entry
