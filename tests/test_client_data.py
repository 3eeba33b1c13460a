"""Tests for kerasfed.federated.clients: ClientData, as_client_data, validate, sampling."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import tensorflow as tf

from kerasfed.federated.clients import (
    ClientData,
    ClientDataError,
    ClientDataTypeError,
    as_client_data,
    client_shuffle_seed,
    epoch_orders,
    sample_clients,
)

pytestmark = pytest.mark.federated


def _clients(sizes=(7, 5, 1), seed=0, num_classes=3):
    rng = np.random.default_rng(seed)
    return {
        f"c{i}": (rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, num_classes, n))
        for i, n in enumerate(sizes)
    }


def _collect(ds: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(ds.as_numpy_iterator())


# -- ClientData -------------------------------------------------------------------


def test_mapping_interface_and_structure():
    raw = _clients()
    cd = ClientData(raw)
    assert cd.client_ids == ["c0", "c1", "c2"] and list(cd) == cd.client_ids and len(cd) == 3
    assert "c1" in cd and "zz" not in cd
    np.testing.assert_array_equal(cd["c1"][0], raw["c1"][0])
    assert [cd.num_examples(c) for c in cd] == [7, 5, 1]
    assert cd.feature_shape == (4,) and cd.feature_dtype == np.float32
    assert cd.label_shape == () and cd.label_dtype == np.int64
    assert cd.element_spec == (
        tf.TensorSpec((None, 4), tf.float32),
        tf.TensorSpec((None,), tf.int64),
    )
    assert repr(cd) == "ClientData(3 clients, 13 examples, x: (4,) float32, y: () int64)"
    assert cd == cd and cd != ClientData(raw)


def test_client_data_is_immutable():
    raw = _clients()
    cd = ClientData(raw)
    with pytest.raises(ValueError, match="read-only"):
        cd["c0"][0][0, 0] = 1.0
    ids = cd.client_ids
    ids.append("x")
    assert cd.client_ids == ["c0", "c1", "c2"]
    raw["c0"][0][0, 0] = 5.0  # the caller's own array stays writable
    with pytest.raises(TypeError):
        cd["c3"] = (np.zeros(1), np.zeros(1))  # type: ignore[index]


def test_unknown_client_id():
    with pytest.raises(
        KeyError,
        match=r"Unknown client id 'nope'. This ClientData has 3 clients: \['c0', 'c1', 'c2'\]",
    ):
        ClientData(_clients())["nope"]


@pytest.mark.parametrize("shuffle_seed", [None, 3])
def test_dataset_yields_exactly_the_clients_data(shuffle_seed):
    cd = ClientData(_clients())
    x, y = cd["c0"]
    batches = _collect(cd.dataset("c0", batch_size=3, shuffle_seed=shuffle_seed))
    assert [len(b[0]) for b in batches] == [3, 3, 1]
    bx = np.concatenate([b[0] for b in batches])
    by = np.concatenate([b[1] for b in batches])
    order = np.argsort(bx[:, 0])
    np.testing.assert_array_equal(bx[order], x[np.argsort(x[:, 0])])
    np.testing.assert_array_equal(by[order], y[np.argsort(x[:, 0])])


def test_dataset_without_shuffle_keeps_order_and_repeats_epochs():
    cd = ClientData(_clients())
    x, y = cd["c1"]
    batches = _collect(cd.dataset("c1", batch_size=2, epochs=3, shuffle=False))
    # Batches never span epochs: 5 examples -> 2, 2, 1 per epoch.
    assert [len(b[0]) for b in batches] == [2, 2, 1] * 3
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), np.concatenate([x] * 3))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.concatenate([y] * 3))


def test_shuffle_matches_numpy_reference_and_is_deterministic():
    cd = ClientData(_clients())
    x, y = cd["c0"]
    ds = cd.dataset("c0", batch_size=7, epochs=2, shuffle_seed=11)
    rng = np.random.default_rng(11)
    expected = [rng.permutation(7), rng.permutation(7)]
    got = _collect(ds)
    assert len(got) == 2
    for (bx, by), perm in zip(got, expected, strict=True):
        np.testing.assert_array_equal(bx, x[perm])
        np.testing.assert_array_equal(by, y[perm])
    assert not np.array_equal(expected[0], expected[1])  # each epoch reshuffles
    again = _collect(cd.dataset("c0", batch_size=7, epochs=2, shuffle_seed=11))
    np.testing.assert_array_equal(
        np.concatenate([b[0] for b in again]), np.concatenate([b[0] for b in got])
    )
    # Iterating the same dataset twice gives the same order too.
    np.testing.assert_array_equal(
        np.concatenate([b[0] for b in _collect(ds)]), np.concatenate([b[0] for b in got])
    )
    other = _collect(cd.dataset("c0", batch_size=7, shuffle_seed=12))
    assert not np.array_equal(other[0][0], got[0][0])


def test_dataset_element_spec_and_dtypes():
    raw = {"a": (np.zeros((4, 2, 2), np.uint8), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]])}
    cd = ClientData(raw)
    ds = cd.dataset("a", batch_size=3)
    assert ds.element_spec == cd.element_spec
    assert ds.element_spec[0] == tf.TensorSpec((None, 2, 2), tf.uint8)


def test_datasets_per_client_seeds_independent_of_cohort():
    cd = ClientData(_clients(sizes=(30, 30, 30)))
    solo = _collect(cd.datasets(["c1"], batch_size=30, shuffle_seed=(5, 2))[0])
    cohort = cd.datasets(["c0", "c1"], batch_size=30, shuffle_seed=(5, 2))
    np.testing.assert_array_equal(_collect(cohort[1])[0][0], solo[0][0])
    # Different clients get different permutations from one round seed.
    perm0 = np.argsort(_collect(cohort[0])[0][0][:, 0])
    perm1 = np.argsort(_collect(cohort[1])[0][0][:, 0])
    assert not np.array_equal(perm0, perm1)
    assert len(cd.datasets(batch_size=4)) == 3
    later_round = _collect(cd.datasets(["c1"], batch_size=30, shuffle_seed=(5, 3))[0])
    assert not np.array_equal(later_round[0][0], solo[0][0])


def test_empty_client_dataset_is_empty():
    cd = ClientData({"a": (np.zeros((0, 3), np.float32), np.zeros(0, np.int64))})
    assert _collect(cd.dataset("a", batch_size=2, epochs=2)) == []


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, ValueError, r"`batch_size` >= 1. Received: batch_size=0"),
        ({"batch_size": 2.5}, TypeError, r"`batch_size` to be an int"),
        ({"batch_size": 2, "epochs": 0}, ValueError, r"`epochs` >= 1. Received: epochs=0"),
        (
            {"batch_size": 2, "shuffle_seed": -3},
            ValueError,
            r"`shuffle_seed` to be None, an int >= 0",
        ),
        ({"batch_size": 2, "shuffle_seed": "x"}, ValueError, r"`shuffle_seed` to be None"),
    ],
)
def test_dataset_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ClientData(_clients()).dataset("c0", **kwargs)


def test_shuffle_seed_without_shuffle_warns_at_caller():
    cd = ClientData(_clients())
    with pytest.warns(UserWarning, match=r"`shuffle_seed` has no effect with shuffle=False") as rec:
        cd.dataset("c0", batch_size=2, shuffle=False, shuffle_seed=1)
    assert rec[0].filename == __file__
    with pytest.warns(UserWarning, match=r"`shuffle_seed` has no effect") as rec:
        cd.datasets(batch_size=2, shuffle=False, shuffle_seed=1)
    assert len(rec) == 1 and rec[0].filename == __file__


def test_subset():
    cd = ClientData(_clients())
    sub = cd.subset(["c2", "c0"])
    assert sub.client_ids == ["c2", "c0"]
    assert sub["c0"][0] is not None and np.shares_memory(sub["c0"][0], cd["c0"][0])
    with pytest.raises(KeyError, match=r"Unknown client id 'c9'"):
        cd.subset(["c9"])
    with pytest.raises(ValueError, match=r"`cids` contains duplicates"):
        cd.subset(["c0", "c0"])


def test_label_counts_against_bincount():
    raw = _clients(sizes=(20, 15, 9), num_classes=4)
    cd = ClientData(raw)
    expected = np.stack([np.bincount(y, minlength=4) for _, y in raw.values()])
    counts = cd.label_counts()
    assert counts.shape == (3, max(y.max() for _, y in raw.values()) + 1)
    np.testing.assert_array_equal(cd.label_counts(4), expected)
    onehot = ClientData({c: (x, np.eye(4)[y]) for c, (x, y) in raw.items()})
    np.testing.assert_array_equal(onehot.label_counts(), expected)
    column = ClientData({c: (x, y[:, None]) for c, (x, y) in raw.items()})
    np.testing.assert_array_equal(column.label_counts(4), expected)


def test_label_counts_with_a_client_without_examples():
    cd = ClientData({"a": (np.zeros((2, 3)), np.array([0, 2])), "empty": (np.zeros((0, 3)), np.zeros(0, np.int64))})
    np.testing.assert_array_equal(cd.label_counts(3), [[1, 0, 1], [0, 0, 0]])


def test_label_counts_errors():
    with pytest.raises(
        ClientDataError,
        match=r"Client 'a' has label 3; expected labels in \[0, 2\) for num_classes=2",
    ):
        ClientData({"a": (np.zeros(2), np.array([0, 3]))}).label_counts(2)
    with pytest.raises(ClientDataError, match=r"Client 'a' has negative label -1"):
        ClientData({"a": (np.zeros(2), np.array([0, -1]))}).label_counts()
    with pytest.raises(
        ClientDataError, match=r"Client 'a': labels .* neither class indices nor one-hot"
    ):
        ClientData({"a": (np.zeros(2), np.array([0.5, 1.0]))}).label_counts()


# -- Construction errors ------------------------------------------------------------


def test_constructor_errors():
    with pytest.raises(
        ClientDataTypeError,
        match=r"ClientData expects a dict \{client_id: \(x, y\)\}. Received: list",
    ):
        ClientData([])  # type: ignore[arg-type]
    with pytest.raises(ClientDataError, match=r"There are no clients"):
        ClientData({})
    with pytest.raises(
        ClientDataTypeError, match=r"Client ids must be str. Received: 3 of type int"
    ):
        ClientData({3: (np.zeros(1), np.zeros(1))})  # type: ignore[dict-item]
    with pytest.raises(
        ClientDataTypeError,
        match=r"Client 'a': expected an \(x, y\) pair of arrays. Received: ndarray",
    ):
        ClientData({"a": np.zeros(3)})  # type: ignore[dict-item]
    with pytest.raises(ClientDataError, match=r"Client 'b' has 3 feature rows but 2 labels"):
        ClientData({"a": (np.zeros(1), np.zeros(1)), "b": (np.zeros(3), np.zeros(2))})
    # Strings are features since models take them (TextVectorization): kept as bytes.
    assert ClientData({"a": (np.array(["x", "y"]), np.zeros(2))})["a"][0].tolist() == [b"x", b"y"]
    with pytest.raises(ClientDataError, match=r"Client 'a': its labels have dtype object"):
        ClientData({"a": (np.zeros(2), np.array([None, 1], dtype=object))})
    with pytest.raises(
        ClientDataError, match=r"Client 'a': its features cannot be converted to one numpy array"
    ):
        ClientData({"a": ([[1, 2], [3]], [0, 1])})
    with pytest.raises(ClientDataError, match=r"Client 'a': its labels are a scalar"):
        ClientData({"a": (np.zeros(1), np.float32(0))})


# -- validate --------------------------------------------------------------------------


def test_validate_accepts_good_data():
    cd = ClientData(_clients())
    cd.validate()
    cd.validate(num_classes=3)
    cd.validate(num_classes=3, sparse_labels=True)
    onehot = ClientData(
        {c: (x, np.eye(3, dtype=np.float32)[y]) for c, (x, y) in _clients().items()}
    )
    onehot.validate(num_classes=3)
    onehot.validate(num_classes=3, sparse_labels=False)
    ClientData({"a": (np.zeros((2, 1)), np.array([[0.0], [2.0]]))}).validate(
        num_classes=3, sparse_labels=True
    )


def _with(client: str, x=None, y=None) -> ClientData:
    raw = _clients()
    ox, oy = raw[client]
    raw[client] = (ox if x is None else x, oy if y is None else y)
    return ClientData(raw)


@pytest.mark.parametrize(
    "cd, kwargs, match",
    [
        (
            _with("c1", np.zeros((0, 4), np.float32), np.zeros(0, np.int64)),
            {},
            r"Client 'c1' has no examples",
        ),
        (
            _with("c2", x=np.zeros((1, 5), np.float32)),
            {},
            r"Client 'c2' has features of per-example shape \(5,\) and dtype float32, but client 'c0' has shape \(4,\)",
        ),
        (
            _with("c1", x=np.zeros((5, 4), np.float64)),
            {},
            r"Client 'c1' has features .* dtype float64, but client 'c0' .* dtype float32",
        ),
        (
            _with("c2", y=np.zeros(1, np.int32)),
            {},
            r"Client 'c2' has labels of per-example shape \(\) and dtype int32, but client 'c0' has shape \(\) and dtype int64",
        ),
        (
            _with("c1", x=np.full((5, 4), np.nan, np.float32)),
            {},
            r"Client 'c1' has 20 NaN and 0 infinite values in its features",
        ),
        (
            ClientData({"a": (np.zeros(2), np.array([0.0, np.inf]))}),
            {},
            r"Client 'a' has 0 NaN and 1 infinite values in its labels",
        ),
        (
            _with("c2", y=np.array([3])),
            {"num_classes": 3},
            r"Client 'c2' has label 3; sparse labels must be class indices in \[0, 3\)",
        ),
        (
            _with("c1", y=np.array([0, 1, -1, 0, 0])),
            {"sparse_labels": True},
            r"Client 'c1' has label -1; sparse labels must be class indices >= 0",
        ),
        (
            ClientData({"a": (np.zeros(2), np.array([0.5, 1.0]))}),
            {"num_classes": 2},
            r"Client 'a' has non-integer values in its labels",
        ),
        (
            ClientData({"a": (np.zeros(2), np.eye(2))}),
            {"num_classes": 2, "sparse_labels": True},
            r"Client 'a' has labels of per-example shape \(2,\); sparse \(integer\) labels need shape",
        ),
        (
            ClientData({"a": (np.zeros(2), np.eye(2, 4))}),
            {"num_classes": 3},
            r"Client 'a' has labels of per-example shape \(4,\), but the model has 3 classes",
        ),
        (
            ClientData({"a": (np.zeros(2), np.array([0, 1]))}),
            {"num_classes": 2, "sparse_labels": False},
            r"Client 'a' has labels of per-example shape \(\), but the model has 2 classes",
        ),
    ],
)
def test_validate_errors_name_the_client(cd, kwargs, match):
    with pytest.raises(ClientDataError, match=match):
        cd.validate(**kwargs)


def test_validate_bad_arguments():
    cd = ClientData(_clients())
    with pytest.raises(ValueError, match=r"`num_classes` >= 1. Received: num_classes=0"):
        cd.validate(num_classes=0)
    with pytest.raises(
        TypeError, match=r"`sparse_labels` to be True, False or None. Received: sparse_labels='yes'"
    ):
        cd.validate(sparse_labels="yes")  # type: ignore[arg-type]


# -- as_client_data ---------------------------------------------------------------------


def _assert_same(cd: ClientData, raw: dict) -> None:
    assert cd.client_ids == list(raw)
    for cid, (x, y) in raw.items():
        np.testing.assert_array_equal(cd[cid][0], x)
        np.testing.assert_array_equal(cd[cid][1], y)


def test_from_dict_of_arrays_and_array_likes():
    raw = _clients()
    _assert_same(as_client_data(raw), raw)
    cd = as_client_data({0: ([[1.0], [2.0]], [0, 1]), 1: {"x": [[3.0]], "y": [1]}})
    assert cd.client_ids == ["0", "1"]
    np.testing.assert_array_equal(cd["1"][0], [[3.0]])
    same = as_client_data(cd)
    assert same is cd


def test_from_dict_of_datasets_unbatched_batched_and_dicts():
    raw = _clients()
    cases = {
        "c0": tf.data.Dataset.from_tensor_slices(raw["c0"]),
        "c1": tf.data.Dataset.from_tensor_slices(raw["c1"]).batch(2),
        "c2": tf.data.Dataset.from_tensor_slices({"pixels": raw["c2"][0], "label": raw["c2"][1]}),
    }
    _assert_same(as_client_data(cases), raw)


def test_from_datasets_large_and_empty():
    x = np.arange(5000 * 2, dtype=np.float32).reshape(5000, 2)
    y = np.arange(5000) % 7
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    )
    cd = as_client_data({"big": tf.data.Dataset.from_tensor_slices((x, y)), "empty": empty})
    np.testing.assert_array_equal(cd["big"][0], x)
    assert cd["empty"][0].shape == (0, 2) and cd["empty"][1].dtype == np.int64
    with pytest.raises(ClientDataError, match=r"Client 'empty' has no examples"):
        cd.validate()


def test_explicit_feature_and_label_keys():
    x, y = np.ones((3, 2), np.float32), np.array([1, 0, 1])
    ds = tf.data.Dataset.from_tensor_slices({"img": x, "target": y, "writer": np.zeros(3)})
    cd = as_client_data({"w": ds}, feature_key="img", label_key="target")
    np.testing.assert_array_equal(cd["w"][0], x)
    np.testing.assert_array_equal(cd["w"][1], y)


def test_unknown_dict_keys_are_named():
    ds = tf.data.Dataset.from_tensor_slices({"img": np.ones((3, 2)), "target": np.zeros(3)})
    with pytest.raises(
        ClientDataError,
        match=r"Client 'w': its examples are dicts with keys \['img', 'target'\].*feature_key=... and label_key=",
    ):
        as_client_data({"w": ds})
    with pytest.raises(
        ClientDataError, match=r"keys 'image' and 'target' \(feature_key, label_key\)"
    ):
        as_client_data({"w": ds}, feature_key="image", label_key="target")


def test_as_client_data_errors():
    with pytest.raises(ValueError, match=r"Pass both `feature_key` and `label_key`, or neither"):
        as_client_data({}, feature_key="x")
    with pytest.raises(ClientDataError, match=r"`validation_clients` is an empty dict"):
        as_client_data({}, what="validation_clients")
    with pytest.raises(
        ClientDataTypeError,
        match=r"Expected `clients` to be a dict \{client_id: \(x, y\)\}.* Received: tuple. To split one \(x, y\) dataset into clients use kerasfed.partition",
    ):
        as_client_data((np.zeros(3), np.zeros(3)))
    with pytest.raises(
        ClientDataTypeError, match=r"Received: _TensorSliceDataset. A single dataset is one client"
    ):
        as_client_data(tf.data.Dataset.from_tensor_slices(np.zeros(3)))
    with pytest.raises(ClientDataTypeError, match=r"Received: int\.$"):
        as_client_data(3)
    with pytest.raises(
        ClientDataTypeError,
        match=r"Client 'a': expected \(x, y\), a dict with features and labels, or a tf.data.Dataset. Received: ndarray",
    ):
        as_client_data({"a": np.zeros(3)})
    with pytest.raises(
        ClientDataError, match=r"Client 'a': expected \(x, y\) pairs or \(x, y, sample_weight\) "
                               r"triples, got a tuple of length 4"
    ):
        as_client_data({"a": (np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3))})
    with pytest.raises(ClientDataError, match=r"two clients whose ids are both '1' as str"):
        as_client_data({1: (np.zeros(1), np.zeros(1)), "1": (np.zeros(1), np.zeros(1))})


def test_dataset_conversion_errors():
    ragged = tf.data.Dataset.from_generator(
        lambda: iter([(np.zeros(2, np.float32), 0), (np.zeros(3, np.float32), 1)]),
        output_signature=(tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.int64)),
    )
    with pytest.raises(
        ClientDataError, match=r"Client 'r': its dataset's examples do not have one fixed shape"
    ):
        as_client_data({"r": ragged})
    # Strings and several inputs are accepted (tests/test_model_structures.py trains them).
    text = tf.data.Dataset.from_tensor_slices((["a", "b"], [0, 1]))
    assert as_client_data({"t": text})["t"][0].tolist() == [b"a", b"b"]
    nested = tf.data.Dataset.from_tensor_slices(((np.zeros(2), np.ones(2)), np.zeros(2)))
    x, _ = as_client_data({"n": nested})["n"]
    assert [a.tolist() for a in x] == [[0.0, 0.0], [1.0, 1.0]]
    sparse = tf.data.Dataset.from_tensor_slices(
        (tf.sparse.from_dense(np.eye(2, dtype=np.float32)), np.zeros(2)))
    with pytest.raises(ClientDataError, match=r"Client 's': its dataset's features are SparseTensorSpec"):
        as_client_data({"s": sparse})


def test_from_tff_client_data():
    tff = pytest.importorskip("tensorflow_federated")
    raw = _clients()
    tuples = tff.simulation.datasets.TestClientData(raw)
    _assert_same(as_client_data(tuples), raw)
    dicts = tff.simulation.datasets.TestClientData(
        {cid: {"pixels": x, "label": y} for cid, (x, y) in raw.items()}
    )
    _assert_same(as_client_data(dicts), raw)
    odd = tff.simulation.datasets.TestClientData({c: {"a": x, "b": y} for c, (x, y) in raw.items()})
    with pytest.raises(
        ClientDataError, match=r"Client 'c0': its examples are dicts with keys \['a', 'b'\]"
    ):
        as_client_data(odd)
    _assert_same(as_client_data(odd, feature_key="a", label_key="b"), raw)


# -- sample_clients -------------------------------------------------------------------------


def test_sample_clients_deterministic_from_seed_and_round():
    ids = [f"client_{i:03d}" for i in range(50)]
    a = sample_clients(ids, 10, round_num=3, seed=7)
    assert a == sample_clients(ids, 10, round_num=3, seed=7)
    assert len(a) == len(set(a)) == 10 and set(a) <= set(ids)
    assert a == sorted(a, key=ids.index)  # keeps client_ids order
    expected = np.sort(np.random.default_rng([7, 3]).choice(50, 10, replace=False))
    assert a == [ids[i] for i in expected]
    rounds = {tuple(sample_clients(ids, 10, round_num=r, seed=7)) for r in range(10)}
    assert len(rounds) == 10
    assert sample_clients(ids, 10, round_num=3, seed=8) != a


def test_sample_clients_all_and_from_client_data():
    cd = ClientData(_clients())
    assert sample_clients(cd, None, round_num=0, seed=None) == ["c0", "c1", "c2"]
    assert sorted(sample_clients(cd, 3, round_num=5, seed=1)) == ["c0", "c1", "c2"]
    assert len(sample_clients(cd, 2, round_num=0, seed=None)) == 2


@pytest.mark.parametrize(
    "args, error, match",
    [
        (([], 1, 0, 0), ValueError, r"`client_ids` is empty"),
        (
            (["a", "b"], 0, 0, 0),
            ValueError,
            r"`clients_per_round` in \[1, 2\]. Received: clients_per_round=0",
        ),
        (
            (["a", "b"], 3, 0, 0),
            ValueError,
            r"`clients_per_round` in \[1, 2\]. Received: clients_per_round=3",
        ),
        ((["a", "b"], 1.5, 0, 0), TypeError, r"`clients_per_round` to be an int"),
        ((["a", "b"], 1, -1, 0), ValueError, r"`round_num` >= 0. Received: round_num=-1"),
        ((["a", "b"], 1, 0, -2), ValueError, r"`seed` >= 0. Received: seed=-2"),
    ],
)
def test_sample_clients_errors(args, error, match):
    with pytest.raises(error, match=match):
        sample_clients(*args)


# -- epoch_orders, client_shuffle_seed ------------------------------------------------------


def test_epoch_orders_shape_and_permutations():
    orders = epoch_orders(7, epochs=3, shuffle=True, seed=4)
    assert orders.shape == (3, 7) and orders.dtype == np.int64
    for row in orders:
        np.testing.assert_array_equal(np.sort(row), np.arange(7))
    assert len({tuple(row) for row in orders}) == 3  # each epoch reshuffles
    assert epoch_orders(0, epochs=2, shuffle=True, seed=4).shape == (2, 0)


def test_epoch_orders_without_shuffle_is_arange_and_ignores_seed():
    orders = epoch_orders(5, epochs=2, shuffle=False, seed=9)
    assert orders.dtype == np.int64
    np.testing.assert_array_equal(orders, [np.arange(5), np.arange(5)])
    np.testing.assert_array_equal(orders, epoch_orders(5, epochs=2, shuffle=False, seed=None))


def test_epoch_orders_are_numpys_permutations_of_the_seed():
    orders = epoch_orders(9, epochs=2, shuffle=True, seed=[3, 1, 4])
    np.testing.assert_array_equal(orders, epoch_orders(9, epochs=2, shuffle=True, seed=[3, 1, 4]))
    rng = np.random.default_rng([3, 1, 4])
    np.testing.assert_array_equal(orders, [rng.permutation(9), rng.permutation(9)])
    assert not np.array_equal(orders, epoch_orders(9, epochs=2, shuffle=True, seed=[3, 1, 5]))
    # One more epoch draws one more row after the same ones.
    longer = epoch_orders(9, epochs=3, shuffle=True, seed=[3, 1, 4])
    np.testing.assert_array_equal(longer[:2], orders)


@pytest.mark.parametrize("shuffle", [True, False])
def test_epoch_orders_are_the_order_of_dataset_batches(shuffle):
    cd = ClientData(_clients())
    x, y = cd["c0"]
    seed = 11 if shuffle else None
    orders = epoch_orders(7, epochs=3, shuffle=shuffle, seed=seed)
    batches = _collect(cd.dataset("c0", batch_size=3, epochs=3, shuffle=shuffle, shuffle_seed=seed))
    assert [len(b[0]) for b in batches] == [3, 3, 1] * 3
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x[orders.ravel()])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y[orders.ravel()])


def test_datasets_round_seed_gives_each_client_its_client_shuffle_seed():
    cd = ClientData(_clients())
    got = cd.datasets(["c1", "c0"], batch_size=100, epochs=2, shuffle_seed=[5, 2])
    for cid, ds in zip(["c1", "c0"], got, strict=True):
        x, _ = cd[cid]
        orders = epoch_orders(len(x), epochs=2, shuffle=True, seed=client_shuffle_seed(5, 2, cid))
        batches = _collect(ds)
        assert len(batches) == 2
        for (bx, _), row in zip(batches, orders, strict=True):
            np.testing.assert_array_equal(bx, x[row])


def test_client_shuffle_seed():
    assert client_shuffle_seed(7, 3, "a") == [7, 3, zlib.crc32(b"a")] == [7, 3, 3904355907]
    assert client_shuffle_seed(0, 0, "é") == [0, 0, zlib.crc32("é".encode())]
    seed = client_shuffle_seed(np.int64(7), np.int32(3), "a")
    assert seed == [7, 3, 3904355907] and all(type(p) is int for p in seed)
    assert client_shuffle_seed(7, 3, "b") != client_shuffle_seed(7, 3, "a")
    assert client_shuffle_seed(7, 4, "a") != client_shuffle_seed(7, 3, "a")


@pytest.mark.parametrize(
    "n, epochs, shuffle, seed, error, match",
    [
        (-1, 1, True, 0, ValueError, r"`num_examples` >= 0. Received: num_examples=-1"),
        (3, 0, True, 0, ValueError, r"`epochs` >= 1. Received: epochs=0"),
        (3, 1.0, False, 0, TypeError, r"`epochs` to be an int"),
        (3, 1, True, -1, ValueError, r"`seed` to be None, an int >= 0"),
    ],
)
def test_epoch_orders_errors(n, epochs, shuffle, seed, error, match):
    with pytest.raises(error, match=match):
        epoch_orders(n, epochs=epochs, shuffle=shuffle, seed=seed)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((-1, 0, "a"), ValueError, r"`seed` >= 0. Received: seed=-1"),
        ((None, 0, "a"), TypeError, r"`seed` to be an int"),
        ((1, 1.5, "a"), TypeError, r"`round_num` to be an int"),
    ],
)
def test_client_shuffle_seed_errors(args, error, match):
    with pytest.raises(error, match=match):
        client_shuffle_seed(*args)
