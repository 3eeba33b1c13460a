"""Resumable federated training: the server state after each round, on disk.

One file, ``<checkpoint_dir>/kerasfed_federated.npz``, holds everything a resumed
run needs: the engine-neutral server state (the global weights in Keras
``get_weights()`` order, the server optimizer's state slots and the algorithm's
own, named as TFF names them, so either engine resumes it), the number of completed rounds,
the seed that drew the clients and shuffles, the logs of every completed round,
and a fingerprint of the training configuration. It is rewritten after every round
through a temporary file and ``os.replace``, so a crash at any moment leaves
either the previous round's file or the new one, never a partial one.

The fingerprint holds readable descriptions (model architecture, loss, optimizers,
algorithm, clients, sampling and batching settings); a resume whose description
differs raises ``CheckpointMismatchError`` naming each difference, because it
would silently continue a different training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from kerasfed._compat import keras
from kerasfed.errors import (  # noqa: F401  (defined with the family)
    CheckpointError,
    CheckpointMismatchError,
)
from kerasfed.federated.engines.base import NeutralState

CHECKPOINT_FILE = "kerasfed_federated.npz"
GROUPS = ("optimizer", "algorithm", "aggregator")  # NeutralState's named slot groups
_FORMAT = 2  # 1: TFF's flattened state (before the engine seam)
_META = "meta"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One saved point of a federated training.

    Attributes:
      rounds_completed: Rounds finished (the next round to run has this index).
      seed: The seed of client sampling and shuffling.
      fingerprint: ``{component: description}`` of the training configuration.
      round_logs: The logs of each completed round, in order.
      state: The server state (``NeutralState``): weights, optimizer, algorithm.
    """

    rounds_completed: int
    seed: int
    fingerprint: dict[str, str]
    round_logs: list[dict[str, float]]
    state: NeutralState


def checkpoint_path(directory: str | os.PathLike) -> str:
    """The checkpoint file inside ``directory``."""
    return os.path.join(os.fspath(directory), CHECKPOINT_FILE)


