"""Per-client state: tensors each client keeps between the rounds it takes part in.

SCAFFOLD's client control variates and ``TopK``'s error-feedback residuals are
such state. A ``ClientStateStore`` holds named tables of it, one row per client
that has taken part (a client that never did reads the table's *template*, e.g.
zeros), and a round reads and writes only its sampled clients' rows.

Rows live in memory up to a memory budget shared by the store's tables; rows
beyond it live in files under a temporary directory (one raw file per tensor)
that are memory-mapped only while a read or write runs, so their pages are
the kernel's page cache, not the process's resident memory: 10,000 clients with
a 200k-float state each (8 GB) run in flat memory, as on-disk clients do
(``benchmarks/client_state.py`` measures it). A row keeps its place once given
one, so nothing moves when the budget fills up.

The store is saved with ``fit_federated``'s checkpoints (``checkpoint.py``): it
remembers which rows changed since the last save, so a checkpoint writes only
those (the round's sampled clients), not the whole store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from kerasfed.errors import ClientStateError

# Memory is taken from the budget in blocks of rows of about this size (at least
# one row), so that a table grows without copying what it holds.
_BLOCK_BYTES = 16 << 20
_ON_DISK = -1  # the block index of a row kept in the table's files


def default_memory_budget() -> int:
    """A quarter of the memory available now (Linux ``MemAvailable``), else of
    the physical memory, else 1 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (AttributeError, ValueError, OSError):
        return 1 << 30


