"""Clients on disk: kerasfed's directory layout (npy, TFRecord) and TFF's SQLite files,
read per client; ``fit_federated`` on them equals the in-memory run."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.federated.clients import ClientData, sample_clients
from kerasfed.federated.clients.on_disk import ClientStore, open_client_directory

pytestmark = pytest.mark.native
needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")


def _clients(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return {f"client/{i}": (rng.random((4 + i, 5)).astype("float32"),
                            rng.integers(0, 3, 4 + i).astype("int32")) for i in range(n)}


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.mark.parametrize("storage", ["npy", "tfrecord"])
def test_written_clients_read_back_equal(tmp_path, storage):
    clients = _clients()
    kerasfed.write_client_data(clients, tmp_path, storage=storage)
    data = kerasfed.as_client_data(str(tmp_path))
    assert data.on_disk and data.client_ids == list(clients)
    for cid, (x, y) in clients.items():
        got_x, got_y = data[cid]
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
        assert data.num_examples(cid) == len(x) and not got_x.flags.writeable
    assert data.subset(["client/2"]).client_ids == ["client/2"]


def test_fit_on_a_directory_equals_the_in_memory_run(tmp_path):
    clients = _clients()
    kerasfed.write_client_data(clients, tmp_path)
    runs = [kerasfed.fit_federated(_model(), source, rounds=3, clients_per_round=3, seed=4,
                                   batch_size=4, engine="native", verbose=0)
            for source in (clients, tmp_path)]
    for a, b in zip(*(r.model.get_weights() for r in runs)):
        np.testing.assert_array_equal(a, b)


def test_rounds_read_only_the_sampled_clients(tmp_path):
    clients = _clients(n=12)
    kerasfed.write_client_data(clients, tmp_path)
    store = open_client_directory(tmp_path)
    reads: list[str] = []

    def counted(cid):
        reads.append(cid)
        return store[cid]

    counts = {c: store.num_examples(c) for c in store}
    data = ClientData._of_store(ClientStore(counts, counted, "counted clients"))
    kerasfed.fit_federated(_model(), data, rounds=3, clients_per_round=2, seed=9,
                           engine="native", verbose=0)
    # Before the rounds: one example's shapes, then validation reads each client once.
    before = len(clients) + 2
    assert set(reads[:before]) == set(clients)
    sampled = [c for r in range(3) for c in sample_clients(list(clients), 2, r, 9)]
    assert sorted(reads[before:]) == sorted(sampled)


def test_directory_errors(tmp_path):
    with pytest.raises(kerasfed.ClientDataError, match="not a kerasfed client directory"):
        ClientData.from_directory(tmp_path)
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(kerasfed.ClientDataError, match="not empty"):
        kerasfed.write_client_data(_clients(), tmp_path)
    with pytest.raises(kerasfed.ClientDataError, match="storage"):
        kerasfed.write_client_data(_clients(), tmp_path / "new", storage="parquet")
    with pytest.raises(kerasfed.ClientDataError, match="does not exist"):
        kerasfed.as_client_data(str(tmp_path / "missing"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "clients.json").write_text("{")
    with pytest.raises(kerasfed.ClientDataError, match="cannot be read"):
        ClientData.from_directory(tmp_path / "bad")


def test_overwrite_replaces_a_client_directory(tmp_path):
    kerasfed.write_client_data(_clients(n=6), tmp_path)
    kerasfed.write_client_data(_clients(n=2, seed=1), tmp_path, overwrite=True)
    assert len(ClientData.from_directory(tmp_path)) == 2


def _write_tff_sqlite(path, clients, split="train"):
    """TFF's SQLite client-data schema (tff.simulation.datasets.save_to_sql_client_data)."""
    import tensorflow as tf

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
                   "serialized_example_proto BLOB NOT NULL)")
        db.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT "
                   "NOT NULL, num_examples INTEGER NOT NULL)")
        for cid, (x, y) in clients.items():
            for xi, yi in zip(x, y):
                example = tf.train.Example(features=tf.train.Features(feature={
                    "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=xi.ravel())),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(yi)])),
                }))
                db.execute("INSERT INTO examples VALUES (?, ?, ?)",
                           (split, cid, example.SerializeToString()))
            db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (cid, split, len(x)))


def test_tff_sqlite_files_are_read_per_client(tmp_path):
    clients = _clients()
    path = tmp_path / "clients.sqlite"
    _write_tff_sqlite(path, clients)
    data = kerasfed.as_client_data(str(path))
    assert data.on_disk and data.client_ids == list(clients)
    for cid, (x, y) in clients.items():
        np.testing.assert_array_equal(data[cid][0], x)
        np.testing.assert_array_equal(data[cid][1], y)
    with pytest.raises(kerasfed.ClientDataError, match="no split 'test'"):
        ClientData.from_sqlite(path, split="test")
    with pytest.raises(kerasfed.ClientDataError, match="no feature 'image'"):
        ClientData.from_sqlite(path, feature_key="image")[list(clients)[0]]


@needs_tff
@pytest.mark.federated
def test_sqlite_written_by_tff_reads_as_tff_reads_it(tmp_path):
    import tensorflow as tf
    import tensorflow_federated as tff

    clients = _clients(n=3)
    path = str(tmp_path / "tff.sqlite")

    def dataset_fn(cid):
        x, y = clients[cid]
        return tf.data.Dataset.from_tensor_slices({"pixels": x, "label": y.astype("int64")})

    tff.simulation.datasets.save_to_sql_client_data(list(clients), dataset_fn, path)
    spec = {"pixels": tf.TensorSpec((5,), tf.float32), "label": tf.TensorSpec((), tf.int64)}
    theirs = tff.simulation.datasets.load_and_parse_sql_client_data(path, spec)
    ours = ClientData.from_sqlite(path)
    assert sorted(ours.client_ids) == sorted(theirs.client_ids)
    for cid in theirs.client_ids:
        rows = list(theirs.create_tf_dataset_for_client(cid).as_numpy_iterator())
        np.testing.assert_array_equal(ours[cid][0], np.stack([r["pixels"] for r in rows]))
        np.testing.assert_array_equal(ours[cid][1], [r["label"] for r in rows])


def test_evaluation_clients_are_sampled_per_round():
    clients, held_out = _clients(), _clients(n=8, seed=5)
    history = kerasfed.fit_federated(_model(), clients, rounds=1, seed=2, engine="native",
                                     evaluation_clients=held_out, evaluation_clients_per_round=3,
                                     verbose=0)
    chosen = sample_clients(list(held_out), 3, 0, 2, stream=2)
    x = np.concatenate([held_out[c][0] for c in chosen])
    y = np.concatenate([held_out[c][1] for c in chosen])
    loss, accuracy = history.model.evaluate(x, y, verbose=0)
    assert history.history["fed_eval_loss"][0] == pytest.approx(loss, rel=1e-5)
    assert history.history["fed_eval_accuracy"][0] == pytest.approx(accuracy, rel=1e-5)
    with pytest.raises(kerasfed.FederatedArgumentError, match="needs `evaluation_clients`"):
        kerasfed.fit_federated(_model(), clients, rounds=1, engine="native", verbose=0,
                               evaluation_clients_per_round=2)
    with pytest.raises(kerasfed.FederatedArgumentError, match=r"in \[1, 8\]"):
        kerasfed.fit_federated(_model(), clients, rounds=1, engine="native", verbose=0,
                               evaluation_clients=held_out, evaluation_clients_per_round=9)
