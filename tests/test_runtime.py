"""The TFF runtime kerasfed owns: FedAvg runs in it, and its worker process never
outlives the block, writes to the caller's stdout, or survives a killed parent.

Process checks read ``/proc`` and poll with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

pytestmark = pytest.mark.federated
tff = pytest.importorskip("tensorflow_federated")

import tensorflow as tf  # noqa: E402

from kerasfed.federated.engines.tff import runtime  # noqa: E402
from kerasfed.federated.engines.tff.runtime import (  # noqa: E402
    RuntimeInfo,
    WorkerDiedError,
    WorkerStartError,
    federated_runtime,
    listening_sockets,
)

_CHILD = os.path.join(os.path.dirname(__file__), "scripts", "runtime_child.py")
_DEADLINE_S = 20.0
_LR = 0.1
_RNG = np.random.default_rng(0)
# Two clients of different sizes, one batch each: one local SGD step per client, and
# the example-weighted mean differs from the plain one.
_CLIENTS = [
    (_RNG.normal(size=(n, 3)).astype(np.float32), _RNG.normal(size=(n, 1)).astype(np.float32))
    for n in (6, 10)
]


def _datasets() -> list:
    return [tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)) for x, y in _CLIENTS]


def _model_fn():
    keras_model = tf.keras.Sequential([tf.keras.layers.InputLayer((3,)), tf.keras.layers.Dense(1)])
    return tff.learning.models.from_keras_model(
        keras_model, input_spec=_datasets()[0].element_spec, loss=tf.keras.losses.MeanSquaredError()
    )


@pytest.fixture(scope="module")
def fedavg():
    # Building traces in a graph and starts no process; every call runs in a block.
    return tff.learning.algorithms.build_weighted_fed_avg(
        _model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(_LR)
    )


def _fedavg_round_numpy(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One FedAvg round: a full-batch SGD step on MSE per client, example-weighted mean."""
    kernels, biases, sizes = [], [], []
    for x, y in _CLIENTS:
        x, y = x.astype(np.float64), y.astype(np.float64)
        residual = x @ kernel + bias - y
        kernels.append(kernel - _LR * 2 * x.T @ residual / len(x))
        biases.append(bias - _LR * 2 * residual.mean(axis=0))
        sizes.append(len(x))
    weights = np.array(sizes, np.float64) / sum(sizes)
    return np.tensordot(weights, kernels, axes=1), np.tensordot(weights, biases, axes=1)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in (b"Z", b"X")


def _wait_until_gone(pid: int) -> bool:
    deadline = time.monotonic() + _DEADLINE_S
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _proc_text(pid: int, name: str) -> list[str]:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read().decode(errors="replace").split("\0")


def _child(mode: str, quiet: bool, stderr=subprocess.PIPE) -> subprocess.Popen:
    # TF's full log level, so that the worker's own INFO lines show whenever they are
    # not silenced by ``quiet``.
    return subprocess.Popen(
        [sys.executable, _CHILD, mode, "1" if quiet else "0"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def test_fedavg_matches_numpy_and_the_worker_ends_with_the_block(fedavg, no_process_left_behind):
    with federated_runtime(max_concurrent_clients=2) as info:
        assert re.fullmatch(r"127\.0\.0\.1:\d+", info.address)
        cmdline = _proc_text(info.pid, "cmdline")
        assert cmdline[0].endswith("tensorflow_federated/data/worker_binary")
        assert "--max_concurrent_computation_calls=2" in cmdline
        environ = _proc_text(info.pid, "environ")
        assert f"KERASFED_TEST_TOKEN={no_process_left_behind}" in environ
        assert "TF_CPP_MIN_LOG_LEVEL=2" in environ or "TF_CPP_MIN_LOG_LEVEL=3" in environ

        state = fedavg.initialize()
        weights = fedavg.get_model_weights(state).trainable
        kernel, bias = (np.asarray(w, np.float64) for w in weights)
        for _ in range(2):
            state = fedavg.next(state, _datasets()).state
            kernel, bias = _fedavg_round_numpy(kernel, bias)
        got_kernel, got_bias = fedavg.get_model_weights(state).trainable
    np.testing.assert_allclose(got_kernel, kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_bias, bias, rtol=1e-5, atol=1e-6)
    assert not _running(info.pid)  # stopped and reaped before the block returned


def test_the_worker_listens_on_one_wildcard_port_which_closes_with_the_block():
    # TFF's worker binary has no flag for the listen address: it always binds [::]:PORT
    # (dual-stack, every interface). This pins that documented exposure, so a TFF that
    # can bind loopback only shows up here.
    with federated_runtime() as info:
        port = int(info.address.rsplit(":", 1)[1])
        assert listening_sockets(info.pid) == [("::", port)]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    assert not _running(info.pid)


def test_an_exception_in_the_block_ends_the_worker_and_propagates(fedavg):
    with pytest.raises(KeyError, match="raised inside the block"):
        with federated_runtime() as info:
            fedavg.initialize()
            raise KeyError("raised inside the block")
    assert not _running(info.pid)


def test_the_previous_context_is_restored_and_two_blocks_run_in_turn():
    stack = tff.framework.get_context_stack()
    before = stack.current

    @tff.tensorflow.computation(tf.int32)
    def add_one(x):
        return x + 1

    pids = []
    for value in (1, 2):
        with federated_runtime() as info:
            assert stack.current is not before
            assert add_one(value) == value + 1
            pids.append(info.pid)
        assert stack.current is before
        assert not _running(info.pid)
    assert pids[0] != pids[1]


def test_a_worker_killed_during_training_raises_instead_of_retrying_forever(fedavg):
    with pytest.raises(WorkerDiedError, match=r"ended with code -9 during training"):
        with federated_runtime() as info:
            state = fedavg.initialize()
            os.kill(info.pid, signal.SIGKILL)
            fedavg.next(state, _datasets())


class _Interrupt(Exception):
    pass


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_block_interrupted_mid_round_ends_at_once(fedavg):
    # A round that would take many minutes; the interrupt (a signal, like Ctrl-C) comes
    # once the worker is busy with it. Leaving the block must not wait for the round.
    endless = [
        tf.data.Dataset.from_tensor_slices(_CLIENTS[0]).repeat().take(10**7).batch(1)
    ] * 2
    main_thread = threading.main_thread().ident
    interrupted_at: list[float] = []

    def interrupt_when_busy(pid: int) -> None:
        deadline = time.monotonic() + _DEADLINE_S
        start = _cpu_seconds(pid)
        while _cpu_seconds(pid) - start < 0.5 and time.monotonic() < deadline:
            time.sleep(0.02)
        interrupted_at.append(time.monotonic())
        signal.pthread_kill(main_thread, signal.SIGUSR1)

    def raise_interrupt(signum, frame):
        raise _Interrupt

    previous = signal.signal(signal.SIGUSR1, raise_interrupt)
    try:
        with pytest.raises(_Interrupt):
            with federated_runtime() as info:
                state = fedavg.initialize()
                watcher = threading.Thread(target=interrupt_when_busy, args=(info.pid,))
                watcher.start()
                fedavg.next(state, endless)
        left_at = time.monotonic()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    watcher.join()
    assert left_at - interrupted_at[0] < 10
    assert not _running(info.pid)


def test_quiet_limits_absl_logging_during_the_block_only():
    from absl import logging as absl_logging

    before = absl_logging.get_verbosity()
    with federated_runtime():
        assert absl_logging.get_verbosity() == absl_logging.ERROR
    assert absl_logging.get_verbosity() == before


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "4"])
def test_bad_max_concurrent_clients_is_rejected_before_any_process_starts(value):
    with pytest.raises(ValueError, match=r"Expected `max_concurrent_clients` to be None.*Received"):
        with federated_runtime(max_concurrent_clients=value):
            pytest.fail("the block must not run")


