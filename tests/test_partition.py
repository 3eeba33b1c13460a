"""Tests for kerasfed.federated.partition: invariants of every scheme, and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kerasfed.federated.clients import ClientData
from kerasfed.federated.partition import (
    SCHEMES,
    PartitionError,
    partition,
    partition_indices,
)

pytestmark = pytest.mark.federated

N = 600
NUM_CLASSES = 10


def _data(n: int = N, num_classes: int = NUM_CLASSES, seed: int = 0):
    """x holds each example's index, so a client's x says which examples it got."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    x = np.arange(n)[:, None].repeat(2, axis=1).astype(np.float32)
    keys = rng.integers(0, 25, size=n)
    return x, y, keys


def _split(scheme: str, seed: int, num_clients: int | None = 20, **kw) -> ClientData:
    x, y, keys = _data()
    if scheme == "by_key":
        kw.setdefault("keys", keys)
        num_clients = None if num_clients == 20 else num_clients
    return partition(x, y, num_clients, scheme, seed=seed, **kw)


def _as_sets(cd: ClientData) -> dict[str, frozenset]:
    return {cid: frozenset(cd[cid][0][:, 0].astype(int).tolist()) for cid in cd}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_example_in_exactly_one_client(scheme):
    cd = _split(scheme, seed=1)
    x, y, _ = _data()
    got = np.concatenate([cd[cid][0][:, 0] for cid in cd]).astype(int)
    np.testing.assert_array_equal(np.sort(got), np.arange(N))  # a disjoint cover
    for cid in cd:  # labels travel with their examples
        cx, cy = cd[cid]
        np.testing.assert_array_equal(cy, y[cx[:, 0].astype(int)])
    assert all(cd.num_examples(cid) >= 1 for cid in cd)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_split_different_seed_different_split(scheme):
    a, b, c = _split(scheme, seed=3), _split(scheme, seed=3), _split(scheme, seed=4)
    assert a.client_ids == b.client_ids
    for cid in a:
        np.testing.assert_array_equal(a[cid][0], b[cid][0])
    if scheme == "by_key":  # one client per key is not random; grouping keys is
        a, c = _split(scheme, seed=3, num_clients=5), _split(scheme, seed=4, num_clients=5)
        assert _as_sets(a) != _as_sets(c)
    else:
        assert _as_sets(a) != _as_sets(c)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_client_ids_are_stable_zero_padded_strings(scheme):
    assert _split(scheme, seed=0, num_clients=12).client_ids == [
        f"client_{i:03d}" for i in range(12)
    ]
    x, y, _ = _data()
    ids = partition(x, y, 600, "iid", seed=0).client_ids
    assert ids[0] == "client_000" and ids[-1] == "client_599"


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(v) for v in partition_indices(np.zeros(103), 10, "iid", seed=0).values()]
    assert sorted(sizes) == [10] * 7 + [11] * 3


def _mean_label_entropy(cd: ClientData) -> float:
    counts = cd.label_counts(NUM_CLASSES).astype(float)
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return float(h.mean())


def test_dirichlet_skew_grows_as_alpha_shrinks():
    entropies = [
        np.mean(
            [
                _mean_label_entropy(_split("dirichlet", seed=s, num_clients=10, alpha=a))
                for s in range(3)
            ]
        )
        for a in (100.0, 1.0, 0.1)
    ]
    assert entropies[0] > entropies[1] > entropies[2]
    assert entropies[0] > 0.9 * np.log(NUM_CLASSES)  # near IID at large alpha


def test_dirichlet_respects_min_client_size():
    cd = _split("dirichlet", seed=0, num_clients=20, alpha=0.3, min_client_size=15)
    assert min(cd.num_examples(c) for c in cd) >= 15


def test_dirichlet_with_one_hot_labels_skews_by_class():
    x, y, _ = _data()
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[y]
    a = partition_indices(onehot, 10, "dirichlet", seed=5, alpha=0.2)
    b = partition_indices(y, 10, "dirichlet", seed=5, alpha=0.2)
    for cid in a:
        np.testing.assert_array_equal(a[cid], b[cid])


