"""The TFF execution runtime kerasfed owns for the length of one training call.

TFF 0.87 has no in-process executor: its wheel ships no C++ bindings, and every
execution context it offers (``tff.backends.native`` and ``tff.backends.test``)
talks over gRPC to a separate C++ process, ``tensorflow_federated/data/worker_binary``.
The context TFF installs at import starts that process lazily and never stops it
reliably (the cleanup is a ``__del__``), lets it write into the caller's stdout,
and leaves it running when the parent is killed.

``federated_runtime`` runs the same binary but owns it: started eagerly in its
own process group, its output in an anonymous temporary file, ``PR_SET_PDEATHSIG``
so that the kernel kills it when the parent dies (also by SIGKILL), stopped and
reaped when the block ends (also on exception), and an ``atexit`` hook as a
second line of defence.

What it exposes on the network: the binary has no flag for the listen address
(only ``--port``) and always binds the IPv6 wildcard ``[::]:PORT`` in dual-stack
mode, i.e. one TCP port on every IPv4 and IPv6 interface, without authentication,
that executes any TensorFlow computation it is sent. kerasfed lets the kernel
choose a free ephemeral port, connects over 127.0.0.1, and keeps the port open
only while the block runs. On a machine reachable from untrusted networks, train
behind a firewall that blocks inbound connections (or in a container without
published ports).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from kerasfed._compat import require_tff
from kerasfed.errors import (  # noqa: F401  (WorkerDiedError, WorkerStartError: defined with the family)
    ArgumentError,
    WorkerDiedError,
    WorkerStartError,
)

_READY_TIMEOUT_S = 120.0  # the 300 MB binary can be slow to load from a cold disk
_STOP_TIMEOUT_S = 5.0
_POLL_S = 0.02
_LOG_TAIL_BYTES = 4000
# TFF's own channel options: the default 4 MB gRPC limit is far below one round's data.
_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
_GRPC_OPTIONS = [
    ("grpc.max_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
]
# Runs between fork and exec of the worker, in a bare interpreter (-I -S: no site
# packages, ~20 ms). It asks the kernel to SIGKILL the worker when its parent dies
# (PR_SET_PDEATHSIG = 1, kept across exec; strictly it fires when the *thread* that
# spawned the worker ends, which is the thread running the block), gives it its own
# process group (a terminal's Ctrl-C then reaches only Python, which stops the worker
# cleanly), and execs the worker.
# Doing this in a shim rather than a ``preexec_fn`` lets CPython spawn with vfork:
# no Python code runs in a forked copy of a multi-threaded TensorFlow process, and
# gRPC's fork handlers (which print warnings) are not triggered.
_SHIM = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
os.setpgid(0, 0)
os.execv(sys.argv[2], sys.argv[2:])
"""
_TCP_LISTEN = "0A"


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """What ``federated_runtime`` runs.

    Attributes:
        address: ``"127.0.0.1:PORT"``, where kerasfed reaches the worker. The worker
            listens on PORT on all interfaces (see the module docstring).
        pid: The worker's process id.
    """

    address: str | None
    pid: int | None


# Workers not yet stopped, with the pid of the process that started them; the atexit
# hook ends them. (A child made by os.fork inherits this table; it must not act on it.)
_LIVE_WORKERS: dict[subprocess.Popen, int] = {}
_LIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def federated_runtime(
    *, max_concurrent_clients: int | None = None, quiet: bool = True
) -> Iterator[RuntimeInfo]:
    """Installs a TFF execution context owned by kerasfed for the duration of the block.

    The previous context is restored afterwards, and the worker process is ended and
    reaped, also when the block raises. TFF computations must be invoked from the
    thread that entered the block (TFF's context stack is thread-local).

    Args:
        max_concurrent_clients: Most client computations the worker runs at once.
            ``None`` (default) means no limit: all clients of a round train
            concurrently. Lower it to bound memory.
        quiet: If ``True`` (default), the worker runs with ``TF_CPP_MIN_LOG_LEVEL``
            of at least 2, its output goes to a private temporary file (its tail is
            quoted in errors), and absl logging in this process is limited to
            errors during the block. If ``False``, the worker's log goes to this
            process's stderr. The worker never writes to this process's stdout.

    Yields:
        A ``RuntimeInfo`` describing the worker.

    Raises:
        ValueError: If ``max_concurrent_clients`` is not ``None`` or a positive int.
        WorkerStartError: If the worker process cannot be started.

    Example:
        >>> with federated_runtime() as info:  # doctest: +SKIP
        ...     state = process.initialize()
        ...     state = process.next(state, client_data).state
    """
    _check_max_concurrent_clients(max_concurrent_clients)
    tff = require_tff()
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(_absl_errors_only())
        worker = _start_worker(tff, max_concurrent_clients, quiet)
        stack.callback(_stop_worker, worker)
        channel = _connect(worker)
        executors: list[Any] = []
        context = _make_context(tff, worker, channel, executors)
        stack.callback(_shut_down, worker, channel, executors, context)
        stack.enter_context(tff.framework.get_context_stack().install(context))
        yield RuntimeInfo(address=worker.address, pid=worker.process.pid)


