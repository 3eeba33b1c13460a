"""Resumable federated training: the server state after each round, on disk.

One file, ``<checkpoint_dir>/kerasfed_federated.npz``, holds everything a resumed
run needs: the engine-neutral server state (the global weights in Keras
``get_weights()`` order, the server optimizer's state slots and the algorithm's
own, named as TFF names them, so either engine resumes it), the number of completed rounds,
the seed that drew the clients and shuffles, the logs of every completed round,
and a fingerprint of the training configuration. It is rewritten after every round
through a temporary file and ``os.replace``, so a crash at any moment leaves
either the previous round's file or the new one, never a partial one.

Per-client state (a ``ClientStateStore``: ``TopK``'s residuals, SCAFFOLD's
control variates) is saved beside it, in ``<checkpoint_dir>/kerasfed_client_states/``,
as a journal: each save writes only the rows changed since the previous save
into new files that are never modified afterwards, and the npz lists the files
to replay, in order, to rebuild the store. Files are written and synced before
the npz that lists them replaces the previous one, and removed only after, so a
crash at any moment (SIGKILL mid-round included) leaves an npz whose files are
all complete: what the live store writes during the next round never touches
them. When the journal holds more than twice the rows the store has, a save
writes every row once more instead (a new base), and the old files go.

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
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from kerasfed._compat import keras
from kerasfed.errors import (  # noqa: F401  (defined with the family)
    CheckpointError,
    CheckpointMismatchError,
)
from kerasfed.federated.client_state import ClientStateStore
from kerasfed.federated.engines.base import NeutralState

CHECKPOINT_FILE = "kerasfed_federated.npz"
CLIENT_STATES_DIR = "kerasfed_client_states"
GROUPS = ("optimizer", "algorithm", "aggregator")  # NeutralState's named slot groups
# 1: TFF's flattened state (before the engine seam); 2: TopK's residuals in the
# aggregator state ("<step>/residual/<cid>"); 3: per-client state in a journal.
_FORMAT = 3
_READABLE = (2, 3)
_META = "meta"
# Rows of one journal file, at most: a file is read whole when it is replayed.
_JOURNAL_FILE_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class SavedClientStates:
    """What a checkpoint holds of a ``ClientStateStore``.

    Attributes:
      templates: Each table's template, by table name.
      files: The journal files to replay, in order: ``(table, file name, rows)``.
    """

    templates: dict[str, list[np.ndarray]]
    files: list[tuple[str, str, int]]


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One saved point of a federated training.

    Attributes:
      rounds_completed: Rounds finished (the next round to run has this index).
      seed: The seed of client sampling and shuffling.
      fingerprint: ``{component: description}`` of the training configuration.
      round_logs: The logs of each completed round, in order: its ``History``
        numbers and what it recorded per client (``participants``: a list of ids;
        ``client_metrics``, ``client_train_metrics``: ``{client_id: {metric:
        value}}``), all kept as JSON (NaN included).
      state: The server state (``NeutralState``): weights, optimizer, algorithm.
      client_states: The per-client state saved with it, or None (set by
        ``load_checkpoint``; ``save_checkpoint`` takes the store itself).
      pending: An asynchronous run's clock and clients in flight
        (``asynchronous.AsyncState.to_saved()``: a JSON part and named arrays),
        or None.
    """

    rounds_completed: int
    seed: int
    fingerprint: dict[str, str]
    round_logs: list[dict[str, Any]]
    state: NeutralState
    client_states: SavedClientStates | None = None
    pending: tuple[dict, dict[str, np.ndarray]] | None = None


def checkpoint_path(directory: str | os.PathLike) -> str:
    """The checkpoint file inside ``directory``."""
    return os.path.join(os.fspath(directory), CHECKPOINT_FILE)


