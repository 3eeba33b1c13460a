"""Split one ``(x, y)`` dataset into simulated clients.

Schemes:

* ``"iid"``: a random permutation cut into ``num_clients`` near-equal parts.
* ``"dirichlet"``: label skew. For every class, the share of its examples that
  each client gets is drawn from ``Dirichlet(alpha)`` over the clients; smaller
  ``alpha`` means more skew. This per-class form is the one popularised by
  Yurochkin et al. 2019 (PFNM) and Li et al. 2022 (NIID-Bench, "Federated
  Learning on Non-IID Data Silos"), after Hsu, Qi & Brown 2019 ("Measuring the
  Effects of Non-Identical Data Distribution for Federated Visual
  Classification"). Draws are repeated until every client has at least
  ``min_client_size`` examples.
* ``"shards"``: the pathological non-IID split of McMahan et al. 2017
  ("Communication-Efficient Learning of Deep Networks from Decentralized Data"):
  sort by label, cut into ``num_clients * shards_per_client`` shards, give each
  client ``shards_per_client`` random shards.
* ``"by_key"``: natural clients, one per distinct value of ``keys`` (e.g. the
  writer of each FEMNIST character); with fewer ``num_clients`` than keys, each
  client gets several whole keys.

All randomness comes from ``np.random.default_rng(seed)``: the same seed and
arguments give the same split.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from kerasfed._arguments import checked_call, user_stacklevel
from kerasfed.errors import ArgumentTypeError, PartitionError
from kerasfed.federated.clients import ClientData, check_int
from kerasfed.federated.clients.structure import _holds_arrays, is_structured, map_leaves, num_rows
from kerasfed.federated.clients.arguments import ArrayLike

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards", "by_key")

DEFAULT_ALPHA = 0.5
DEFAULT_MIN_CLIENT_SIZE = 1
DEFAULT_SHARDS_PER_CLIENT = 2

# Each Dirichlet draw costs microseconds; this bounds a hopeless search to ~1 s.
_MAX_DIRICHLET_DRAWS = 10_000


@checked_call(positional_hint=lambda args: "Pass seed, alpha and the other options by keyword, e.g. seed=0.")
def partition(
    x: ArrayLike,
    y: ArrayLike,
    num_clients: int | None,
    scheme: str = "iid",
    *,
    seed: int | None = None,
    alpha: float | None = None,
    min_client_size: int | None = None,
    shards_per_client: int | None = None,
    keys: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
) -> ClientData:
    """Splits ``(x, y)`` into ``num_clients`` clients; every example goes to one client.

    Args:
        x: Features, first dimension = examples; or a list/dict of such arrays
            (a model with several inputs).
        y: Labels, same first dimension: class indices ``(n,)``/``(n, 1)`` or
            one-hot ``(n, C)`` (the label-based schemes use the argmax); or a
            list/dict of label arrays (several outputs: ``"iid"`` and ``"by_key"``
            only, or split with ``partition_indices`` on one output's labels).
        num_clients: Number of clients, in [1, n]. For ``"by_key"``, None (one
            client per key) or the number of keys to sample.
        scheme: One of ``"iid"`` (default), ``"dirichlet"``, ``"shards"``, ``"by_key"``.
        seed: Seed for ``np.random.default_rng`` (default None: a fresh split).
        alpha: Dirichlet concentration, > 0 (``"dirichlet"`` only; default 0.5).
        min_client_size: Fewest examples a client may get, >= 1 (``"dirichlet"``
            only; default 1; NIID-Bench uses 10).
        shards_per_client: Shards per client, >= 1 (``"shards"`` only; default 2).
        keys: One key per example (``"by_key"`` only, required there). Client
            ids are the keys as str, in sorted key order. With an int
            ``num_clients`` below the number of keys, keys are dealt at random
            to that many clients (``client_000``...), a key never split.
        sample_weight: One weight per example (default None); each client then
            gets ``(x, y, sample_weight)``.

    Returns:
        A :class:`ClientData` with ids ``client_000``, ``client_001``, ... (or the
        keys for ``"by_key"``).

    Raises:
        PartitionError: unknown scheme, bad arguments, or no Dirichlet draw
            meets ``min_client_size``.
        ArgumentTypeError: a non-int count or a non-float ``alpha`` (a TypeError).

    Example:
        >>> x, y = np.arange(20)[:, None], np.arange(20) % 2
        >>> cd = partition(x, y, 4, "dirichlet", seed=0, alpha=0.3)
        >>> sorted(cd.client_ids)
        ['client_000', 'client_001', 'client_002', 'client_003']
    """
    if _holds_arrays(x) or _holds_arrays(y) or sample_weight is not None:
        return _partition_structures(x, y, sample_weight, num_clients, scheme, seed=seed,
                                     alpha=alpha, min_client_size=min_client_size,
                                     shards_per_client=shards_per_client, keys=keys)
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise PartitionError(
            f"Expected arrays with a first dimension of examples. Received: x of shape "
            f"{x.shape}, y of shape {y.shape}."
        )
    if len(x) != len(y):
        raise PartitionError(
            f"x and y must have the same number of examples. Received: x with "
            f"{len(x)}, y with {len(y)}."
        )
    indices = _indices(
        y,
        num_clients,
        scheme,
        seed=seed,
        alpha=alpha,
        min_client_size=min_client_size,
        shards_per_client=shards_per_client,
        keys=keys,
    )
    return ClientData({cid: (x[idx], y[idx]) for cid, idx in indices.items()})


def _partition_structures(x: Any, y: Any, sample_weight: Any, num_clients: int | None,
                          scheme: str, **settings: Any) -> ClientData:
    """``partition`` for structured ``x``/``y`` or with sample weights."""
    whole = ClientData({"whole": (x, y) if sample_weight is None else (x, y, sample_weight)})
    entry = whole["whole"]
    labels = entry[1]
    if is_structured(labels):
        if scheme in ("dirichlet", "shards"):
            raise PartitionError(
                f"scheme={scheme!r} splits by class labels, but y holds several label arrays "
                f"(a model with several outputs). Use scheme='iid' or 'by_key', or call "
                f"kerasfed.partition_indices(one_output_labels, ...) and index x and y with it."
            )
        labels = np.zeros(num_rows(entry[0]), np.int64)  # iid and by_key ignore the labels
    indices = _indices(labels, num_clients, scheme, **settings)
    return ClientData({cid: tuple(map_leaves(lambda a, idx=idx: a[idx], part) for part in entry)
                       for cid, idx in indices.items()})


def partition_indices(
    y: ArrayLike,
    num_clients: int | None,
    scheme: str = "iid",
    *,
    seed: int | None = None,
    alpha: float | None = None,
    min_client_size: int | None = None,
    shards_per_client: int | None = None,
    keys: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """Like :func:`partition`, but returns ``{client_id: example indices}``.

    Useful to split several aligned arrays the same way.
    """
    return _indices(
        y,
        num_clients,
        scheme,
        seed=seed,
        alpha=alpha,
        min_client_size=min_client_size,
        shards_per_client=shards_per_client,
        keys=keys,
    )


def _indices(
    y: ArrayLike,
    num_clients: int | None,
    scheme: str,
    *,
    seed: int | None,
    alpha: float | None,
    min_client_size: int | None,
    shards_per_client: int | None,
    keys: ArrayLike | None,
) -> dict[str, np.ndarray]:
    y = np.asarray(y)
    if y.ndim == 0 or len(y) == 0:
        raise PartitionError(f"There are no examples to partition (y has shape {y.shape}).")
    n = len(y)
    if scheme not in SCHEMES:
        raise PartitionError(
            f"Unknown partition scheme: {scheme!r}. It needs to be one of {list(SCHEMES)}."
        )
    _warn_unused(
        scheme, alpha=alpha, min_client_size=min_client_size, shards_per_client=shards_per_client
    )
    if (keys is None) == (scheme == "by_key"):
        raise PartitionError(
            "scheme='by_key' needs `keys`, one key per example (e.g. writer ids)."
            if keys is None
            else f"`keys` is only used by scheme='by_key'; scheme={scheme!r} splits "
            f"without keys. Pass scheme='by_key' or drop `keys`."
        )
    if num_clients is None and scheme != "by_key":
        raise PartitionError(
            f"scheme={scheme!r} needs `num_clients` (an int in [1, {n}]); only "
            f"'by_key' accepts None (one client per key)."
        )
    if num_clients is not None:
        num_clients = _count("num_clients", num_clients, 1, n)
    if seed is not None:
        seed = check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)

    if scheme == "by_key":
        return _by_key(np.asarray(keys), n, num_clients, rng)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        alpha = DEFAULT_ALPHA if alpha is None else _positive_float("alpha", alpha)
        min_size = DEFAULT_MIN_CLIENT_SIZE if min_client_size is None else min_client_size
        min_size = _count("min_client_size", min_size, 1)
        parts = _dirichlet(_class_ids(y), num_clients, alpha, min_size, rng)
    else:
        per = DEFAULT_SHARDS_PER_CLIENT if shards_per_client is None else shards_per_client
        per = _count("shards_per_client", per, 1)
        parts = _shards(_class_ids(y), num_clients, per, rng)
    return {_client_id(i, num_clients): part for i, part in enumerate(parts)}


def _client_id(index: int, num_clients: int) -> str:
    """``client_007``: zero-padded so that ids sort in client order."""
    return f"client_{index:0{max(3, len(str(num_clients - 1)))}d}"


def _dirichlet(
    classes: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n = len(classes)
    if num_clients * min_size > n:
        raise PartitionError(
            f"Cannot give {num_clients} clients at least min_client_size={min_size} "
            f"examples each from {n} examples ({num_clients * min_size} needed). "
            f"Lower num_clients or min_client_size."
        )
    by_class = [np.flatnonzero(classes == c) for c in range(classes.max() + 1)]
    counts = np.array([len(members) for members in by_class])
    smallest = 0
    # Client sizes follow from the proportions alone, so only the proportions
    # are redrawn; examples are dealt out once a draw is accepted.
    for _ in range(_MAX_DIRICHLET_DRAWS):
        shares = rng.dirichlet(np.full(num_clients, alpha), size=len(counts))
        ends = np.floor(np.cumsum(shares, axis=1) * counts[:, None]).astype(np.int64)
        ends = np.minimum(ends, counts[:, None])
        ends[:, -1] = counts  # rounding must not lose the last examples of a class
        per_class = np.diff(ends, axis=1, prepend=0)
        sizes = per_class.sum(axis=0)
        smallest = max(smallest, int(sizes.min()))
        if sizes.min() >= min_size:
            break
    else:
        raise PartitionError(
            f"No Dirichlet(alpha={alpha}) split of {n} examples over {num_clients} "
            f"clients gave every client at least min_client_size={min_size} examples "
            f"in {_MAX_DIRICHLET_DRAWS} draws (best smallest client: {smallest}). "
            f"Lower min_client_size, raise alpha, or use fewer clients."
        )
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for members, class_ends in zip(by_class, ends, strict=True):
        for client, piece in enumerate(np.split(rng.permutation(members), class_ends[:-1])):
            parts[client].append(piece)
    return [np.concatenate(p) for p in parts]


def _shards(
    classes: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n = len(classes)
    num_shards = num_clients * per_client
    if num_shards > n:
        raise PartitionError(
            f"{num_clients} clients x shards_per_client={per_client} = {num_shards} "
            f"shards, but there are only {n} examples. Lower num_clients or "
            f"shards_per_client."
        )
    # Shuffle before the stable sort so that which examples of a class share a
    # shard depends on the seed, not on the input order.
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(classes[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owners = rng.permutation(num_shards).reshape(num_clients, per_client)
    return [np.concatenate([shards[s] for s in row]) for row in owners]


def _by_key(
    keys: np.ndarray, n: int, num_clients: int | None, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    if keys.ndim != 1 or len(keys) != n:
        raise PartitionError(
            f"`keys` must have one key per example: shape ({n},). Received: shape {keys.shape}."
        )
    try:
        unique, inverse = np.unique(keys, return_inverse=True)
    except TypeError as e:
        raise PartitionError(f"`keys` cannot be sorted ({e}); use keys of one type.") from None
    ids = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in unique.tolist()]
    if len(set(ids)) != len(ids):
        raise PartitionError("Two different `keys` have the same str(); make keys distinct as str.")
    # Group all examples by key with one sort instead of a scan per key.
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(unique)))])
    per_key = [order[starts[k] : starts[k + 1]] for k in range(len(unique))]
    if num_clients is None:
        return dict(zip(ids, per_key))
    if num_clients > len(unique):
        raise PartitionError(
            f"num_clients={num_clients}, but `keys` has only {len(unique)} distinct "
            f"values, and a key is never split. Use num_clients=None for one client "
            f"per key, or at most {len(unique)} clients."
        )
    # Fewer clients than keys: each client gets whole keys (a key's examples are
    # never split), keys dealt out at random as evenly as possible, so every
    # example still lands in exactly one client.
    groups = np.array_split(rng.permutation(len(unique)), num_clients)
    return {
        _client_id(i, num_clients): np.sort(np.concatenate([per_key[k] for k in group]))
        for i, group in enumerate(groups)
    }


def _class_ids(y: np.ndarray) -> np.ndarray:
    """Dense class ids 0..K-1 from class labels or one-hot rows."""
    if y.ndim == 2 and y.shape[1] > 1:
        labels = np.argmax(y, axis=1)
    elif y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        labels = y.reshape(-1)
    else:
        raise PartitionError(
            f"The label-based schemes need class labels of shape (n,), (n, 1) or "
            f"one-hot (n, C). Received: y of shape {y.shape}."
        )
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _count(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    return check_int(name, value, minimum, maximum)  # ArgumentError is PartitionError


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(f"Expected `{name}` to be a float. Received: {name}={value!r}.")
    if not np.isfinite(value) or value <= 0:
        raise PartitionError(f"Expected `{name}` > 0 and finite. Received: {name}={value}.")
    return float(value)


def _warn_unused(scheme: str, **settings: Any) -> None:
    users = {"alpha": "dirichlet", "min_client_size": "dirichlet", "shards_per_client": "shards"}
    for name, value in settings.items():
        if value is not None and users[name] != scheme:
            warnings.warn(
                f"`{name}` has no effect with scheme={scheme!r}; it is used by "
                f"scheme={users[name]!r} only.",
                stacklevel=user_stacklevel(),  # the caller of partition(_indices)
            )