def _shut_down(worker: _Worker, channel: Any, executors: list[Any], context: Any) -> None:
    """Ends the worker first: a call still in flight (the block was interrupted) then
    fails at once instead of running to completion, and what follows cannot block."""
    _stop_worker(worker)
    # Marks every remote value as orphaned, so that values garbage-collected later do
    # not send RPCs to a closed channel. Its RPC to the stopped worker fails at once;
    # nothing that fails here can matter to the caller any more.
    for executor in executors:
        with contextlib.suppress(Exception):
            executor.close()
    channel.close()
    _stop_event_loop_thread(context)


def _check_max_concurrent_clients(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(
            "Expected `max_concurrent_clients` to be None (no limit) or a positive int. "
            f"Received: max_concurrent_clients={value!r} of type {type(value).__name__}. "
            "Pass e.g. max_concurrent_clients=4, or None to train all clients at once."
        )


@dataclasses.dataclass
class _Worker:
    process: subprocess.Popen
    log: IO[bytes] | None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        if self.log is None:
            return "(the worker's log went to stderr)"
        self.log.flush()
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - _LOG_TAIL_BYTES))
        return self.log.read().decode(errors="replace").strip() or "(empty)"


def _start_worker(tff: Any, max_concurrent_clients: int | None, quiet: bool) -> _Worker:
    binary = os.path.join(os.path.dirname(tff.__file__), "data", "worker_binary")
    if not os.access(binary, os.X_OK):
        raise WorkerStartError(
            f"TFF's worker binary is missing or not executable: {binary}. "
            "Reinstall tensorflow-federated==0.87.0."
        )
    # The whole environment is inherited on purpose (paths, thread settings, and the
    # test suite's leak-detection token); only the log level is raised when quiet.
    env = dict(os.environ)
    if quiet:
        env["TF_CPP_MIN_LOG_LEVEL"] = str(max(2, _int_or(env.get("TF_CPP_MIN_LOG_LEVEL"), 0)))
    log = tempfile.TemporaryFile(prefix="kerasfed-tff-worker-") if quiet else None
    args = [
        sys.executable, "-I", "-S", "-c", _SHIM, str(os.getpid()),
        binary,
        "--port=0",  # the kernel picks a free port: no race with other programs
        f"--max_concurrent_computation_calls={max_concurrent_clients or -1}",
    ]
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log if quiet else None,
            env=env,
            close_fds=True,
        )
    except OSError as e:
        if log is not None:
            log.close()
        raise WorkerStartError(f"Could not start TFF's worker binary {binary}: {e}") from e
    worker = _Worker(process=process, log=log)
    with _LIVE_LOCK:
        _LIVE_WORKERS[process] = os.getpid()
    try:
        worker.port = _wait_for_listening_port(worker)
    except BaseException:
        _stop_worker(worker)
        raise
    return worker


def _int_or(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _wait_for_listening_port(worker: _Worker) -> int:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        sockets = listening_sockets(worker.process.pid)
        if sockets:
            return sockets[0][1]
        if worker.process.poll() is not None:
            raise WorkerStartError(
                f"TFF's worker process exited with code {worker.process.returncode} "
                f"before it listened. Its log:\n{worker.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise WorkerStartError(
                f"TFF's worker process did not listen within {_READY_TIMEOUT_S:.0f} s. "
                f"Its log:\n{worker.log_tail()}"
            )
        time.sleep(_POLL_S)


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """The TCP sockets process ``pid`` listens on, as ``(address, port)`` pairs.

    Read from ``/proc`` (the worker binary only exists for Linux): the socket inodes
    the process holds, matched against the LISTEN entries of its network namespace.
    A dual-stack IPv6 wildcard socket shows as ``("::", port)``.
    """
    inodes = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != _TCP_LISTEN or fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            found.append((_decode_proc_address(address, family), int(port, 16)))
    return found


def _decode_proc_address(hex_address: str, family: int) -> str:
    # /proc/net/tcp* prints the address as 32-bit words in host (little-endian) order.
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words)


def _connect(worker: _Worker) -> Any:
    import grpc  # noqa: PLC0415  (a TFF dependency; only present beside TFF)

    # No readiness wait on the channel: the worker already listens, so the first RPC
    # connects at once.
    return grpc.insecure_channel(worker.address, _GRPC_OPTIONS)


