"""Clients whose data lives on disk and is read when a round samples them.

Three layouts, each opened as a :class:`ClientData` that holds only an index
(client ids and example counts) and reads a client's arrays when asked for them,
so a run over 10,000 clients keeps only the sampled clients' data in memory:

* a kerasfed client directory, written by :func:`write_client_data`: an index
  ``clients.json`` and per-client files, ``<n>.x.npy``/``<n>.y.npy`` (read
  memory-mapped) or ``<n>.tfrecord`` (one ``tf.train.Example`` per example with
  the raw bytes of ``x`` and ``y``);
* TFF's SQLite client data (``tff.simulation.datasets.save_to_sql_client_data``:
  tables ``examples`` and ``client_metadata``), read with ``sqlite3`` and parsed
  with ``tf.train.Example``, without TFF.

The index is written last (atomically), so a half-written directory never opens.
"""

from __future__ import annotations

import collections.abc
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed.federated.clients.errors import ClientDataError, ClientDataTypeError

INDEX_FILE = "clients.json"
_FORMAT = "kerasfed-clients/1"
STORAGES = ("npy", "tfrecord")


class ClientStore(collections.abc.Mapping):
    """A read-on-access mapping ``client_id -> (x, y)`` with known example counts."""

    def __init__(self, counts: dict[str, int], load: Callable[[str], tuple[np.ndarray, np.ndarray]],
                 description: str, spec: tuple | None = None):
        self._counts = counts
        self._load = load
        self.description = description
        self._spec = spec

    @property
    def spec(self) -> tuple[tuple, np.dtype, tuple, np.dtype]:
        """(feature shape, feature dtype, label shape, label dtype) of one example:
        from the index, or read once from the first client."""
        if self._spec is None:
            x, y = self[next(iter(self._counts))]
            self._spec = (x.shape[1:], x.dtype, y.shape[1:], y.dtype)
        return self._spec

    def __contains__(self, cid: object) -> bool:  # Mapping's would read the client
        return cid in self._counts

    def __getitem__(self, cid: str) -> tuple[np.ndarray, np.ndarray]:
        if cid not in self._counts:
            raise KeyError(cid)
        x, y = self._load(cid)
        for array in (x, y):
            if array.flags.writeable:
                array.flags.writeable = False
        return x, y

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def num_examples(self, cid: str) -> int:
        return self._counts[cid]

    def subset(self, cids: list[str]) -> ClientStore:
        return ClientStore({c: self._counts[c] for c in cids}, self._load, self.description,
                           self._spec)