def _package_with_worker(tmp_path, script: str | None) -> types.SimpleNamespace:
    """A stand-in for the tff module whose ``data/worker_binary`` is ``script``."""
    (tmp_path / "data").mkdir()
    if script is not None:
        binary = tmp_path / "data" / "worker_binary"
        binary.write_text(script)
        binary.chmod(0o755)
    return types.SimpleNamespace(__file__=str(tmp_path / "__init__.py"))


def test_a_worker_that_exits_before_listening_is_reported_with_its_log(tmp_path):
    package = _package_with_worker(tmp_path, "#!/bin/sh\necho 'cannot bind' >&2\nexit 3\n")
    expected = r"exited with code 3 before it listened(.|\n)*cannot bind"
    with pytest.raises(WorkerStartError, match=expected):
        runtime._start_worker(package, max_concurrent_clients=None, quiet=True)


def test_a_missing_worker_binary_is_reported(tmp_path):
    package = _package_with_worker(tmp_path, None)
    with pytest.raises(WorkerStartError, match=r"worker binary is missing .* Reinstall"):
        runtime._start_worker(package, max_concurrent_clients=None, quiet=True)


def test_a_sigkilled_parent_takes_its_worker_with_it_and_releases_its_stdout(tmp_path):
    # stderr goes to a file: a pipe nobody reads while we wait for "ready" could fill up.
    with open(tmp_path / "stderr", "w+") as stderr:
        child = _child("wait", quiet=True, stderr=stderr)
        try:
            line = child.stdout.readline()  # returns once the child has trained a round
            if not line.startswith("ready "):
                child.kill()
                child.wait()
                stderr.seek(0)
                pytest.fail(f"the child did not get ready: {line!r}\n{stderr.read()[-3000:]}")
            worker = int(line.split()[1])
            assert _running(worker)
            child.kill()
            # communicate() returns only once every holder of the pipe has closed it:
            # TFF's own context leaves its worker holding the caller's stdout forever.
            out, _ = child.communicate(timeout=_DEADLINE_S)
            assert out == ""  # nothing after "ready": the worker wrote nothing
            assert _wait_until_gone(worker), "the worker outlived its SIGKILLed parent"
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()


def test_a_verbose_worker_logs_to_stderr_and_nothing_outlives_a_normal_exit():
    # After its block the child also runs TFF code in TFF's own default context, whose
    # worker (started by TFF, holding the child's stdout) kerasfed releases at exit.
    child = _child("exit", quiet=False)
    try:
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ready "), out
    assert not _running(int(lines[0].split()[1]))
    assert "TFF ExecutorService started, listening on" in err  # the worker's own log line
    assert "Exception ignored" not in err


def test_runtime_info_is_a_frozen_record():
    info = RuntimeInfo(address="127.0.0.1:1", pid=1)
    with pytest.raises(AttributeError):
        info.pid = 2  # type: ignore[misc]
