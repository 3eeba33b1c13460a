"""``backup_dir``: resume a restarted multi-worker job after its last finished epoch.

``keras.callbacks.BackupAndRestore`` saves the training state at the end of every
epoch and restores it when ``fit`` starts again, so a group that
``kerasfed launch --max-restarts`` restarted after a worker died continues with the
epoch after the last completed one. All workers restore from the same
``backup_dir`` (a path every worker can read: a shared filesystem across hosts).

Keras 2's callback already lets only the chief write there. Keras 3's writes from
every worker to the same files; under several workers the subclass below keeps
that for the chief and sends the others' (still required) saves to their own
temporary directory.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kerasfed._compat import KERAS_3, keras

# Keras 3's BackupAndRestore keeps the files it writes in these attributes.
_KERAS3_PATHS = ("_weights_path", "_training_metadata_path", "_prev_weights_path", "_prev_training_metadata_path")


class _WorkerBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras 3 BackupAndRestore of a non-chief worker: reads ``backup_dir``, writes elsewhere."""

    def __init__(self, backup_dir: str, *, write_dir: str, **kwargs: Any):
        super().__init__(backup_dir, **kwargs)
        missing = [a for a in _KERAS3_PATHS if not hasattr(self, a)]
        if missing:  # a Keras release that changed the callback's internals
            raise NotImplementedError(
                f"kerasfed cannot make keras {keras.__version__}'s BackupAndRestore safe "
                f"for several workers (missing {missing}). Use backup_dir with one worker."
            )
        self._write_dir = write_dir

    def _save_model(self) -> None:
        saved = {a: getattr(self, a) for a in ("backup_dir", *_KERAS3_PATHS)}
        self.backup_dir = self._write_dir
        for attribute in _KERAS3_PATHS:
            setattr(self, attribute, os.path.join(self._write_dir, os.path.basename(saved[attribute])))
        try:
            super()._save_model()
        finally:
            for attribute, value in saved.items():
                setattr(self, attribute, value)

    def on_train_end(self, logs: Any = None) -> None:
        # The chief deletes backup_dir; this worker's copies go with its temp dir.
        pass


def backup_callback(backup_dir: str | os.PathLike, *, write_dir: str | None) -> keras.callbacks.Callback:
    """A BackupAndRestore for ``backup_dir``.

    Args:
        backup_dir: Where the chief keeps the training state.
        write_dir: Where this worker writes instead (a non-chief worker's temp
            dir), or ``None`` on the chief and in single-process training.
    """
    # Keras 3 writes its backup in place: a worker stopped mid-write would leave a
    # file that cannot be read, so keep the previous epoch's copy to fall back on
    # (Keras 2 writes through tf.train.CheckpointManager, which is safe already).
    kwargs = {"double_checkpoint": True} if KERAS_3 else {}
    if KERAS_3 and write_dir is not None:
        return _WorkerBackupAndRestore(os.fspath(backup_dir), write_dir=write_dir, **kwargs)
    return keras.callbacks.BackupAndRestore(os.fspath(backup_dir), **kwargs)


def adapt_user_backup(callback: keras.callbacks.Callback, *, write_dir: str | None) -> keras.callbacks.Callback:
    """The user's own BackupAndRestore, made safe for a non-chief Keras 3 worker."""
    if not (KERAS_3 and write_dir is not None and isinstance(callback, keras.callbacks.BackupAndRestore)):
        return callback
    if isinstance(callback, _WorkerBackupAndRestore):
        return callback
    return _WorkerBackupAndRestore(
        callback.backup_dir,
        write_dir=write_dir,
        save_freq=callback.save_freq,
        double_checkpoint=getattr(callback, "double_checkpoint", False),
        delete_checkpoint=getattr(callback, "delete_checkpoint", True),
    )


def resume_epoch(callbacks: list) -> int | None:
    """The epoch ``model.fit`` will resume at from these callbacks' backup, or ``None``.

    Read before ``fit`` starts, so that the training data can start at that epoch
    (:mod:`kerasfed.distributed.epoch_order`); ``fit`` then restores the same
    backup itself. Only epoch-wise backups (``save_freq="epoch"``) are read.
    """
    backup_dir = _epoch_backup_dir(callbacks)
    if backup_dir is None:
        return None
    return _keras3_saved_epoch(backup_dir) if KERAS_3 else _keras2_saved_epoch(backup_dir)


# Next to Keras's files in backup_dir: the shuffle seed of the run being backed up,
# so that a resumed run keeps its order even when the script draws a new seed.
_ORDER_FILE = "kerasfed_order.json"


def saved_seed(callbacks: list) -> int | None:
    """The shuffle seed recorded by :func:`save_seed` in the backup, if any."""
    backup_dir = _epoch_backup_dir(callbacks)
    try:
        with open(os.path.join(backup_dir, _ORDER_FILE)) as f:
            return int(json.load(f)["seed"])
    except (TypeError, OSError, ValueError, KeyError):
        return None


def save_seed(callbacks: list, seed: int) -> None:
    """Records the shuffle seed in the backup directory (call on the chief only)."""
    backup_dir = _epoch_backup_dir(callbacks)
    if backup_dir is None:
        return
    os.makedirs(backup_dir, exist_ok=True)
    temporary = os.path.join(backup_dir, f".{_ORDER_FILE}.{os.getpid()}")
    with open(temporary, "w") as f:
        json.dump({"seed": seed}, f)
    os.replace(temporary, os.path.join(backup_dir, _ORDER_FILE))  # never half-written


def _epoch_backup_dir(callbacks: list) -> str | None:
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore) and callback.save_freq == "epoch":
            return os.fspath(callback.backup_dir)
    return None


def _keras2_saved_epoch(backup_dir: str) -> int | None:
    # Keras 2 keeps the last completed epoch in the chief's checkpoint (its
    # WorkerTrainingState) and resumes at the one after it.
    import tensorflow as tf

    checkpoint = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if checkpoint is None:
        return None
    saved = int(tf.train.load_checkpoint(checkpoint).get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    return saved + 1 if saved >= 0 else None


def _keras3_saved_epoch(backup_dir: str) -> int | None:
    # Keras 3 writes the epoch to resume at next to the weights, and falls back
    # to the previous copy (double_checkpoint) when the current one cannot be read.
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            with open(os.path.join(backup_dir, name)) as f:
                return int(json.load(f)["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None
