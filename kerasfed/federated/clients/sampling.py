"""Which clients train in a round, and the order each one sees its examples in.

Everything here is a function of seeds alone, so a resumed run, or another
engine given the same seeds, reproduces the same clients and batches.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from kerasfed.errors import ArgumentError
from kerasfed.federated.clients.arguments import Seed, check_int, check_seed


def sample_clients(
    client_ids: Iterable[str],
    clients_per_round: int | None,
    round_num: int,
    seed: int | None,
    *,
    poisson: bool = False,
    stream: int = 0,
) -> list[str]:
    """The clients that take part in round ``round_num``.

    Sampling is without replacement and depends only on ``(seed, round_num)``
    (``np.random.default_rng([seed, round_num])``), so a resumed run samples the
    same clients in the same rounds. The result keeps ``client_ids`` order.
    With ``poisson=True`` each client joins independently with probability
    ``clients_per_round / len(client_ids)`` (from ``default_rng([seed,
    round_num, 1])``), so a round may have any number of clients, none included.
    ``stream`` > 1 draws an independent uniform sample from ``default_rng([seed,
    round_num, stream])`` (``fit_federated`` samples evaluation clients with 2).

    Args:
        client_ids: All client ids (a list, or a ClientData).
        clients_per_round: How many to sample, in [1, number of clients]; None
            means all clients, in order.
        round_num: The round, >= 0.
        seed: An int >= 0, or None for fresh randomness every call.

    Returns:
        The sampled client ids.

    Raises:
        ArgumentError, ArgumentTypeError: no clients, or a bad argument.

    Example:
        >>> sample_clients(["a", "b", "c"], 2, round_num=0, seed=1)  # doctest: +SKIP
        ['a', 'c']
    """
    ids = list(client_ids)
    if not ids:
        raise ArgumentError("`client_ids` is empty: there are no clients to sample from.")
    round_num = check_int("round_num", round_num, 0)
    if seed is not None:
        seed = check_int("seed", seed, 0)
    if clients_per_round is None:
        return ids
    clients_per_round = check_int("clients_per_round", clients_per_round, 1, len(ids))
    if poisson:
        rng = np.random.default_rng(None if seed is None else [seed, round_num, 1])
        joined = rng.random(len(ids)) < clients_per_round / len(ids)
        return [cid for cid, j in zip(ids, joined) if j]
    rng = np.random.default_rng(
        None if seed is None else [seed, round_num] + ([stream] if stream else []))
    chosen = np.sort(rng.choice(len(ids), size=clients_per_round, replace=False))
    return [ids[i] for i in chosen]


def client_shuffle_seed(seed: int, round_num: int, cid: str) -> list[int]:
    """The seed of client ``cid``'s example order in round ``round_num``.

    It is ``[seed, round_num, crc32(cid)]``: it depends on the client's id, not
    on its position in the round's sample, so a client's order does not change
    with the clients sampled alongside it, and it is stable across processes
    (unlike ``hash(cid)``). ``ClientData.datasets(..., shuffle_seed=[seed,
    round_num])`` gives each client this seed.

    Args:
        seed: The run's seed, an int >= 0.
        round_num: The round, >= 0.
        cid: The client id.

    Returns:
        A seed for ``np.random.default_rng`` (and :func:`epoch_orders`).

    Raises:
        ArgumentError, ArgumentTypeError: a bad ``seed`` or ``round_num``.

    Example:
        >>> client_shuffle_seed(7, 3, "a")
        [7, 3, 3904355907]
    """
    seed = check_int("seed", seed, 0)
    round_num = check_int("round_num", round_num, 0)
    return per_client_seed([seed, round_num], cid)


def per_client_seed(seed: Seed, cid: str) -> Seed:
    """A per-client seed from a round seed and the client id (stable across runs)."""
    if seed is None:
        return None
    parts = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    return [int(p) for p in parts] + [zlib.crc32(cid.encode("utf-8"))]


def epoch_orders(num_examples: int, *, epochs: int, shuffle: bool, seed: Seed) -> np.ndarray:
    """The order of a client's examples in each of its local epochs.

    With ``shuffle``, row ``e`` is the ``e``-th ``permutation`` drawn from
    ``np.random.default_rng(seed)``; without, every row is ``0 .. n-1`` and
    ``seed`` is ignored. ``ClientData.dataset`` batches the examples in this
    order, so an engine that gathers batches itself sees the same ones.

    Args:
        num_examples: The client's number of examples, >= 0.
        epochs: Local epochs, >= 1.
        shuffle: Whether to permute the examples in each epoch.
        seed: Seed for ``np.random.default_rng`` (an int or a sequence of ints,
            e.g. from :func:`client_shuffle_seed`); None draws a fresh one.

    Returns:
        An int64 array of shape ``(epochs, num_examples)``.

    Raises:
        ArgumentError, ArgumentTypeError: a bad ``num_examples``, ``epochs`` or ``seed``.

    Example:
        >>> epoch_orders(3, epochs=2, shuffle=False, seed=None)
        array([[0, 1, 2],
               [0, 1, 2]])
    """
    n = check_int("num_examples", num_examples, 0)
    epochs = check_int("epochs", epochs, 1)
    if not shuffle:
        return np.tile(np.arange(n, dtype=np.int64), (epochs, 1))
    rng = np.random.default_rng(check_seed("seed", seed))
    return np.stack([rng.permutation(n) for _ in range(epochs)]).astype(np.int64)
