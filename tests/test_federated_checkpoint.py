"""Tests for fit_federated's checkpoint_dir: the file format, resuming, refusing.

The resume tests compare against the same training run uninterrupted in this
process (tests/scripts/fed_resume.py defines it); one of them kills a child
process with SIGKILL after its second round and runs it again.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import wait_for_no_processes
from kerasfed.federated import checkpoint as ckpt
from kerasfed.federated.engines.base import NeutralState
from kerasfed.federated.fit import fit_federated

pytestmark = pytest.mark.federated

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "fed_resume.py")
_spec = importlib.util.spec_from_file_location("fed_resume", SCRIPT)
fed_resume = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fed_resume)
ROUNDS = fed_resume.FIT_KWARGS["rounds"]
LINE_TIMEOUT_S = 240.0


def _checkpoint(**overrides) -> ckpt.Checkpoint:
    fields = dict(
        rounds_completed=3,
        seed=11,
        fingerprint={"algorithm": "FedAvg(weighted=True)", "batch_size": "4"},
        round_logs=[{"loss": 1.5, "num_examples": 9}, {"loss": 1.25, "val_loss": float("nan")}],
        state=NeutralState(
            weights=[np.ones((2, 2), np.float32), np.array([1, 2], np.int64)],
            optimizer={"step": [np.array(3, np.int32)],
                       "accumulator": [np.arange(6, dtype=np.float32).reshape(2, 3)]},
            algorithm={"preconditioner": [np.array(0.5, np.float32), np.zeros(2, np.float32)]},
        ),
    )
    fields.update(overrides)
    return ckpt.Checkpoint(**fields)


# -- File format ---------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    saved = _checkpoint()
    ckpt.save_checkpoint(tmp_path / "new", saved)  # creates the directory
    loaded = ckpt.load_checkpoint(tmp_path / "new")
    assert os.listdir(tmp_path / "new") == [ckpt.CHECKPOINT_FILE]  # no temporary file left
    assert (loaded.rounds_completed, loaded.seed, loaded.fingerprint) == (3, 11, saved.fingerprint)
    assert loaded.round_logs[0] == saved.round_logs[0]
    assert np.isnan(loaded.round_logs[1]["val_loss"])
    assert len(loaded.state.weights) == len(saved.state.weights)
    for group in ("optimizer", "algorithm"):
        loaded_slots, saved_slots = getattr(loaded.state, group), getattr(saved.state, group)
        assert {k: len(v) for k, v in loaded_slots.items()} == {k: len(v) for k, v in saved_slots.items()}
    pairs = [*zip(loaded.state.weights, saved.state.weights)]
    for group in ("optimizer", "algorithm"):
        for slot, values in getattr(saved.state, group).items():
            pairs += zip(getattr(loaded.state, group)[slot], values)
    for a, b in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_per_client_records_round_trip(tmp_path):
    # A round's per-client records are nested dicts (NaN included) and lists of ids.
    logs = {"loss": 0.5, "participants": ["a", "b"],
            "client_metrics": {"e1": {"loss": 0.25, "accuracy": float("nan")}},
            "client_train_metrics": {"a": {"loss": 1.0}, "b": {"loss": 2.0}}}
    ckpt.save_checkpoint(tmp_path, _checkpoint(round_logs=[logs, {"client_metrics": {}}]))
    first, second = ckpt.load_checkpoint(tmp_path).round_logs
    assert np.isnan(first["client_metrics"]["e1"].pop("accuracy"))
    assert first == dict(logs, client_metrics={"e1": {"loss": 0.25}})
    assert second == {"client_metrics": {}}


def test_no_checkpoint_yet(tmp_path):
    assert ckpt.load_checkpoint(tmp_path) is None


def test_damaged_checkpoint(tmp_path):
    (tmp_path / ckpt.CHECKPOINT_FILE).write_bytes(b"not a zip file")
    with pytest.raises(ckpt.CheckpointError, match="Cannot read the checkpoint .* delete the file"):
        ckpt.load_checkpoint(tmp_path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, _checkpoint(rounds_completed=1))

    def crash(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, _checkpoint(rounds_completed=2))
    assert os.listdir(tmp_path) == [ckpt.CHECKPOINT_FILE]
    assert ckpt.load_checkpoint(tmp_path).rounds_completed == 1


def test_check_resumable_names_every_difference(tmp_path):
    saved = _checkpoint()
    ckpt.check_resumable(saved, directory=tmp_path, fingerprint=saved.fingerprint, seed=None, rounds=3)
    with pytest.raises(ckpt.CheckpointMismatchError) as info:
        ckpt.check_resumable(
            saved, directory=tmp_path, seed=12, rounds=10,
            fingerprint={"algorithm": "FedProx(mu=0.01, weighted=True)", "batch_size": "4"},
        )
    message = str(info.value)
    assert "algorithm: checkpoint has 'FedAvg(weighted=True)', this call has 'FedProx" in message
    assert "seed: checkpoint has 11, this call has 12" in message
    assert "batch_size" not in message and "new `checkpoint_dir`" in message
    with pytest.raises(ckpt.CheckpointMismatchError, match="already holds 3 completed rounds, more than rounds=2"):
        ckpt.check_resumable(saved, directory=tmp_path, fingerprint=saved.fingerprint, seed=None, rounds=2)


# -- Resuming fit_federated ------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted():
    model, clients = fed_resume.make_problem()
    history = fit_federated(model, clients, **fed_resume.FIT_KWARGS)
    return model.get_weights(), history.history


@pytest.fixture(scope="module")
def resumed_dir(tmp_path_factory):
    """A checkpoint_dir trained for 2 rounds, then resumed to all rounds in this process."""
    directory = tmp_path_factory.mktemp("resumed")
    model, clients = fed_resume.make_problem()
    first = fit_federated(model, clients, checkpoint_dir=directory, **dict(fed_resume.FIT_KWARGS, rounds=2))
    model, clients = fed_resume.make_problem()  # as a restarted program would
    second = fit_federated(model, clients, checkpoint_dir=directory, **fed_resume.FIT_KWARGS)
    return directory, first, second, model


def _assert_weights_equal(actual, expected):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)


def test_resumed_training_equals_uninterrupted(uninterrupted, resumed_dir):
    weights, history = uninterrupted
    directory, first, second, model = resumed_dir
    assert len(first.history["loss"]) == 2
    _assert_weights_equal(model.get_weights(), weights)
    # The restored rounds are in History too, with their original values.
    assert second.epoch == list(range(ROUNDS))
    assert set(second.history) == set(history)
    np.testing.assert_allclose(second.history["loss"], history["loss"], rtol=1e-6)
    saved = ckpt.load_checkpoint(directory)
    assert saved.rounds_completed == ROUNDS and saved.seed == fed_resume.FIT_KWARGS["seed"]
    _assert_weights_equal(saved.state.weights, weights)


def test_finished_checkpoint_returns_its_result_without_training(resumed_dir, monkeypatch):
    import kerasfed.federated.engines.tff.engine as tff_engine  # noqa: PLC0415

    monkeypatch.setattr(tff_engine, "federated_runtime", lambda **kw: pytest.fail("TFF started"))
    directory, _, second, trained = resumed_dir
    model, clients = fed_resume.make_problem()
    again = fit_federated(model, clients, checkpoint_dir=directory, **fed_resume.FIT_KWARGS)
    assert again.history == second.history
    _assert_weights_equal(model.get_weights(), trained.get_weights())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"algorithm": "fedprox"}, "algorithm: checkpoint has 'FedAvg"),
        ({"batch_size": 5}, "batch_size: checkpoint has '4', this call has '5'"),
        ({"seed": 8}, "seed: checkpoint has 7, this call has 8"),
        ({"shuffle": False}, "shuffle: checkpoint has 'True', this call has 'False'"),
        ({"rounds": 3}, "already holds 5 completed rounds, more than rounds=3"),
    ],
)
def test_checkpoint_of_another_training_is_refused(resumed_dir, change, message):
    directory = resumed_dir[0]
    model, clients = fed_resume.make_problem()
    with pytest.raises(ckpt.CheckpointMismatchError, match=message):
        fit_federated(model, clients, checkpoint_dir=directory, **dict(fed_resume.FIT_KWARGS, **change))


def test_other_clients_are_refused(resumed_dir):
    model, clients = fed_resume.make_problem()
    clients.pop("client_5")
    with pytest.raises(ckpt.CheckpointMismatchError, match="clients: checkpoint has '6 clients"):
        fit_federated(model, clients, checkpoint_dir=resumed_dir[0], **fed_resume.FIT_KWARGS)


def test_mime_lite_resume_keeps_the_global_client_optimizer_state(tmp_path):
    # Mime-lite's server keeps a global state of the client optimizer; RMSprop's
    # slots (kerasfed's own TFF rule) have other names than Adam's or SGD's.
    from kerasfed._compat import keras  # noqa: PLC0415

    def problem():
        model, clients = fed_resume.make_problem()
        model.compile(
            optimizer=keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model, clients

    kwargs = dict(fed_resume.FIT_KWARGS, rounds=3, algorithm="mime")
    model, clients = problem()
    fit_federated(model, clients, **kwargs)
    uninterrupted = model.get_weights()
    model, clients = problem()
    fit_federated(model, clients, checkpoint_dir=tmp_path, **dict(kwargs, rounds=1))
    saved = ckpt.load_checkpoint(tmp_path).state.algorithm
    assert set(saved) == {"velocity", "momentum_accumulator", "average_gradient"}
    assert all(len(v) == len(uninterrupted) for v in saved.values())
    model, clients = problem()
    fit_federated(model, clients, checkpoint_dir=tmp_path, **kwargs)
    _assert_weights_equal(model.get_weights(), uninterrupted)


def _lines(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue, wanted: str, log_path) -> None:
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line == wanted:
            return
        if line is None:
            with open(log_path) as f:
                log = f.read()[-3000:]
            pytest.fail(f"the child ended or stalled before printing {wanted!r}; its stderr:\n{log}")


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, uninterrupted, no_process_left_behind):
    directory, out = tmp_path / "checkpoints", tmp_path / "weights.npz"
    command = [sys.executable, SCRIPT, str(directory), str(out)]
    with open(tmp_path / "stderr1.txt", "w") as log:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        _wait_for(_lines(child.stdout), "ROUND 2", tmp_path / "stderr1.txt")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    # The child's TFF worker dies with it (no process of this test is left).
    assert wait_for_no_processes(no_process_left_behind) == []
    assert 2 <= ckpt.load_checkpoint(directory).rounds_completed < ROUNDS

    with open(tmp_path / "stderr2.txt", "w") as log:
        rerun = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, timeout=LINE_TIMEOUT_S)
    assert rerun.returncode == 0, open(tmp_path / "stderr2.txt").read()[-3000:]
    assert rerun.stdout.strip().splitlines()[-1] == f"DONE {ROUNDS}"
    with np.load(out) as data:
        final = [data[f"arr_{i}"] for i in range(len(data.files))]
    _assert_weights_equal(final, uninterrupted[0])