def test_shards_limit_labels_per_client():
    # 600 examples, 20 clients x 2 shards of 15: a shard crosses at most one class
    # boundary (every class has more than 15 examples), so <= 4 labels per client.
    x, y, _ = _data()
    assert np.bincount(y).min() > N // 40
    cd = partition(x, y, 20, "shards", seed=0)
    assert max((cd.label_counts(NUM_CLASSES) > 0).sum(axis=1)) <= 2 * 2
    sorted_y = partition(x, np.sort(y), 20, "shards", seed=0, shards_per_client=1)
    sizes = [sorted_y.num_examples(c) for c in sorted_y]
    assert set(sizes) == {30}


def test_shards_balanced_classes_give_at_most_shards_per_client_labels():
    y = np.repeat(np.arange(10), 60)  # 600 examples, 100 shards of 6: one class each
    cd = partition(np.zeros((600, 1)), y, 50, "shards", seed=2, shards_per_client=2)
    assert (cd.label_counts(10) > 0).sum(axis=1).max() <= 2


def test_by_key_groups_exactly_by_key():
    x, y, keys = _data()
    cd = partition(x, y, None, "by_key", keys=keys)
    assert cd.client_ids == [str(k) for k in np.unique(keys)]
    for cid in cd:
        idx = cd[cid][0][:, 0].astype(int)
        np.testing.assert_array_equal(np.sort(idx), np.flatnonzero(keys == int(cid)))


def test_by_key_string_keys_and_grouping_keys():
    keys = np.array(["bob", "amy", "bob", "cat", "amy", "dan"])
    cd = partition(np.arange(6), np.zeros(6), None, "by_key", keys=keys)
    assert cd.client_ids == ["amy", "bob", "cat", "dan"]
    np.testing.assert_array_equal(cd["bob"][0], [0, 2])
    grouped = partition(np.arange(6), np.zeros(6), 2, "by_key", keys=keys, seed=0)
    assert grouped.client_ids == ["client_000", "client_001"]
    got = np.sort(np.concatenate([grouped[cid][0] for cid in grouped]))
    np.testing.assert_array_equal(got, np.arange(6))  # nothing left out
    for cid in grouped:  # a key's examples stay together
        owners = {str(keys[i]) for i in grouped[cid][0]}
        assert sum(len(cd[k][0]) for k in owners) == len(grouped[cid][0])


def test_partition_returns_readonly_client_data_of_numpy_arrays():
    cd = _split("iid", seed=0)
    x, y = cd["client_000"]
    assert isinstance(x, np.ndarray) and not x.flags.writeable
    assert x.dtype == np.float32 and y.dtype == _data()[1].dtype


# -- errors ---------------------------------------------------------------------


def test_unknown_scheme_lists_valid_ones():
    with pytest.raises(
        PartitionError,
        match=r"Unknown partition scheme: 'pathological'.*'iid', 'dirichlet', 'shards', 'by_key'",
    ):
        partition(np.zeros(10), np.zeros(10), 2, "pathological")


@pytest.mark.parametrize(
    "num_clients, error, match",
    [
        (0, PartitionError, r"`num_clients` in \[1, 10\]. Received: num_clients=0"),
        (11, PartitionError, r"`num_clients` in \[1, 10\]. Received: num_clients=11"),
        (2.0, TypeError, r"`num_clients` to be an int. Received: num_clients=2.0"),
        (True, TypeError, r"`num_clients` to be an int"),
        (None, PartitionError, r"scheme='iid' needs `num_clients`"),
    ],
)
def test_bad_num_clients(num_clients, error, match):
    with pytest.raises(error, match=match):
        partition(np.zeros(10), np.zeros(10), num_clients)


def test_length_mismatch():
    with pytest.raises(
        PartitionError, match=r"same number of examples. Received: x with 10, y with 9"
    ):
        partition(np.zeros(10), np.zeros(9), 2)


def test_scalar_and_empty_inputs():
    with pytest.raises(PartitionError, match=r"first dimension of examples"):
        partition(np.float32(1), np.zeros(1), 1)
    with pytest.raises(PartitionError, match=r"no examples to partition"):
        partition(np.zeros((0, 3)), np.zeros(0), 1)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_bad_alpha(alpha):
    with pytest.raises(PartitionError, match=r"`alpha` > 0 and finite"):
        partition(np.zeros(10), np.zeros(10), 2, "dirichlet", alpha=alpha)


