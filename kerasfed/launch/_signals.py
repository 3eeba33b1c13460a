"""Turns the launcher's signals into ``Signalled`` events on its event queue.

Why not put the event from a Python signal handler: CPython runs Python handlers
in the main thread, between bytecodes. A signal that arrives after the main
thread's last check but before it blocks in ``queue.get(timeout=...)`` is only
handled when that wait ends on its own -- up to the whole grace period later (a
CI run lost a second Ctrl-C this way). The C-level handler, by contrast, writes
the signal number to the wakeup fd the moment the signal arrives, whatever the
main thread is doing; a helper thread blocked on that pipe puts the event into
the queue, and the put wakes any waiting ``get`` at once. This is the self-pipe
trick, with CPython's ``signal.set_wakeup_fd`` doing the writing.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
from collections.abc import Iterator, Sequence

from kerasfed.launch._output import LAUNCHER_SIGNALS, block_launcher_signals
from kerasfed.launch._process_group import Signalled


@contextlib.contextmanager
def signals_as_events(
    events: queue.SimpleQueue, signals: Sequence[signal.Signals] = LAUNCHER_SIGNALS
) -> Iterator[None]:
    """While active, each of ``signals`` puts ``Signalled(signum)`` into ``events``.

    Must be entered in the main thread (``signal.signal`` requires it). A signal
    ignored on entry stays ignored (``nohup kerasfed launch ...`` must survive
    SIGHUP). On exit the previous handlers and wakeup fd are restored.

    Args:
        events: The queue the launcher waits on.
        signals: The signals to catch. Defaults to SIGINT, SIGTERM and SIGHUP.
    """
    caught = {int(s) for s in signals if signal.getsignal(s) is not signal.SIG_IGN}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it; a full pipe drops bytes
    try:
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        os.close(read_fd)
        os.close(write_fd)
        raise
    reader = threading.Thread(
        target=_forward, args=(read_fd, events, caught), name="launcher-signals", daemon=True
    )
    reader.start()
    previous = {}
    try:
        # The Python-level handler has nothing left to do, but one must be installed:
        # the C handler (which writes the wakeup byte) only runs for handled signals.
        for s in caught:
            previous[s] = signal.signal(s, _handled_by_the_reader)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the reader sees end of file and ends
        reader.join()
        os.close(read_fd)


def _handled_by_the_reader(signum, frame) -> None:
    del signum, frame


def _forward(read_fd: int, events: queue.SimpleQueue, caught: set[int]) -> None:
    block_launcher_signals()
    while chunk := os.read(read_fd, 512):
        for signum in chunk:  # one byte per signal: its number
            if signum in caught:  # other Python-handled signals also write here
                events.put(Signalled(signum))