def save_checkpoint(directory: str | os.PathLike, checkpoint: Checkpoint,
                    client_states: ClientStateStore | None = None) -> None:
    """Writes ``checkpoint`` atomically (temporary file, fsync, ``os.replace``).

    Args:
      directory: The checkpoint directory (made if missing).
      checkpoint: What to save.
      client_states: The run's per-client state, saved beside it: the rows changed
        since this store's previous save in ``directory`` (all rows on its first).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    journal = None if client_states is None else _write_journal(directory, client_states,
                                                                checkpoint.rounds_completed)
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
    arrays = {f"weights_{i:05d}": np.asarray(a) for i, a in enumerate(checkpoint.state.weights)}
    for group in GROUPS:
        for slot, values in getattr(checkpoint.state, group).items():
            arrays.update({f"{group}/{slot}/{i:05d}": np.asarray(a) for i, a in enumerate(values)})
    if journal is not None:
        meta["client_states"] = {"tables": {name: len(t) for name, t in journal.templates.items()},
                                 "files": journal.files}
        for name, template in journal.templates.items():
            arrays.update({f"client_states/{name}/{i:05d}": t for i, t in enumerate(template)})
    if checkpoint.pending is not None:
        meta["pending"], pending_arrays = checkpoint.pending
        arrays.update({f"pending/{k}": np.asarray(v) for k, v in pending_arrays.items()})
    arrays[_META] = np.array(json.dumps(meta))
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
    if journal is not None:
        client_states.saved_journals[os.path.realpath(directory)] = journal
        for table in client_states.tables.values():
            table.mark_clean()
        _remove_unlisted(directory, journal)


def restore_client_states(directory: str | os.PathLike, checkpoint: Checkpoint,
                          store: ClientStateStore) -> None:
    """Fills ``store`` with the per-client state saved in ``checkpoint``.

    A format-2 checkpoint's ``TopK`` residuals (``"<step>/residual/<cid>"`` in
    the aggregator state) move into the store's table ``"<step>/residual"``.

    Raises:
      CheckpointError: A journal file is missing or damaged.
    """
    directory = os.fspath(directory)
    _move_old_residuals(checkpoint.state, store)
    saved = checkpoint.client_states
    if saved is None:
        return
    tables = {name: store.table(name, template) for name, template in saved.templates.items()}
    # A client's row is written once, from the last file that has it (a journal
    # holds up to three versions of a row).
    latest: dict[tuple[str, str], int] = {}
    for index, (name, file, rows) in enumerate(saved.files):
        for cid in _read_journal_file(directory, file, rows):
            latest[name, cid] = index
    for index, (name, file, rows) in enumerate(saved.files):
        cids, arrays = _read_journal_file(directory, file, rows, len(saved.templates[name]))
        keep = [i for i, cid in enumerate(cids) if latest[name, cid] == index]
        if len(keep) < len(cids):
            cids, arrays = [cids[i] for i in keep], [a[keep] for a in arrays]
        tables[name].write(cids, arrays)
    for table in store.tables.values():
        table.mark_clean()
    store.saved_journals[os.path.realpath(directory)] = SavedClientStates(
        templates=saved.templates, files=list(saved.files))


def _read_journal_file(directory: str, file: str, rows: int, tensors: int | None = None) -> Any:
    """A journal file's client ids, and with ``tensors`` also its arrays."""
    path = os.path.join(directory, CLIENT_STATES_DIR, file)
    try:
        with np.load(path, allow_pickle=False) as data:
            cids = [str(c) for c in data["cids"]]
            if len(cids) != rows:
                raise ValueError(f"{len(cids)} rows, the checkpoint lists {rows}")
            if tensors is None:
                return cids
            return cids, [data[f"t{i:05d}"] for i in range(tensors)]
    except Exception as e:  # missing, truncated or foreign files alike
        raise CheckpointError(
            f"Cannot read the client state file {path} ({type(e).__name__}: {e}) that "
            f"the checkpoint in {directory} lists. The directory was changed by hand or "
            f"damaged. Pass a new `checkpoint_dir`, or delete {CHECKPOINT_FILE} there "
            f"to start over."
        ) from e