def test_alpha_of_wrong_type():
    with pytest.raises(TypeError, match=r"`alpha` to be a float. Received: alpha='0.5'"):
        partition(np.zeros(10), np.zeros(10), 2, "dirichlet", alpha="0.5")


def test_dirichlet_impossible_min_client_size():
    with pytest.raises(
        PartitionError,
        match=r"Cannot give 5 clients at least min_client_size=3 .* from 10 examples \(15 needed\)",
    ):
        partition(np.zeros(10), np.arange(10) % 2, 5, "dirichlet", min_client_size=3)


def test_dirichlet_min_client_size_not_reached():
    # Feasible on paper (60 * 10 = 600) but every client landing on exactly 10
    # never happens with alpha=0.01.
    x, y, _ = _data()
    with pytest.raises(
        PartitionError,
        match=r"No Dirichlet\(alpha=0.01\) split .* Lower min_client_size, raise alpha",
    ):
        partition(x, y, 60, "dirichlet", alpha=0.01, min_client_size=10, seed=0)


def test_bad_min_client_size():
    with pytest.raises(
        PartitionError, match=r"`min_client_size` >= 1. Received: min_client_size=0"
    ):
        partition(np.zeros(10), np.zeros(10), 2, "dirichlet", min_client_size=0)


def test_too_many_shards():
    with pytest.raises(
        PartitionError,
        match=r"6 clients x shards_per_client=2 = 12 shards, but there are only 10 examples",
    ):
        partition(np.zeros(10), np.zeros(10), 6, "shards")


def test_bad_shards_per_client():
    with pytest.raises(PartitionError, match=r"`shards_per_client` >= 1"):
        partition(np.zeros(10), np.zeros(10), 2, "shards", shards_per_client=0)


def test_label_schemes_reject_multidimensional_labels():
    with pytest.raises(PartitionError, match=r"class labels of shape \(n,\), \(n, 1\) or one-hot"):
        partition(np.zeros(10), np.zeros((10, 2, 2)), 2, "shards")


def test_by_key_needs_keys_and_others_refuse_them():
    with pytest.raises(PartitionError, match=r"scheme='by_key' needs `keys`"):
        partition(np.zeros(4), np.zeros(4), None, "by_key")
    with pytest.raises(
        PartitionError, match=r"`keys` is only used by scheme='by_key'; scheme='iid'"
    ):
        partition(np.zeros(4), np.zeros(4), 2, "iid", keys=np.arange(4))


def test_by_key_bad_keys():
    with pytest.raises(
        PartitionError, match=r"one key per example: shape \(4,\). Received: shape \(3,\)"
    ):
        partition(np.zeros(4), np.zeros(4), None, "by_key", keys=np.arange(3))
    with pytest.raises(
        PartitionError, match=r"num_clients=3, but `keys` has only 2 distinct values"
    ):
        partition(np.zeros(4), np.zeros(4), 3, "by_key", keys=np.array([0, 1, 0, 1]))
    with pytest.raises(PartitionError, match=r"`keys` cannot be sorted"):
        partition(np.zeros(2), np.zeros(2), None, "by_key", keys=np.array([1, "a"], dtype=object))


def test_bad_seed():
    with pytest.raises(ValueError, match=r"`seed` >= 0. Received: seed=-1"):
        partition(np.zeros(4), np.zeros(4), 2, seed=-1)


@pytest.mark.parametrize(
    "scheme, setting",
    [
        ("iid", {"alpha": 0.1}),
        ("shards", {"min_client_size": 5}),
        ("dirichlet", {"shards_per_client": 3}),
    ],
)
def test_setting_without_effect_warns_at_caller(scheme, setting):
    name = next(iter(setting))
    with pytest.warns(
        UserWarning, match=rf"`{name}` has no effect with scheme='{scheme}'"
    ) as record:
        partition(np.zeros(20), np.arange(20) % 2, 2, scheme, **setting)
    assert record[0].filename == __file__


def test_no_warning_for_used_settings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        partition(
            np.zeros(20), np.arange(20) % 2, 2, "dirichlet", alpha=1.0, min_client_size=2, seed=0
        )
        partition(np.zeros(20), np.arange(20) % 2, 2, "shards", shards_per_client=3, seed=0)