class _ChannelWithoutWatch:
    """A gRPC channel whose connectivity cannot be subscribed to.

    ``RemoteExecutorGrpcStub`` subscribes to the channel's connectivity only for
    ``is_ready``, which kerasfed does not use. That subscription runs a polling thread
    which raises "Channel closed!" into stderr when the channel is closed under it.
    """

    def __init__(self, channel: Any):
        self._channel = channel

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        del callback, try_to_connect

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def _make_context(tff: Any, worker: _Worker, channel: Any, executors: list[Any]) -> Any:
    stub = tff.framework.RemoteExecutorGrpcStub(_ChannelWithoutWatch(channel))

    def executor_stack(cardinalities: dict) -> Any:
        # TFF retries calls that fail with UNAVAILABLE forever; refusing to build a new
        # executor turns a dead worker into an error instead of an endless retry loop.
        if worker.process.poll() is not None:
            raise WorkerDiedError(
                f"TFF's worker process (pid {worker.process.pid}) ended with code "
                f"{worker.process.returncode} during training; it may have run out of "
                "memory (try a smaller max_parallel_clients). Its log:\n"
                f"{worker.log_tail()}"
            )
        cardinalities.setdefault(tff.CLIENTS, 0)
        executor = tff.framework.RemoteExecutor(stub)
        executor.set_cardinalities(cardinalities)
        executors.append(executor)
        return executor

    return tff.framework.SyncExecutionContext(
        executor_fn=tff.framework.ResourceManagingExecutorFactory(executor_stack),
        compiler_fn=tff.backends.native.desugar_and_transform_to_native,
        transform_args=tff.tensorflow.transform_args,
        transform_result=tff.tensorflow.transform_result,
    )


def _stop_event_loop_thread(context: Any) -> None:
    # SyncExecutionContext runs its asyncio loop on a thread whose target refers back
    # to its runner, so the runner's ``__del__`` (which would stop it) never runs and
    # one thread leaks per block. Stop it as that ``__del__`` would, close the loop,
    # and disarm the ``__del__``. TFF is pinned to 0.87; should these private names
    # change, the only consequence is the leaked thread.
    runner = getattr(context, "_async_runner", None)
    loop = getattr(runner, "_event_loop", None)
    thread = getattr(runner, "_thread", None)
    if loop is None or thread is None or not hasattr(runner, "_finalizer"):
        return
    if thread.is_alive():
        # Calls abandoned by an interrupted block would otherwise be destroyed pending.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(_STOP_TIMEOUT_S)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=_STOP_TIMEOUT_S)
    if not thread.is_alive():
        loop.close()
        runner._finalizer = lambda loop, thread: None


async def _cancel_other_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _stop_worker(worker: _Worker) -> None:
    process = worker.process
    try:
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
    finally:
        with _LIVE_LOCK:
            _LIVE_WORKERS.pop(process, None)
        if worker.log is not None:
            worker.log.close()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    # The worker leads its own process group, so signalling the group also ends
    # anything it may have started. Until ``wait`` reaps the leader its pid (and so the
    # group id) cannot be reused. If the shim has not yet called setpgid there is no
    # such group, and only the process itself is signalled.
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


@atexit.register
def _stop_all_workers() -> None:
    """Second line of defence: ends workers whose block never finished (e.g. a thread
    still inside ``federated_runtime`` when the interpreter exits)."""
    with _LIVE_LOCK:
        processes = [p for p, owner in _LIVE_WORKERS.items() if owner == os.getpid()]
    for process in processes:
        if process.poll() is None:
            _signal_group(process, signal.SIGKILL)
        with contextlib.suppress(Exception):
            process.wait(timeout=_STOP_TIMEOUT_S)


@atexit.register
def _release_tff_default_context() -> None:
    """Lets TFF's own default context clean up while the interpreter is still whole.

    That context (installed when TFF is imported; used by TFF code run outside
    ``federated_runtime``) stops its worker in a ``__del__`` that otherwise runs during
    interpreter teardown, after the module globals it needs are gone: it then prints a
    traceback into stderr and leaves its worker running. Replacing the default context
    at exit releases it, and so runs that ``__del__``, before teardown.
    """
    tff = sys.modules.get("tensorflow_federated")
    if tff is None:
        return

    class _Exited(tff.framework.SyncContext):
        def invoke(self, comp: Any, arg: Any) -> Any:
            raise RuntimeError("TFF computations cannot run while the interpreter exits.")

    with contextlib.suppress(Exception):
        tff.framework.set_default_context(_Exited())


@contextlib.contextmanager
def _absl_errors_only() -> Iterator[None]:
    from absl import logging as absl_logging  # noqa: PLC0415  (a TF dependency)

    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)