def _write_journal(directory: str, store: ClientStateStore, rounds: int) -> SavedClientStates:
    """Writes the store's rows changed since its previous save here (or all of them)
    into new, synced journal files; returns the journal the npz will list."""
    folder = os.path.join(directory, CLIENT_STATES_DIR)
    tables = store.tables
    previous = store.saved_journals.get(os.path.realpath(directory))
    dirty = {name: t.dirty() for name, t in tables.items()}
    live = sum(len(t) for t in tables.values())
    if previous is not None:
        journal_rows = sum(rows for _, _, rows in previous.files) + sum(map(len, dirty.values()))
    if previous is None or journal_rows > 2 * live:
        files: list[tuple[str, str, int]] = []  # a new base: every row
        dirty = {name: list(t) for name, t in tables.items()}
    else:
        files = list(previous.files)
    token = secrets.token_hex(4)  # never the name of a file an older npz lists
    for name, cids in dirty.items():
        table = tables[name]
        per_file = max(1, _JOURNAL_FILE_BYTES // max(1, sum(t.nbytes for t in table.template)))
        for start in range(0, len(cids), per_file):
            part = cids[start:start + per_file]
            os.makedirs(folder, exist_ok=True)  # only once there is a row to save
            file = f"round{rounds:06d}-{token}-{len(files):05d}.npz"
            arrays = {f"t{i:05d}": a for i, a in enumerate(table.read(part))}
            with open(os.path.join(folder, file), "wb") as f:
                np.savez(f, cids=np.array(part, dtype=str), **arrays)
                f.flush()
                os.fsync(f.fileno())
            files.append((name, file, len(part)))
    if os.path.isdir(folder):
        _fsync_directory(folder)
    return SavedClientStates(templates={n: t.template for n, t in tables.items()}, files=files)


def _remove_unlisted(directory: str, journal: SavedClientStates) -> None:
    # Files of older journals, and of a save that crashed before its npz replaced
    # the previous one; the npz just written lists none of them.
    folder = os.path.join(directory, CLIENT_STATES_DIR)
    listed = {file for _, file, _ in journal.files}
    for file in os.listdir(folder) if os.path.isdir(folder) else []:
        if file not in listed:
            try:
                os.unlink(os.path.join(folder, file))
            except OSError:
                pass


def _move_old_residuals(state: NeutralState, store: ClientStateStore) -> None:
    old = sorted(k for k in state.aggregator if "/residual/" in k)
    for key in old:
        step, cid = key.split("/residual/", 1)
        value = np.asarray(state.aggregator.pop(key)[0])
        store.table(f"{step}/residual", [np.zeros_like(value)]).write([cid], [value[None]])


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
            if meta.get("format") not in _READABLE:
                raise ValueError(f"unknown format {meta.get('format')!r}")
            weights = [data[f"weights_{i:05d}"] for i in range(meta["num_weights"])]
            groups = {
                group: {
                    slot: [data[f"{group}/{slot}/{i:05d}"] for i in range(count)]
                    for slot, count in meta.get(group, {}).items()
                }
                for group in GROUPS
            }
            client_states = None
            if "client_states" in meta:
                saved = meta["client_states"]
                client_states = SavedClientStates(
                    templates={name: [data[f"client_states/{name}/{i:05d}"] for i in range(n)]
                               for name, n in saved["tables"].items()},
                    files=[(str(t), str(f), int(r)) for t, f, r in saved["files"]])
            pending = None
            if "pending" in meta:
                pending = (meta["pending"], {k[len("pending/"):]: data[k] for k in data.files
                                             if k.startswith("pending/")})
        return Checkpoint(
            rounds_completed=int(meta["rounds_completed"]),
            seed=int(meta["seed"]),
            fingerprint={str(k): str(v) for k, v in meta["fingerprint"].items()},
            round_logs=[dict(logs) for logs in meta["round_logs"]],
            state=NeutralState(weights=weights, **groups),
            client_states=client_states, pending=pending,
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