def save_checkpoint(directory: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Writes ``checkpoint`` atomically (temporary file, fsync, ``os.replace``)."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    meta = {
        "format": _FORMAT,
        "rounds_completed": checkpoint.rounds_completed,
        "seed": checkpoint.seed,
        "fingerprint": checkpoint.fingerprint,
        "round_logs": checkpoint.round_logs,
        "num_weights": len(checkpoint.state.weights),
        "optimizer": {k: len(v) for k, v in checkpoint.state.optimizer.items()},
        "algorithm": {k: len(v) for k, v in checkpoint.state.algorithm.items()},
        "aggregator": {k: len(v) for k, v in checkpoint.state.aggregator.items()},
    }
    arrays = {_META: np.array(json.dumps(meta))}
    arrays.update({f"weights_{i:05d}": np.asarray(a) for i, a in enumerate(checkpoint.state.weights)})
    for group in GROUPS:
        for slot, values in getattr(checkpoint.state, group).items():
            arrays.update({f"{group}/{slot}/{i:05d}": np.asarray(a) for i, a in enumerate(values)})
    fd, tmp = tempfile.mkstemp(prefix=".kerasfed-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, checkpoint_path(directory))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def load_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """Reads the checkpoint in ``directory``; None if there is none yet.

    Raises:
      CheckpointError: The file exists but cannot be read as a kerasfed checkpoint.
    """
    path = checkpoint_path(directory)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[_META]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"unknown format {meta.get('format')!r}")
            weights = [data[f"weights_{i:05d}"] for i in range(meta["num_weights"])]
            groups = {
                group: {
                    slot: [data[f"{group}/{slot}/{i:05d}"] for i in range(count)]
                    for slot, count in meta.get(group, {}).items()
                }
                for group in GROUPS
            }
        return Checkpoint(
            rounds_completed=int(meta["rounds_completed"]),
            seed=int(meta["seed"]),
            fingerprint={str(k): str(v) for k, v in meta["fingerprint"].items()},
            round_logs=[dict(logs) for logs in meta["round_logs"]],
            state=NeutralState(weights=weights, **groups),
        )
    except Exception as e:  # zip, json and key errors all mean "not readable"
        raise CheckpointError(
            f"Cannot read the checkpoint {path} ({type(e).__name__}: {e}). It was not "
            f"written by this version of kerasfed, or it is damaged. Pass a new "
            f"`checkpoint_dir`, or delete the file to start over."
        ) from e


def check_resumable(
    checkpoint: Checkpoint,
    *,
    directory: str | os.PathLike,
    fingerprint: Mapping[str, str],
    seed: int | None,
    rounds: int,
) -> None:
    """Raises unless ``checkpoint`` can be resumed by a training with these settings.

    Args:
      checkpoint: The loaded checkpoint.
      directory: Its directory, for the message.
      fingerprint: This training's configuration descriptions.
      seed: This training's explicit seed, or None (then the saved seed is used).
      rounds: The total number of rounds this training asks for.

    Raises:
      CheckpointMismatchError: The configuration or the seed differs, or the
        checkpoint already has more rounds than ``rounds``.
    """
    differences = [
        f"  {key}: checkpoint has {checkpoint.fingerprint.get(key, '(none)')!r}, "
        f"this call has {fingerprint.get(key, '(none)')!r}"
        for key in sorted(set(fingerprint) | set(checkpoint.fingerprint))
        if checkpoint.fingerprint.get(key) != fingerprint.get(key)
    ]
    if seed is not None and seed != checkpoint.seed:
        differences.append(f"  seed: checkpoint has {checkpoint.seed}, this call has {seed}")
    if differences:
        raise CheckpointMismatchError(
            f"checkpoint_dir={os.fspath(directory)!r} holds a training with a different "
            f"configuration, so it cannot be resumed:\n" + "\n".join(differences) + "\n"
            f"Call fit_federated with the same arguments to resume, or pass a new "
            f"`checkpoint_dir` (or delete {CHECKPOINT_FILE} there) to start over."
        )
    if checkpoint.rounds_completed > rounds:
        raise CheckpointMismatchError(
            f"checkpoint_dir={os.fspath(directory)!r} already holds "
            f"{checkpoint.rounds_completed} completed rounds, more than rounds={rounds}. "
            f"Pass rounds >= {checkpoint.rounds_completed} to continue it, or a new "
            f"`checkpoint_dir` to start over."
        )


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe(value: Any) -> str:
    """A stable one-line description of a JSON-like value (for fingerprints)."""
    return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))


def training_fingerprint(
    *,
    model: keras.Model,
    recipe: Any,
    algorithm: Any,
    server_optimizer: Any,
    server_learning_rate: float,
    clients: Any,
    clients_per_round: int | None,
    local_epochs: int,
    batch_size: int,
    shuffle: bool = True,
    aggregator: Any = None,
    client_sampling: str = "uniform",
    attack: Any = None,
) -> dict[str, str]:
    """``{component: description}`` of everything that decides a training's rounds.

    Evaluation settings and the number of rounds are left out: changing them does
    not change the rounds already run, nor does the engine (a run may resume on
    the other one). The model's initial weights are left out
    too: a resumed program may initialise its model differently, and the
    checkpoint's weights replace them.
    """
    if algorithm.uses_client_optimizer:
        optimizer = recipe.optimizer_config()
        config = {k: v for k, v in optimizer["config"].items() if k != "name"}
        client_optimizer = describe({"class_name": optimizer["class_name"], "config": config})
    else:
        client_optimizer = "(unused)"
    return {
        "model": _describe_model(model),
        "loss": describe(recipe.compile_config.get("loss")),
        "client_optimizer": client_optimizer,
        "algorithm": repr(algorithm),
        "server_optimizer": f"{server_optimizer!r}, learning_rate={float(server_learning_rate)!r}",
        "clients": _describe_clients(clients),
        "clients_per_round": repr(clients_per_round),
        "local_epochs": repr(local_epochs),
        "batch_size": repr(batch_size),
        "shuffle": repr(shuffle),
        # Added with aggregation; the defaults are left out, so that checkpoints
        # written before still resume.
        **({"aggregator": aggregator.describe()}
           if aggregator is not None and not aggregator.is_plain_mean else {}),
        **({"client_sampling": client_sampling} if client_sampling != "uniform" else {}),
        **({"attack": repr(attack)} if attack is not None else {}),
    }


def _describe_model(model: keras.Model) -> str:
    """Class, size and a hash of the layers' configs and weight shapes, without
    names: Keras numbers layer names per process, so a rebuilt model has new ones."""
    parts = []
    for layer in _all_layers(model):
        # A nested model's config repeats its layers' names; its layers are
        # described one by one instead.
        config = {} if isinstance(layer, keras.Model) else layer.get_config()
        config = {k: v for k, v in config.items() if k != "name"}
        # Keras 2 lookup layers list a vocabulary handler (no shape) among their weights.
        shapes = [(tuple(w.shape), str(getattr(w.dtype, "name", w.dtype)))
                  for w in layer.weights if hasattr(w, "shape")]
        parts.append([type(layer).__name__, config, shapes])
    digest = hashlib.sha256(describe(parts).encode()).hexdigest()[:16]
    return (
        f"{type(model).__name__} with {len(model.layers)} layers and "
        f"{model.count_params()} parameters (sha256 {digest})"
    )


def _all_layers(model: keras.Model) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _describe_clients(clients: Any) -> str:
    sizes = [[cid, clients.num_examples(cid)] for cid in clients.client_ids]
    digest = hashlib.sha256(describe(sizes).encode()).hexdigest()[:16]
    total = sum(n for _, n in sizes)
    return f"{len(sizes)} clients, {total} examples (ids and sizes sha256 {digest})"