# -- The kerasfed directory ------------------------------------------------------------------
def write_client_data(clients: Any, directory: str | os.PathLike, *, storage: str = "npy",
                      overwrite: bool = False) -> str:
    """Writes clients to ``directory`` in kerasfed's on-disk layout; returns its path.

    Args:
      clients: Anything ``fit_federated`` accepts as clients (``{id: (x, y)}``, the
        result of ``kerasfed.partition``, a ClientData, ...).
      directory: A new or empty directory (created if missing).
      storage: ``"npy"`` (default; read memory-mapped) or ``"tfrecord"``.
      overwrite: Replace an existing kerasfed client directory there (default False).

    Raises:
      ClientDataError: ``directory`` is not empty (and not ``overwrite``), or a bad
        ``storage``.

    Example:
      >>> write_client_data({"a": (x, y)}, "clients/")  # doctest: +SKIP
      >>> kerasfed.fit_federated(model, "clients/", rounds=5)  # doctest: +SKIP
    """
    from kerasfed.federated.clients.conversion import as_client_data

    if storage not in STORAGES:
        raise ClientDataError(
            f"write_client_data: expected `storage` to be one of {list(STORAGES)}. "
            f"Received: storage={storage!r}."
        )
    data = as_client_data(clients)
    if data.structured or data.has_sample_weights or data.has_strings:
        what = ("sample weights" if data.has_sample_weights else
                "string features or labels" if not data.structured else
                "several arrays of features or labels (dicts, lists or tuples)")
        raise ClientDataError(
            f"write_client_data: these clients have {what}; clients on disk hold one "
            f"numeric x array and one y array per client. Pass such clients to "
            f"fit_federated in memory (a dict or a kerasfed.ClientData) instead."
        )
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    existing = os.listdir(directory)
    if existing and not (overwrite and INDEX_FILE in existing):
        raise ClientDataError(
            f"write_client_data: {directory!r} is not empty ({len(existing)} entries). Pass "
            f"a new or empty directory" + (", or overwrite=True to replace a kerasfed client "
                                           "directory" if INDEX_FILE in existing else "") + "."
        )
    if overwrite:
        for name in existing:
            if name == INDEX_FILE or name.endswith((".npy", ".tfrecord")):
                os.unlink(os.path.join(directory, name))
    entries = []
    for i, cid in enumerate(data.client_ids):
        x, y = data[cid]
        stem = f"{i:06d}"
        if storage == "npy":
            np.save(os.path.join(directory, f"{stem}.x.npy"), np.ascontiguousarray(x))
            np.save(os.path.join(directory, f"{stem}.y.npy"), np.ascontiguousarray(y))
        else:
            with tf.io.TFRecordWriter(os.path.join(directory, f"{stem}.tfrecord")) as writer:
                for xi, yi in zip(x, y):
                    writer.write(_example(xi, yi))
        entries.append([cid, stem, int(len(x))])
    index = {
        "format": _FORMAT, "storage": storage,
        "x": {"shape": list(data.feature_shape), "dtype": data.feature_dtype.str},
        "y": {"shape": list(data.label_shape), "dtype": data.label_dtype.str},
        "clients": entries,
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".clients-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(index, f)
    os.replace(tmp, os.path.join(directory, INDEX_FILE))
    return directory


def _example(x: np.ndarray, y: np.ndarray) -> bytes:
    feature = {
        "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.asarray(x).tobytes()])),
        "y": tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.asarray(y).tobytes()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def open_client_directory(directory: str | os.PathLike) -> ClientStore:
    """The clients of a directory written by :func:`write_client_data`."""
    directory = os.fspath(directory)
    path = os.path.join(directory, INDEX_FILE)
    try:
        with open(path) as f:
            index = json.load(f)
        if index.get("format") != _FORMAT:
            raise ValueError(f"unknown format {index.get('format')!r}")
        storage = index["storage"]
        x_spec = (tuple(index["x"]["shape"]), np.dtype(index["x"]["dtype"]))
        y_spec = (tuple(index["y"]["shape"]), np.dtype(index["y"]["dtype"]))
        entries = {str(cid): (stem, int(n)) for cid, stem, n in index["clients"]}
    except FileNotFoundError:
        raise ClientDataError(
            f"{directory!r} has no {INDEX_FILE}: it is not a kerasfed client directory. "
            f"Write one with kerasfed.write_client_data(clients, directory)."
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise ClientDataError(
            f"{path} cannot be read as a kerasfed client index ({type(e).__name__}: {e}). "
            f"Write the directory again with kerasfed.write_client_data."
        ) from None

    def load(cid: str) -> tuple[np.ndarray, np.ndarray]:
        stem, n = entries[cid]
        base = os.path.join(directory, stem)
        try:
            if storage == "npy":
                return (np.load(base + ".x.npy", mmap_mode="r"),
                        np.load(base + ".y.npy", mmap_mode="r"))
            return _read_tfrecord(base + ".tfrecord", x_spec, y_spec)
        except (OSError, ValueError) as e:
            raise ClientDataError(
                f"Client {cid!r}: its file {base}.* in {directory!r} cannot be read "
                f"({type(e).__name__}: {e}). Write the directory again."
            ) from None

    return ClientStore({cid: n for cid, (_, n) in entries.items()}, load,
                       f"kerasfed client directory {directory!r} ({storage})",
                       spec=(x_spec[0], x_spec[1], y_spec[0], y_spec[1]))


def _read_tfrecord(path: str, x_spec: tuple, y_spec: tuple) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        features = tf.train.Example.FromString(record).features.feature
        xs.append(np.frombuffer(features["x"].bytes_list.value[0], x_spec[1]).reshape(x_spec[0]))
        ys.append(np.frombuffer(features["y"].bytes_list.value[0], y_spec[1]).reshape(y_spec[0]))
    return (np.stack(xs) if xs else np.zeros((0, *x_spec[0]), x_spec[1]),
            np.stack(ys) if ys else np.zeros((0, *y_spec[0]), y_spec[1]))


# -- TFF's SQLite client data -----------------------------------------------------------------
def open_sqlite_client_data(path: str | os.PathLike, *, split: str | None = None,
                            feature_key: str = "pixels", label_key: str = "label",
                            feature_shape: tuple[int, ...] | None = None) -> ClientStore:
    """The clients of a TFF SQLite client-data file (e.g. TFF's EMNIST/FEMNIST).

    Args:
      path: The ``.sqlite`` file (``tff.simulation.datasets.save_to_sql_client_data``).
      split: The split to read (``split_name`` column), or None if there is one.
      feature_key, label_key: The ``tf.train.Example`` features holding x and y
        (default ``"pixels"``/``"label"``, as TFF's EMNIST).
      feature_shape: Shape of one example's features (default: as stored, flat).

    Raises:
      ClientDataError: not such a file, an unknown split or keys.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ClientDataError(f"{path!r} is not a file: expected a TFF SQLite client-data file.")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            splits = [r[0] for r in db.execute("SELECT DISTINCT split_name FROM client_metadata")]
            if split is None:
                if len(splits) != 1:
                    raise ClientDataError(
                        f"{path!r} has the splits {splits}: pass split=... to choose one.")
                split = splits[0]
            elif split not in splits:
                raise ClientDataError(f"{path!r} has no split {split!r}; it has {splits}.")
            rows = db.execute("SELECT client_id, num_examples FROM client_metadata WHERE "
                              "split_name = ? ORDER BY rowid", (split,)).fetchall()
    except sqlite3.DatabaseError as e:
        raise ClientDataError(
            f"{path!r} cannot be read as TFF SQLite client data ({e}). Expected the tables "
            f"`examples` and `client_metadata` that tff.simulation.datasets writes."
        ) from None
    counts = {str(cid): int(n) for cid, n in rows}

    def load(cid: str) -> tuple[np.ndarray, np.ndarray]:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            blobs = db.execute("SELECT serialized_example_proto FROM examples WHERE "
                               "split_name = ? AND client_id = ? ORDER BY rowid",
                               (split, cid)).fetchall()
        xs, ys = [], []
        for (blob,) in blobs:
            features = tf.train.Example.FromString(blob).features.feature
            for key in (feature_key, label_key):
                if key not in features:
                    raise ClientDataError(
                        f"Client {cid!r} in {path!r}: no feature {key!r}; the examples have "
                        f"{sorted(features)}. Pass feature_key=... and label_key=...")
            xs.append(_feature_values(features[feature_key]))
            ys.append(_feature_values(features[label_key]))
        x = np.stack(xs)
        if feature_shape is not None:
            x = x.reshape((len(x), *feature_shape))
        y = np.stack(ys)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        return x, y

    return ClientStore(counts, load, f"TFF SQLite client data {path!r} (split {split!r})")


def _feature_values(feature: tf.train.Feature) -> np.ndarray:
    kind = feature.WhichOneof("kind")
    if kind == "float_list":
        return np.asarray(feature.float_list.value, np.float32)
    if kind == "int64_list":
        return np.asarray(feature.int64_list.value, np.int32)
    raise ClientDataTypeError(
        f"A feature holds {kind}; kerasfed reads float and int64 features only.")
