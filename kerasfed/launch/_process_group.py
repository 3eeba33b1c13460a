"""A group of worker processes that start, fail and stop together.

Every wait is a blocking ``get`` on one event queue: a thread per worker puts
the worker's exit status there, and the launcher's signal handlers put the
signals they receive (``queue.SimpleQueue.put`` is reentrant, so it is safe in
a signal handler, and a blocked ``get`` wakes up for it).

How no process is left behind:

* Each worker starts in its own session, so it and every process it forks form
  a process group that ``os.killpg`` reaches as a whole; a Ctrl-C in the
  terminal reaches only the launcher, which forwards it.
* On Linux each worker starts through a tiny bootstrap that sets
  ``PR_SET_PDEATHSIG=SIGKILL`` and then ``exec``s the real command, so workers
  die with the launcher even when it is killed with SIGKILL (the bootstrap,
  unlike ``preexec_fn``, is safe while the launcher's threads run). The
  grandchildren of a SIGKILLed launcher are not covered: the death signal is
  not inherited across ``fork``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Mapping, Sequence, Union

from kerasfed.launch._output import PrefixedOutput, block_launcher_signals

# Runs in the worker's process before its real command: PR_SET_PDEATHSIG (1)
# with SIGKILL (9), then a check that the launcher did not die before that call.
_PDEATHSIG_BOOTSTRAP = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(137)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

# After SIGKILL a process normally vanishes within milliseconds; this bound only
# keeps the launcher from hanging on one stuck in uninterruptible sleep.
_KILL_WAIT_S = 10.0
# How long to wait for a worker's output after the whole group is gone; a
# process that escaped the group (its own setsid) may hold the pipe open.
_PUMP_JOIN_S = 2.0


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """One worker process to start.

    Attributes:
        label: The worker's name in output prefixes and messages, e.g. ``"0"``.
        argv: The command, e.g. ``(sys.executable, "train.py", "--epochs", "3")``.
        env: The complete environment of the process.
    """

    label: str
    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Exited:
    """Event: a worker process ended with ``returncode`` (negative: killed by a signal)."""

    group: int
    index: int
    returncode: int


@dataclasses.dataclass(frozen=True)
class Signalled:
    """Event: the launcher received signal ``signum``."""

    signum: int


Event = Union[Exited, Signalled]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a group's run ended.

    Attributes:
        exit_code: 0 when every worker succeeded; else the failing worker's code in
            shell convention (128 + signal for a signal death), or 128 + the signal
            the launcher received.
        failed: Label of the first worker that failed, else ``None``.
        returncode: That worker's raw ``Popen.returncode``, else ``None``.
        signum: The signal the launcher received, else ``None``.
    """

    exit_code: int
    failed: str | None = None
    returncode: int | None = None
    signum: int | None = None


