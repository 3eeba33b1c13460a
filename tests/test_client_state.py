"""Tests for the per-client state store (kerasfed/federated/client_state.py) and its
checkpoints (checkpoint.py's journal), against a plain dict of numpy rows.

The store is numpy only; the last test trains with ``TopK`` on the native engine
in a child process, kills it with SIGKILL in the middle of a round and resumes it.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from kerasfed.errors import CheckpointError, ClientStateError, KerasfedError
from kerasfed.federated import checkpoint as ckpt
from kerasfed.federated.client_state import ClientStateStore, default_memory_budget
from kerasfed.federated.engines.base import NeutralState

pytestmark = pytest.mark.native

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "client_state_resume.py")
CHILD_TIMEOUT_S = 300.0


def _template():
    return [np.zeros((3, 2), np.float32), np.full(4, 7, np.int64)]


def _rows(rng, n):
    return [rng.normal(size=(n, 3, 2)).astype(np.float32), rng.integers(-9, 9, (n, 4))]


def _play_rounds(table, rng, *, rounds=30, clients=40, per_round=6, reference=None):
    """Random rounds of read-then-write; checks every read against a dict reference
    (``reference``: what ``table`` holds, updated in place)."""
    reference = {} if reference is None else reference
    for _ in range(rounds):
        cids = [f"c{i}" for i in rng.choice(clients, per_round, replace=False)]
        got = table.read(cids)
        for i, cid in enumerate(cids):
            want = reference.get(cid, _template())
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g[i], w)
        new = _rows(rng, per_round)
        table.write(cids, new)
        reference.update({cid: [a[i] for a in new] for i, cid in enumerate(cids)})
    return reference


def _assert_holds(table, reference):
    assert len(table) == len(reference) and set(table) == set(reference)
    cids = sorted(reference)
    got = table.read(cids)
    for i, cid in enumerate(cids):
        for g, w in zip(got, reference[cid]):
            np.testing.assert_array_equal(g[i], w)


# -- Reading and writing ---------------------------------------------------------------------


def test_round_trip_and_unseen_clients_read_the_template():
    with ClientStateStore() as store:
        table = store.table("control", _template())
        assert len(table) == 0 and "a" not in table
        x, n = _rows(np.random.default_rng(0), 2)
        table.write(["a", "b"], [x, n])
        assert len(table) == 2 and "a" in table and "z" not in table
        got = table.read(["b", "z", "a", "b"])  # any order, unseen and repeated ids
        assert [g.shape for g in got] == [(4, 3, 2), (4, 4)]
        assert [g.dtype for g in got] == [np.float32, np.int64]
        np.testing.assert_array_equal(got[0], [x[1], np.zeros((3, 2)), x[0], x[1]])
        np.testing.assert_array_equal(got[1], [n[1], np.full(4, 7), n[0], n[1]])
        assert [len(g) for g in table.read([])] == [0, 0]
        # The rows are copies: changing what was read or written changes nothing stored.
        written = x.copy()
        x[:] = 5.0
        got[0][:] = 9.0
        np.testing.assert_array_equal(table.read(["a", "b"])[0], written)


def test_a_name_gets_the_same_table_and_tables_are_apart():
    with ClientStateStore() as store:
        first = store.table("one", _template())
        assert store.table("one", _template()) is first
        other = store.table("two", [np.ones(2, np.float64)])
        first.write(["a"], [np.ones((1, 3, 2)), np.ones((1, 4), np.int64)])
        assert "a" not in other and len(store.tables) == 2
        np.testing.assert_array_equal(other.read(["a"])[0], [[1.0, 1.0]])


@pytest.mark.parametrize("budget", [10**9, 5 * 56 + 10, 0])  # all in memory, some, none
def test_random_rounds_keep_exact_values_whatever_the_budget(budget):
    with ClientStateStore(memory_budget_bytes=budget) as store:
        table = store.table("state", _template())  # a row is 24 + 32 = 56 bytes
        reference = _play_rounds(table, np.random.default_rng(1))
        _assert_holds(table, reference)
        assert store.memory_bytes <= budget
        if budget == 0:
            assert table.disk_rows == len(table) and store.memory_bytes == 0
        elif budget < 10**6:
            assert store.memory_bytes == 5 * 56 and table.disk_rows == len(table) - 5
        else:
            assert table.disk_rows == 0 and store.directory is None  # no files made


def test_the_budget_is_shared_by_the_tables():
    with ClientStateStore(memory_budget_bytes=10 * 8) as store:
        a = store.table("a", [np.zeros(1, np.float64)])
        b = store.table("b", [np.zeros(1, np.float64)])
        a.write([f"c{i}" for i in range(10)], [np.arange(10.0)[:, None]])
        b.write([f"c{i}" for i in range(3)], [np.arange(3.0)[:, None]])
        assert a.disk_rows == 0 and b.disk_rows == 3 and store.memory_bytes == 80
        np.testing.assert_array_equal(b.read(["c2", "c0"])[0], [[2.0], [0.0]])


def test_default_budget_is_a_share_of_the_memory():
    budget = default_memory_budget()
    assert 0 < budget < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert ClientStateStore(memory_budget_bytes=5).memory_budget_bytes == 5


# -- Files on disk ---------------------------------------------------------------------------


def test_files_go_in_a_temporary_directory_removed_on_close(tmp_path):
    store = ClientStateStore(memory_budget_bytes=0, directory=tmp_path / "spill")
    table = store.table("t", _template())
    assert store.directory is None  # made when a row first goes to disk
    table.write(["a"], _rows(np.random.default_rng(0), 1))
    files_dir = store.directory
    assert os.path.dirname(files_dir) == str(tmp_path / "spill") and os.listdir(files_dir)
    store.close()
    assert not os.path.exists(files_dir) and os.listdir(tmp_path / "spill") == []
    store.close()  # twice is fine


def test_files_are_removed_when_the_store_is_garbage_collected(tmp_path):
    store = ClientStateStore(memory_budget_bytes=0, directory=tmp_path)
    store.table("t", _template()).write(["a"], _rows(np.random.default_rng(0), 1))
    files_dir = store.directory
    del store
    gc.collect()
    assert not os.path.exists(files_dir)


def test_files_are_removed_at_interpreter_exit(tmp_path):
    code = (
        "import numpy as np\n"
        "from kerasfed.federated.client_state import ClientStateStore\n"
        f"store = ClientStateStore(memory_budget_bytes=0, directory={str(tmp_path)!r})\n"
        "store.table('t', [np.zeros(3)]).write(['a'], [np.ones((1, 3))])\n"
        "KEEP = store  # alive until the interpreter exits\n"
        "print(store.directory, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's VmRSS")
def test_rows_on_disk_keep_the_resident_memory_flat():
    # 400 clients x 64k float32 (100 MiB) with a 1 MiB budget, written and read in
    # rounds of 20 clients: the memory-mapped pages are unmapped after each call.
    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    rng = np.random.default_rng(0)
    with ClientStateStore(memory_budget_bytes=1 << 20) as store:
        table = store.table("big", [np.zeros(1 << 16, np.float32)])
        rows = rng.normal(size=(20, 1 << 16)).astype(np.float32)
        table.write([f"w{i}" for i in range(20)], [rows])  # warms the allocator up
        before = rss_mib()
        for start in range(0, 400, 20):
            cids = [f"c{i}" for i in range(start, start + 20)]
            table.write(cids, [rows + start])
            read = table.read(cids)[0]
            np.testing.assert_array_equal(read, rows + start)
            del read
        grown = rss_mib() - before
        assert table.disk_rows > 390
        np.testing.assert_array_equal(table.read(["c0", "c399"])[0], [rows[0], rows[19] + 380])
    assert grown < 30, f"resident memory grew by {grown:.0f} MiB for 100 MiB of state"


# -- Errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"memory_budget_bytes": -1}, r"memory_budget_bytes.*int >= 0.*Received: memory_budget_bytes=-1"),
    ({"memory_budget_bytes": 1.5}, r"memory_budget_bytes.*int >= 0"),
    ({"memory_budget_bytes": True}, r"memory_budget_bytes.*int >= 0"),
    ({"directory": 3}, r"`directory` to be None or a directory path.*int"),
])
def test_bad_store_arguments(kwargs, match):
    with pytest.raises(ClientStateError, match=match):
        ClientStateStore(**kwargs)


def test_bad_tables():
    with ClientStateStore() as store:
        store.table("t", _template())
        with pytest.raises(ClientStateError, match=r"table 't' holds tensors of .*\(3, 2\).*"
                                                   r"this call asks for.*\(3, 3\).*another name"):
            store.table("t", [np.zeros((3, 3), np.float32), np.zeros(4, np.int64)])
        with pytest.raises(ClientStateError, match="holds tensors.*float64"):
            store.table("t", [np.zeros((3, 2)), np.zeros(4, np.int64)])
        with pytest.raises(ClientStateError, match="non-empty list of arrays.*Received: ndarray"):
            store.table("u", np.zeros(3))
        with pytest.raises(ClientStateError, match="non-empty list of arrays.*Received: list"):
            store.table("u", [])
        with pytest.raises(ClientStateError, match="numeric template arrays.*<U1"):
            store.table("u", [np.array(["a"])])
        with pytest.raises(ClientStateError, match="`name` to be a non-empty string"):
            store.table("", _template())


def test_bad_reads_and_writes():
    with ClientStateStore() as store:
        table = store.table("t", _template())
        ok = _rows(np.random.default_rng(0), 2)
        with pytest.raises(ClientStateError, match="has 2 tensors per client; received 1 arrays"):
            table.write(["a", "b"], ok[:1])
        with pytest.raises(ClientStateError, match=r"tensor 0: expected shape \(2, 3, 2\).*"
                                                   r"Received shape \(1, 3, 2\)"):
            table.write(["a", "b"], [ok[0][:1], ok[1]])
        with pytest.raises(ClientStateError, match=r"tensor 1: expected .* dtype int64.*float32"):
            table.write(["a", "b"], [ok[0], ok[1].astype(np.float32)])
        with pytest.raises(ClientStateError, match=r"client ids \['a'\] appear more than once"):
            table.write(["a", "a"], ok)
        with pytest.raises(ClientStateError, match="client ids to be strings.*Received 3 of type int"):
            table.read(["a", 3])
        with pytest.raises(ClientStateError, match="Received the string 'ab'; pass \\['ab'\\]"):
            table.read("ab")
        assert len(table) == 0  # nothing was written by the failed calls
    with pytest.raises(ClientStateError, match="the store was closed.*new ClientStateStore"):
        table.read(["a"])
    with pytest.raises(ClientStateError, match="the store was closed"):
        store.table("t", _template())
    assert issubclass(ClientStateError, (KerasfedError, ValueError))


# -- Checkpoints -----------------------------------------------------------------------------


def _checkpoint(rounds, aggregator=None):
    return ckpt.Checkpoint(rounds_completed=rounds, seed=1, fingerprint={"x": "1"}, round_logs=[],
                           state=NeutralState(weights=[np.zeros(2, np.float32)],
                                              aggregator=aggregator or {}))


def _restored(directory, budget=10**9):
    store = ClientStateStore(memory_budget_bytes=budget)
    ckpt.restore_client_states(directory, ckpt.load_checkpoint(directory), store)
    return store


def _journal_rows(directory):
    return sum(rows for _, _, rows in ckpt.load_checkpoint(directory).client_states.files)


@pytest.mark.parametrize("budget", [10**9, 0])
def test_checkpoints_save_the_changed_rows_and_restore_exactly(tmp_path, budget):
    rng = np.random.default_rng(2)
    with ClientStateStore(memory_budget_bytes=budget) as store:
        table = store.table("1/state", _template())
        other = store.table("other", [np.ones(2, np.float16)])
        other.write(["x"], [np.full((1, 2), 3, np.float16)])
        reference = _play_rounds(table, rng, rounds=3, clients=40, per_round=6)
        ckpt.save_checkpoint(tmp_path, _checkpoint(3), client_states=store)
        assert _journal_rows(tmp_path) == len(table) + 1  # the first save: every row
        first_rows = len(table) + 1
        for rounds in range(4, 7):
            _play_rounds(table, rng, rounds=1, clients=40, per_round=6, reference=reference)
            ckpt.save_checkpoint(tmp_path, _checkpoint(rounds), client_states=store)
        # Later saves wrote only each round's 6 rows.
        assert _journal_rows(tmp_path) == first_rows + 3 * 6

        restored = _restored(tmp_path, budget)
        _assert_holds(restored.table("1/state", _template()), reference)
        np.testing.assert_array_equal(restored.tables["other"].read(["x", "y"])[0], [[3, 3], [1, 1]])
        assert restored.tables["other"].read(["x"])[0].dtype == np.float16
        restored.close()


def test_the_journal_is_compacted_and_old_files_removed(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / ckpt.CLIENT_STATES_DIR
    with ClientStateStore() as store:
        table = store.table("t", _template())
        saved: dict = {}
        for rounds in range(1, 30):
            _play_rounds(table, rng, rounds=1, clients=8, per_round=4, reference=saved)
            ckpt.save_checkpoint(tmp_path, _checkpoint(rounds), client_states=store)
            listed = {f for _, f, _ in ckpt.load_checkpoint(tmp_path).client_states.files}
            assert set(os.listdir(folder)) == listed  # nothing unlisted is left
            assert _journal_rows(tmp_path) <= 2 * len(table) + 4
    with _restored(tmp_path) as restored:
        _assert_holds(restored.tables["t"], saved)


def test_writes_after_a_save_and_a_crashed_save_leave_the_checkpoint_as_it_was(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    with ClientStateStore(memory_budget_bytes=0) as store:
        table = store.table("t", _template())
        saved = _play_rounds(table, rng, rounds=3)
        ckpt.save_checkpoint(tmp_path, _checkpoint(3), client_states=store)
        _play_rounds(table, rng, rounds=2, reference=dict(saved))  # the next rounds write...
        real_savez = np.savez

        def crash_on_the_npz(file, **arrays):
            if "meta" not in arrays:  # journal files are written
                return real_savez(file, **arrays)
            file.write(b"partial")
            raise OSError("disk full")

        monkeypatch.setattr(ckpt.np, "savez", crash_on_the_npz)
        with pytest.raises(OSError, match="disk full"):  # ...and its save crashes
            ckpt.save_checkpoint(tmp_path, _checkpoint(4), client_states=store)
        monkeypatch.undo()
        assert table.dirty()  # not saved: the next save writes these rows again
    assert ckpt.load_checkpoint(tmp_path).rounds_completed == 3
    with _restored(tmp_path) as restored:
        _assert_holds(restored.tables["t"], saved)


def test_an_empty_store_saves_no_files(tmp_path):
    with ClientStateStore() as store:
        ckpt.save_checkpoint(tmp_path, _checkpoint(1), client_states=store)
        store.table("t", _template())  # a table without rows: its template is saved
        ckpt.save_checkpoint(tmp_path, _checkpoint(2), client_states=store)
    assert os.listdir(tmp_path) == [ckpt.CHECKPOINT_FILE]
    with _restored(tmp_path) as restored:
        assert len(restored.tables["t"]) == 0


def test_a_missing_journal_file_is_a_checkpoint_error(tmp_path):
    with ClientStateStore() as store:
        store.table("t", _template()).write(["a"], _rows(np.random.default_rng(0), 1))
        ckpt.save_checkpoint(tmp_path, _checkpoint(1), client_states=store)
    folder = tmp_path / ckpt.CLIENT_STATES_DIR
    for file in os.listdir(folder):
        os.unlink(folder / file)
    with pytest.raises(CheckpointError, match="Cannot read the client state file .*round000001"
                                              ".*changed by hand or damaged.*new `checkpoint_dir`"):
        _restored(tmp_path)


def test_a_restored_table_refuses_another_template(tmp_path):
    with ClientStateStore() as store:
        store.table("t", _template()).write(["a"], _rows(np.random.default_rng(0), 1))
        ckpt.save_checkpoint(tmp_path, _checkpoint(1), client_states=store)
    with _restored(tmp_path) as restored:
        with pytest.raises(ClientStateError, match="table 't' holds tensors"):
            restored.table("t", [np.zeros(3)])


def test_old_checkpoints_top_k_residuals_move_into_the_store(tmp_path):
    # Before the store, TopK kept "<step>/residual/<cid>" in the aggregator state.
    old = {"0/clip": [np.array(0.5, np.float32)],
           "1/residual/c0": [np.array([1.0, 2.0], np.float32)],
           "1/residual/c1": [np.array([0.0, -1.0], np.float32)]}
    ckpt.save_checkpoint(tmp_path, _checkpoint(2, aggregator=old))
    loaded = ckpt.load_checkpoint(tmp_path)
    with ClientStateStore() as store:
        ckpt.restore_client_states(tmp_path, loaded, store)
        assert set(loaded.state.aggregator) == {"0/clip"}
        got = store.table("1/residual", [np.zeros(2, np.float32)]).read(["c1", "c0", "c2"])[0]
        np.testing.assert_array_equal(got, [[0.0, -1.0], [1.0, 2.0], [0.0, 0.0]])


# -- A run killed mid-round --------------------------------------------------------------------


def _run_child(tmp_path, *, pause_round=None):
    """Runs the script: with ``pause_round``, kills it with SIGKILL mid-round; else
    resumes, trains again uninterrupted and returns (stdout words, resumed,
    uninterrupted weights)."""
    out = tmp_path / "weights.npz"
    command = [sys.executable, SCRIPT, str(tmp_path / "checkpoints"), str(out)]
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))  # where its rows on disk go
    os.makedirs(env["TMPDIR"], exist_ok=True)
    if pause_round is None:
        done = subprocess.run(command + ["compare"], capture_output=True, text=True, env=env,
                              timeout=CHILD_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-3000:]
        with np.load(out) as data:
            n = len(data.files) // 2
            return (done.stdout.split(), [data[f"resumed_{i}"] for i in range(n)],
                    [data[f"uninterrupted_{i}"] for i in range(n)])
    child = subprocess.Popen(command + [f"pause={pause_round}"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline().strip()  # blocks until the round is mid-way
        assert line == f"AGGREGATED {pause_round}", child.stderr.read()[-3000:]
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.communicate(timeout=CHILD_TIMEOUT_S)
    assert child.returncode == -signal.SIGKILL
    return None


# Two child processes (a TensorFlow start each) for the store's own journal and files,
# which TensorFlow does not touch; under TF 2.14, resuming the native engine from a
# checkpoint is tested in this process (above, and tests/test_federated_checkpoint.py)
# and after a SIGKILL by test_federated_checkpoint.py: dev.py runs this once (TF 2.21).
@pytest.mark.newest_tf_only
def test_resume_after_sigkill_mid_round_equals_uninterrupted_with_top_k(tmp_path):
    # Killed in round 3 (index 2) after TopK wrote that round's residuals into the
    # store's files, which the checkpoint of round 2 must not see.
    _run_child(tmp_path, pause_round=2)
    saved = ckpt.load_checkpoint(tmp_path / "checkpoints")
    assert saved.rounds_completed == 2
    assert saved.client_states.templates.keys() == {"0/residual"}
    assert sum(rows for _, _, rows in saved.client_states.files) >= 3
    stdout, resumed, uninterrupted = _run_child(tmp_path)
    assert stdout[-3:] == ["DONE", "4", "4"]
    for a, b in zip(resumed, uninterrupted, strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical
    # Only the killed process's rows are left behind (a SIGKILL runs no cleanup).
    left = [d for d in os.listdir(tmp_path / "tmp") if d.startswith("kerasfed-client-state-")]
    assert len(left) == 1
