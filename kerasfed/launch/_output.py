"""Copies the workers' output to the launcher's, each line prefixed with its rank.

One thread per pipe reads whole lines and writes each under a single lock, so
lines of different workers (and of stdout and stderr, which often end up on the
same terminal) never mix mid-line. A worker's stdout and stderr are separate
pipes, so their relative order is only kept to the extent the OS delivers it.
"""

from __future__ import annotations

import io
import signal
import threading
from typing import BinaryIO, TextIO

# Signals the launcher handles itself; helper threads block them so the kernel
# delivers them to the main thread, which is waiting for exactly these events.
LAUNCHER_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

MESSAGE_PREFIX = "kerasfed launch: "


def block_launcher_signals() -> None:
    """Keeps the launcher's signals away from the calling (helper) thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, LAUNCHER_SIGNALS)


class PrefixedOutput:
    """The launcher's stdout and stderr, shared by all workers' output pumps.

    Args:
        stdout: Where workers' stdout lines go (a binary or text stream).
        stderr: Where workers' stderr lines and the launcher's messages go.
    """

    def __init__(self, stdout: BinaryIO | TextIO, stderr: BinaryIO | TextIO) -> None:
        self._lock = threading.Lock()
        self._sinks = {"stdout": _binary(stdout), "stderr": _binary(stderr)}
        self._broken: set[str] = set()

    def write_line(self, stream: str, line: bytes) -> None:
        """Writes one whole line (ending with a newline) to ``stream`` and flushes."""
        with self._lock:
            if stream in self._broken:
                return
            try:
                self._sinks[stream].write(line)
                self._sinks[stream].flush()
            except (BrokenPipeError, ValueError, OSError):
                # The reader went away (`kerasfed launch ... | head`). Keep draining the
                # workers' pipes so they never block on a full pipe; drop the output.
                self._broken.add(stream)

    def message(self, text: str) -> None:
        """Writes a launcher message line to stderr, e.g. about a restart."""
        self.write_line("stderr", f"{MESSAGE_PREFIX}{text}\n".encode())

    def pump(self, pipe: BinaryIO, stream: str, label: str) -> threading.Thread:
        """Starts a daemon thread copying ``pipe`` line by line until end of file.

        Args:
            pipe: The read end of a worker's stdout or stderr.
            stream: ``"stdout"`` or ``"stderr"``: where the lines go.
            label: The worker's name in the prefix, e.g. ``"0"`` gives ``"[0] "``.

        Returns:
            The started thread; it ends when every writer has closed the pipe.
        """
        prefix = f"[{label}] ".encode()
        thread = threading.Thread(
            target=self._copy,
            args=(pipe, stream, prefix),
            name=f"pump-{label}-{stream}",
            daemon=True,
        )
        thread.start()
        return thread

    def _copy(self, pipe: BinaryIO, stream: str, prefix: bytes) -> None:
        block_launcher_signals()
        with pipe:
            # readline() returns whole lines; only the last one may lack its newline.
            for line in iter(pipe.readline, b""):
                if not line.endswith(b"\n"):
                    line += b"\n"
                self.write_line(stream, prefix + line)


class _TextAsBinary:
    """Lets a text stream without ``.buffer`` (e.g. io.StringIO) take bytes."""

    def __init__(self, text: TextIO) -> None:
        self._text = text

    def write(self, data: bytes) -> None:
        self._text.write(data.decode(errors="replace"))

    def flush(self) -> None:
        self._text.flush()


def _binary(stream: BinaryIO | TextIO):
    if not isinstance(stream, io.TextIOBase):
        return stream
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        # Flush text already written through the text layer so that it comes first.
        stream.flush()
        return buffer
    return _TextAsBinary(stream)  # type: ignore[arg-type]