def shell_exit_code(returncode: int) -> int:
    """``Popen.returncode`` in shell convention: ``-N`` (killed by signal N) is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """Says how a process ended, e.g. ``"exited with code 3"``."""
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name} (exit code {128 - returncode})"
    return f"exited with code {returncode}"


class ProcessGroup:
    """Worker processes that are started, watched and stopped as one.

    Args:
        specs: The workers to start.
        output: Where the workers' output lines go, prefixed with their labels.
        events: The launcher's event queue; signal handlers put ``Signalled`` here.
        grace_period: Seconds between SIGTERM (or the forwarded signal) and SIGKILL.

    Use from the main thread only: ``PR_SET_PDEATHSIG`` fires when the *thread*
    that started a worker ends.
    """

    _ids = itertools.count()

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        *,
        output: PrefixedOutput,
        events: "queue.SimpleQueue[Event]",
        grace_period: float,
    ) -> None:
        self._specs = list(specs)
        self._output = output
        self._events = events
        self._grace_period = grace_period
        self._id = next(self._ids)
        self._procs: list[subprocess.Popen] = []
        self._returncodes: dict[int, int] = {}
        self._threads: list[threading.Thread] = []

    @property
    def pids(self) -> list[int]:
        """Process ids of the started workers (each is also its process group id)."""
        return [p.pid for p in self._procs]

    def start(self) -> None:
        """Starts every worker, its output pumps and its exit watcher.

        Raises:
            OSError: If a worker cannot be started; those already started are stopped.
        """
        for index, spec in enumerate(self._specs):
            try:
                proc = subprocess.Popen(
                    _with_death_signal(spec.argv),
                    env={**spec.env, **self._output.worker_env(spec.label)},
                    # N processes cannot share one terminal's input sensibly.
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError:
                self.stop()
                raise
            self._procs.append(proc)
            self._threads += [
                self._output.pump(proc.stdout, "stdout", spec.label),
                self._output.pump(proc.stderr, "stderr", spec.label),
            ]
            threading.Thread(
                target=self._watch, args=(index, proc), name=f"wait-{spec.label}", daemon=True
            ).start()

    def wait(self) -> Outcome:
        """Blocks until all workers succeed, one fails, or the launcher gets a signal."""
        while True:
            event = self._events.get()
            if isinstance(event, Signalled):
                return Outcome(exit_code=128 + event.signum, signum=event.signum)
            if event.group != self._id:
                continue
            self._returncodes[event.index] = event.returncode
            if event.returncode != 0:
                return Outcome(
                    exit_code=shell_exit_code(event.returncode),
                    failed=self._specs[event.index].label,
                    returncode=event.returncode,
                )
            if len(self._returncodes) == len(self._procs):
                return Outcome(exit_code=0)

    def stop(self, signum: int = signal.SIGTERM) -> int | None:
        """Stops every worker that still runs, and everything they started.

        Sends ``signum`` to each worker's process group, waits up to the grace
        period, then sends SIGKILL. A launcher signal arriving meanwhile cuts the
        grace period short. Finally kills what is left in the groups (processes
        the workers started) and collects the remaining output.

        Args:
            signum: The first signal to send. Defaults to SIGTERM.

        Returns:
            The signal the launcher received while stopping, else ``None``.
        """
        received = None
        running = self._running()
        self._signal_groups(running, signum)
        deadline = time.monotonic() + self._grace_period
        killed = False
        while running:
            timeout = deadline - time.monotonic()
            if timeout <= 0 or (received is not None and not killed):
                if killed:
                    self._output.message(
                        f"workers {', '.join(self._specs[i].label for i in running)} did not end "
                        f"{_KILL_WAIT_S:g}s after SIGKILL; giving up on them"
                    )
                    break
                self._signal_groups(running, signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + _KILL_WAIT_S
                continue
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                continue
            if isinstance(event, Signalled):
                received = received or event.signum
                self._output.message(
                    f"received {signal.Signals(event.signum).name} while stopping; killing workers"
                )
            elif event.group == self._id:
                self._returncodes[event.index] = event.returncode
                running = self._running()
        # Processes the workers started may still run in their groups. Worker pids stay
        # reserved while their group has members, so killpg cannot hit a stranger here.
        self._signal_groups(range(len(self._procs)), signal.SIGKILL)
        deadline = time.monotonic() + _PUMP_JOIN_S
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return received

    def _running(self) -> list[int]:
        return [i for i in range(len(self._procs)) if i not in self._returncodes]

    def _signal_groups(self, indices, signum: int) -> None:
        for i in indices:
            try:
                os.killpg(self._procs[i].pid, signum)
            except (ProcessLookupError, PermissionError):
                pass  # the group is already gone

    def _watch(self, index: int, proc: subprocess.Popen) -> None:
        block_launcher_signals()
        self._events.put(Exited(self._id, index, proc.wait()))


def _with_death_signal(argv: Sequence[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_BOOTSTRAP, str(os.getpid()), *argv]