class ClientStateStore:
    """Per-client tensors keyed by client id, for the clients that have taken part.

    Args:
      memory_budget_bytes: Bytes of rows kept in memory, over all tables (default
        None: a quarter of the memory available when the store is made). Rows
        beyond it are kept in memory-mapped files; 0 keeps every row on disk.
      directory: Where those files go: a temporary directory made inside it
        (default None: inside the system's temporary directory). Made only when a
        row first goes to disk, and removed by ``close()``, when the store is
        garbage collected, or at interpreter exit.

    Raises:
      ClientStateError: A negative or non-integer budget, or a ``directory``
        that is not a path.

    Example:
      >>> store = ClientStateStore(memory_budget_bytes=1 << 20)
      >>> table = store.table("residual", [np.zeros(3, np.float32)])
      >>> table.write(["a"], [np.ones((1, 3), np.float32)])
      >>> table.read(["a", "b"])[0].tolist()
      [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
      >>> store.close()
    """

    def __init__(self, *, memory_budget_bytes: int | None = None,
                 directory: str | os.PathLike | None = None) -> None:
        if memory_budget_bytes is None:
            memory_budget_bytes = default_memory_budget()
        if isinstance(memory_budget_bytes, bool) or not isinstance(
                memory_budget_bytes, (int, np.integer)) or memory_budget_bytes < 0:
            raise ClientStateError(
                f"ClientStateStore: expected `memory_budget_bytes` to be None or an int >= 0 "
                f"(bytes of client state kept in memory). Received: "
                f"memory_budget_bytes={memory_budget_bytes!r}."
            )
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise ClientStateError(
                f"ClientStateStore: expected `directory` to be None or a directory path. "
                f"Received: directory={directory!r} of type {type(directory).__name__}."
            )
        self._budget = int(memory_budget_bytes)
        self._memory_used = 0
        self._parent = None if directory is None else os.fspath(directory)
        self._spill_dir: str | None = None
        self._remove_spill_dir: weakref.finalize | None = None
        self._tables: dict[str, ClientStateTable] = {}
        self._files_made = 0
        self._closed = False
        #: What this store last saved in each checkpoint directory (``checkpoint.py``).
        self.saved_journals: dict[str, Any] = {}

    # -- tables ------------------------------------------------------------------------------
    def table(self, name: str, template: Sequence[np.ndarray]) -> ClientStateTable:
        """The table ``name``, made on the first call.

        Args:
          name: The table's name (e.g. ``"1/residual"``).
          template: One array per tensor of a client's state, holding the value a
            client that never took part reads (e.g. zeros).

        Raises:
          ClientStateError: ``name`` exists with other tensor shapes or dtypes, or
            the template is not a non-empty list of numeric arrays.
        """
        self._check_open()
        if not isinstance(name, str) or not name:
            raise ClientStateError(
                f"ClientStateStore.table: expected `name` to be a non-empty string. "
                f"Received: name={name!r}."
            )
        template = _check_template(name, template)
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = ClientStateTable(self, name, template)
        elif _layout(table.template) != _layout(template):
            raise ClientStateError(
                f"ClientStateStore.table: table {name!r} holds tensors of (shape, dtype) "
                f"{_layout(table.template)}; this call asks for {_layout(template)}. Use "
                f"another name for other state, or the same template as before."
            )
        return table

    @property
    def tables(self) -> dict[str, ClientStateTable]:
        """The tables made so far, by name."""
        return dict(self._tables)

    @property
    def memory_budget_bytes(self) -> int:
        return self._budget

    @property
    def memory_bytes(self) -> int:
        """Bytes of memory the tables' rows take (blocks reserved from the budget)."""
        return self._memory_used

    @property
    def directory(self) -> str | None:
        """The temporary directory of rows on disk, or None while there is none."""
        return self._spill_dir

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Drops every row and removes the temporary files (idempotent)."""
        self._closed = True
        for table in self._tables.values():
            table._release()  # a table still referenced elsewhere holds no memory
        self._tables.clear()
        self._memory_used = 0
        if self._remove_spill_dir is not None:
            self._remove_spill_dir()

    def __enter__(self) -> ClientStateStore:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        tables = {name: len(t) for name, t in self._tables.items()}
        return (f"ClientStateStore(tables={tables}, memory_bytes={self._memory_used}, "
                f"memory_budget_bytes={self._budget}, directory={self._spill_dir!r})")

    # -- for the tables ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClientStateError(
                "ClientStateStore: the store was closed (fit_federated closes its store when "
                "training ends). Make a new ClientStateStore."
            )

    def _reserve_rows(self, row_bytes: int, wanted_rows: int) -> int:
        """Rows (at most ``wanted_rows``, possibly 0) granted from the budget."""
        rows = min(wanted_rows, (self._budget - self._memory_used) // max(1, row_bytes))
        rows = max(0, rows)
        self._memory_used += rows * row_bytes
        return rows

    def _new_file_id(self) -> int:
        self._files_made += 1
        return self._files_made

    def _files_directory(self) -> str:
        if self._spill_dir is None:
            if self._parent is not None:
                os.makedirs(self._parent, exist_ok=True)
            self._spill_dir = tempfile.mkdtemp(prefix="kerasfed-client-state-", dir=self._parent)
            # Runs on close(), on garbage collection and at interpreter exit (not after
            # SIGKILL: such a directory is left in the temporary directory).
            self._remove_spill_dir = weakref.finalize(
                self, shutil.rmtree, self._spill_dir, ignore_errors=True)
        return self._spill_dir


class ClientStateTable:
    """One named kind of per-client state: a row of tensors per client.

    Made by ``ClientStateStore.table``. Rows are read and written for a list of
    client ids at once, each tensor stacked on a new first axis.
    """

    def __init__(self, store: ClientStateStore, name: str, template: list[np.ndarray]) -> None:
        self._store = store
        self.name = name
        self._template = template
        self._row_bytes = sum(t.nbytes for t in template)
        self._where: dict[str, tuple[int, int]] = {}  # cid -> (block or _ON_DISK, row)
        self._blocks: list[list[np.ndarray]] = []  # in-memory blocks, one array per tensor
        self._block_rows_used = 0  # in the last block
        self._paths: list[str] | None = None  # one raw file per tensor
        self._disk_rows = 0
        self._disk_capacity = 0
        self._dirty: set[str] = set()

    @property
    def template(self) -> list[np.ndarray]:
        """The value of a client that never took part (copies)."""
        return [t.copy() for t in self._template]

    def __contains__(self, cid: object) -> bool:
        return cid in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[str]:
        """The stored client ids, in the order they were first written."""
        return iter(list(self._where))

    @property
    def disk_rows(self) -> int:
        """Clients whose rows are kept on disk (beyond the memory budget)."""
        return self._disk_rows

    # -- reading and writing -----------------------------------------------------------------
    def read(self, cids: Sequence[str]) -> list[np.ndarray]:
        """The state of ``cids``: one array per template tensor, ``[len(cids), ...]``.

        Clients never written read the template.

        Raises:
          ClientStateError: A client id is not a string, or the store is closed.
        """
        self._store._check_open()
        cids = self._check_cids("read", cids)
        out = [np.empty((len(cids), *t.shape), t.dtype) for t in self._template]
        in_block: dict[int, tuple[list[int], list[int]]] = {}
        for i, cid in enumerate(cids):
            block, row = self._where.get(cid, (None, 0))
            if block is None:
                for o, t in zip(out, self._template):
                    o[i] = t
            else:
                positions, rows = in_block.setdefault(block, ([], []))
                positions.append(i)
                rows.append(row)
        for block, (positions, rows) in in_block.items():
            whole = len(positions) == len(cids)  # (positions are in order): no scratch copy
            for k, o in enumerate(out):
                if whole:
                    np.take(self._rows_of(block, k), rows, axis=0, out=o)
                else:
                    o[positions] = self._rows_of(block, k)[rows]
        return out

    def write(self, cids: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Sets the state of ``cids`` (the layout ``read`` returns).

        Raises:
          ClientStateError: Repeated or non-string ids, or arrays whose number,
            shapes or dtypes do not fit the template.
        """
        self._store._check_open()
        cids = self._check_cids("write", cids)
        if len(set(cids)) != len(cids):
            repeated = sorted({c for c in cids if cids.count(c) > 1})
            raise ClientStateError(
                f"ClientStateTable.write: table {self.name!r}: client ids {repeated[:5]} "
                f"appear more than once; write each client's state once per call."
            )
        arrays = self._check_arrays(cids, arrays)
        in_block: dict[int, tuple[list[int], list[int]]] = {}
        for i, cid in enumerate(cids):
            block, row = self._where.get(cid) or self._place(cid)
            positions, rows = in_block.setdefault(block, ([], []))
            positions.append(i)
            rows.append(row)
        for block, (positions, rows) in in_block.items():
            whole = len(positions) == len(cids)  # (positions are in order): no scratch copy
            for k, a in enumerate(arrays):
                target = self._rows_of(block, k)
                target[rows] = a if whole else a[positions]
                del target  # unmaps a file's pages: they stay in the page cache, not in RSS
        self._dirty.update(cids)

    # -- for checkpoints ---------------------------------------------------------------------
    def dirty(self) -> list[str]:
        """Clients written since ``mark_clean`` (in first-written order)."""
        return [cid for cid in self._where if cid in self._dirty]

    def mark_clean(self) -> None:
        """Forgets which rows changed (a checkpoint has saved them)."""
        self._dirty.clear()

    # -- storage -----------------------------------------------------------------------------
    def _release(self) -> None:
        self._blocks, self._where, self._dirty = [], {}, set()

    def _place(self, cid: str) -> tuple[int, int]:
        """A new row for ``cid``: in the last memory block, a new block, or on disk."""
        if not self._blocks or self._block_rows_used == len(self._blocks[-1][0]):
            wanted = max(1, _BLOCK_BYTES // max(1, self._row_bytes))
            # Once a row is on disk, later rows go there too: the budget is spent.
            rows = 0 if self._disk_rows else self._store._reserve_rows(self._row_bytes, wanted)
            if rows:
                self._blocks.append([np.empty((rows, *t.shape), t.dtype) for t in self._template])
                self._block_rows_used = 0
        if self._blocks and self._block_rows_used < len(self._blocks[-1][0]):
            where = (len(self._blocks) - 1, self._block_rows_used)
            self._block_rows_used += 1
        else:
            where = (_ON_DISK, self._disk_row())
        self._where[cid] = where
        return where

    def _disk_row(self) -> int:
        if self._paths is None:
            name = f"table{self._store._new_file_id()}"
            stem = os.path.join(self._store._files_directory(), name)
            self._paths = [f"{stem}-tensor{k}.bin" for k in range(len(self._template))]
        if self._disk_rows == self._disk_capacity:
            # Doubling a sparse file's length writes nothing: rows take disk space
            # only once written.
            self._disk_capacity = max(16, 2 * self._disk_capacity)
            for path, t in zip(self._paths, self._template):
                with open(path, "ab") as f:
                    f.truncate(self._disk_capacity * t.nbytes)
        self._disk_rows += 1
        return self._disk_rows - 1

    def _rows_of(self, block: int, tensor: int) -> np.ndarray:
        if block != _ON_DISK:
            return self._blocks[block][tensor]
        t = self._template[tensor]
        return np.memmap(self._paths[tensor], dtype=t.dtype, mode="r+",
                         shape=(self._disk_capacity, *t.shape))

    # -- checks ------------------------------------------------------------------------------
    def _check_cids(self, method: str, cids: Sequence[str]) -> list[str]:
        if isinstance(cids, str):
            raise ClientStateError(
                f"ClientStateTable.{method}: expected a list of client ids. Received the "
                f"string {cids!r}; pass [{cids!r}] for one client."
            )
        cids = list(cids)
        bad = [c for c in cids if not isinstance(c, str)]
        if bad:
            raise ClientStateError(
                f"ClientStateTable.{method}: table {self.name!r}: expected client ids to be "
                f"strings (as kerasfed's clients are). Received {bad[0]!r} of type "
                f"{type(bad[0]).__name__}."
            )
        return cids

    def _check_arrays(self, cids: list[str], arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = list(arrays)
        want = [(len(cids), *t.shape) for t in self._template]
        if len(arrays) != len(self._template):
            raise ClientStateError(
                f"ClientStateTable.write: table {self.name!r} has {len(self._template)} "
                f"tensors per client; received {len(arrays)} arrays. Pass one array per "
                f"tensor, shaped {want}."
            )
        out = []
        for k, (a, t) in enumerate(zip(arrays, self._template)):
            a = np.asarray(a)
            if a.shape != want[k] or not np.can_cast(a.dtype, t.dtype, casting="same_kind"):
                raise ClientStateError(
                    f"ClientStateTable.write: table {self.name!r}, tensor {k}: expected shape "
                    f"{want[k]} and dtype {t.dtype} (clients on the first axis). Received "
                    f"shape {a.shape} and dtype {a.dtype}."
                )
            out.append(a)
        return out


def _check_template(name: str, template: Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(template, np.ndarray) or not isinstance(template, (list, tuple)) or not template:
        raise ClientStateError(
            f"ClientStateStore.table: table {name!r}: expected `template` to be a non-empty "
            f"list of arrays (one per tensor of a client's state), e.g. "
            f"[np.zeros(10, np.float32)]. Received: {type(template).__name__}."
        )
    out = []
    for t in template:
        t = np.array(t, copy=True)
        if t.dtype.kind not in "biufc":
            raise ClientStateError(
                f"ClientStateStore.table: table {name!r}: expected numeric template arrays. "
                f"Received dtype {t.dtype}."
            )
        out.append(t)
    return out


def _layout(arrays: Sequence[np.ndarray]) -> list[tuple[tuple[int, ...], str]]:
    return [(tuple(a.shape), str(a.dtype)) for a in arrays]
