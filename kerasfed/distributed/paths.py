"""Where each worker writes files: the chief to the user's paths, the others to a temp dir.

Under MultiWorkerMirroredStrategy every worker must run the same saving code (a
save can read synchronised variables, which is a collective op all workers join),
but only one copy should land in the user's paths. TensorFlow's multi-worker guide
(https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras, "Model
saving and loading") prescribes the pattern implemented here: non-chief workers
write to a temporary directory that is removed afterwards. This covers
``save_path`` and the paths of Keras's file-writing callbacks (ModelCheckpoint,
TensorBoard, CSVLogger); the backup of ``backup_dir`` is in ``backup.py``.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Any, Sequence

from kerasfed._compat import keras

# Callback class -> attribute holding the path it writes to.
_PATH_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (keras.callbacks.ModelCheckpoint, "filepath"),
    (keras.callbacks.TensorBoard, "log_dir"),
    (keras.callbacks.CSVLogger, "filename"),
)


_PREFIX = "kerasfed-worker"


class WorkerPaths:
    """Context manager redirecting a non-chief worker's writes to a temp dir.

    On the chief every path stays as it is. On other workers :meth:`write_path`
    maps a path into a fresh temporary directory and :meth:`redirect` points the
    file-writing callbacks there; on exit, also after an exception, the callbacks
    get their paths back and the directory is removed. A worker killed outright
    (SIGKILL) cannot remove its directory; the next worker to start removes the
    directories of processes that no longer exist.

    Args:
        is_chief: Whether this process writes to the user's paths.
        rank: This worker's rank, used in the temp dir's name.
    """

    def __init__(self, *, is_chief: bool, rank: int = 0):
        self.is_chief = is_chief
        self.rank = rank
        self.temp_dir: str | None = None
        self._restore: list[tuple[Any, str, Any]] = []
        self._count = 0

    def __enter__(self) -> "WorkerPaths":
        if not self.is_chief:
            _remove_dead_workers_dirs()
            prefix = f"{_PREFIX}{self.rank}-{os.getpid()}-"
            self.temp_dir = tempfile.mkdtemp(prefix=prefix)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for obj, attribute, value in reversed(self._restore):
            setattr(obj, attribute, value)
        self._restore.clear()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def write_path(self, path: str | os.PathLike) -> str:
        """``path`` on the chief; a path with the same file name in the temp dir elsewhere."""
        path = os.fspath(path)
        if self.temp_dir is None:
            return path
        # One subdirectory per redirected path: two callbacks may use the same name.
        self._count += 1
        folder = os.path.join(self.temp_dir, str(self._count))
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, os.path.basename(os.path.normpath(path)) or "out")

    def redirect(self, callbacks: Sequence[keras.callbacks.Callback]) -> None:
        """Points the file-writing callbacks at the temp dir (non-chief only)."""
        if self.temp_dir is None:
            return
        for callback in callbacks:
            for cls, attribute in _PATH_ATTRIBUTES:
                if isinstance(callback, cls):
                    original = getattr(callback, attribute)
                    self._restore.append((callback, attribute, original))
                    setattr(callback, attribute, self.write_path(original))


def _remove_dead_workers_dirs() -> None:
    """Removes this user's worker temp dirs whose process is gone (named ...-PID-...)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{_PREFIX}*-*-*")):
        try:
            pid = int(os.path.basename(path).split("-")[2])
            if os.stat(path).st_uid != os.getuid() or _alive(pid):
                continue
        except (ValueError, IndexError, OSError):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
