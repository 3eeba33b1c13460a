"""Copies the workers' output to the launcher's, each line prefixed with its rank.

One thread per pipe reads what the worker wrote and writes whole lines under a
single lock, so lines of different workers (and of stdout and stderr, which
often end up on the same terminal) never mix mid-line. A worker's stdout and
stderr are separate pipes, so their relative order is only kept to the extent
the OS delivers it.

Progress bars (Keras redraws its bar with backspaces and a carriage return, and
ends it with a newline) stay bars: a *live* worker's bar is redrawn in place on
the launcher's terminal (worker 0 by default, every worker with ``--all-bars``),
other lines printed around it; any other worker's bar shows once, in its final
state, when it ends. Without a terminal no bar is live, so a log file gets one
line per finished bar instead of every redraw.

TensorFlow's C++ start-up lines (``kerasfed._tf_startup``) are dropped when the
user has not set ``TF_CPP_MIN_LOG_LEVEL``: TF 2.21 writes them before it reads its
level, so the launcher, which reads every line anyway, is the one place to drop them.
A live worker learns its columns (less the prefix) from ``KERASFED_TERMINAL_COLUMNS``,
so that its bar fits the launcher's terminal.
"""

from __future__ import annotations

import io
import shutil
import signal
import threading
from typing import BinaryIO, TextIO

from kerasfed._console import TERMINAL_COLUMNS_VAR
from kerasfed._tf_startup import is_startup_noise

# Signals the launcher handles itself (see _signals.py). Helper threads block them
# so that their own system calls are never interrupted by one.
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
        live_bars: Whose bars are redrawn in place on a terminal: ``"chief"``,
            ``"all"`` or ``"none"``.
        drop_startup_noise: Leave out TensorFlow's C++ start-up lines.
    """

    def __init__(self, stdout: BinaryIO | TextIO, stderr: BinaryIO | TextIO,
                 live_bars: str = "chief", *, drop_startup_noise: bool = False) -> None:
        self._lock = threading.Lock()
        self._sinks = {"stdout": _binary(stdout), "stderr": _binary(stderr)}
        self._broken: set[str] = set()
        self._terminal = {name: _is_terminal(stream)
                          for name, stream in (("stdout", stdout), ("stderr", stderr))}
        self._live_bars = live_bars
        self._open_bar: dict[str, bytes] = {}  # stream -> the bar drawn without newline
        self.drop_startup_noise = drop_startup_noise

    def is_live(self, stream: str, label: str) -> bool:
        """Whether ``label``'s bars on ``stream`` are redrawn in place."""
        if not self._terminal.get(stream):
            return False
        return self._live_bars == "all" or (self._live_bars == "chief" and label == "0")

    def worker_env(self, label: str) -> dict[str, str]:
        """What worker ``label`` must know about where its stdout ends up: for a live
        worker, the columns its lines may take (the terminal's, less ``"[label] "``)."""
        if not self.is_live("stdout", label):
            return {}
        columns = shutil.get_terminal_size((80, 24)).columns - len(f"[{label}] ")
        return {TERMINAL_COLUMNS_VAR: str(max(columns, 20))}

    def write_line(self, stream: str, line: bytes, *, closes_bar: bool = False) -> None:
        """Writes one whole line (ending with a newline) to ``stream`` and flushes.

        A live bar drawn on that stream by another worker is cleared first and
        drawn again below; ``closes_bar`` ends the caller's own bar with ``line``.
        """
        with self._lock:
            bar = self._open_bar.pop(stream, None)
            if bar is None:
                self._write(stream, line)
            elif closes_bar:
                self._write(stream, b"\r" + line[:-1] + _CLEAR + b"\n")
            else:
                self._write(stream, b"\r" + _CLEAR + line + bar)
                self._open_bar[stream] = bar

    def draw_bar(self, stream: str, bar: bytes) -> None:
        """Draws ``bar`` (prefixed, no newline) in place of the stream's open bar."""
        with self._lock:
            self._write(stream, b"\r" + bar + _CLEAR)
            self._open_bar[stream] = bar

    def _write(self, stream: str, data: bytes) -> None:
        if stream in self._broken:
            return
        try:
            self._sinks[stream].write(data)
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
            args=(pipe, stream, prefix, self.is_live(stream, label)),
            name=f"pump-{label}-{stream}",
            daemon=True,
        )
        thread.start()
        return thread

    def _copy(self, pipe: BinaryIO, stream: str, prefix: bytes, live: bool) -> None:
        block_launcher_signals()
        lines = _Lines(self, stream, prefix, live)
        with pipe:
            read = getattr(pipe, "read1", pipe.read)
            for chunk in iter(lambda: read(65536), b""):
                lines.feed(chunk)
        lines.close()


_CLEAR = b"\x1b[K"  # erase to the end of the line


class _Lines:
    """Cuts one pipe's bytes into lines and bar redraws (see the module docstring)."""

    def __init__(self, output: PrefixedOutput, stream: str, prefix: bytes, live: bool):
        self._output, self._stream, self._prefix, self._live = output, stream, prefix, live
        self._pending = b""
        self._bar = b""  # the bar's latest state: what a newline right after \r ends

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk.replace(b"\b", b"")
        while True:
            cut = min((i for i in (self._pending.find(b"\n"), self._pending.find(b"\r"))
                       if i >= 0), default=-1)
            if cut < 0:
                break
            text, sep = self._pending[:cut], self._pending[cut:cut + 1]
            self._pending = self._pending[cut + 1:]
            if sep == b"\n":
                self._line(text or self._bar)
            elif text:
                self._redraw(text)
        if self._bar and self._pending and self._live:
            self._redraw(self._pending)

    def _redraw(self, text: bytes) -> None:
        self._bar = text
        if self._live:
            self._output.draw_bar(self._stream, self._prefix + text)

    def _line(self, text: bytes) -> None:
        if self._output.drop_startup_noise and is_startup_noise(text):
            return
        self._output.write_line(self._stream, self._prefix + text + b"\n",
                                closes_bar=self._live and bool(self._bar))
        self._bar = b""

    def close(self) -> None:
        if self._pending or self._bar:
            self._line(self._pending or self._bar)
            self._pending = b""


class _TextAsBinary:
    """Lets a text stream without ``.buffer`` (e.g. io.StringIO) take bytes."""

    def __init__(self, text: TextIO) -> None:
        self._text = text

    def write(self, data: bytes) -> None:
        self._text.write(data.decode(errors="replace"))

    def flush(self) -> None:
        self._text.flush()


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


def _binary(stream: BinaryIO | TextIO):
    if not isinstance(stream, io.TextIOBase):
        return stream
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        # Flush text already written through the text layer so that it comes first.
        stream.flush()
        return buffer
    return _TextAsBinary(stream)  # type: ignore[arg-type]
