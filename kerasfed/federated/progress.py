"""What ``fit_federated`` prints: round progress, and none of TensorFlow's chatter.

``verbose=1`` shows one progress line over the rounds with the latest round's loss
and metrics: in a terminal it is a tqdm bar, redrawn in place, that always fits the
terminal's width (the values come before the bar; when they do not fit, the bar goes
first, then long metric names are shortened, the timing and at last the least
important metrics are left out, so the values never get cut); in a
Jupyter notebook it is one display that updates in place (no ipywidgets needed, so
the saved notebook holds one output, the final state); written to a file or a pipe
it becomes one line per round, as ``verbose=2``. ``verbose=2`` prints one line per
round, like Keras' ``fit`` with ``verbose=2``; ``verbose=0`` prints nothing.
``"auto"`` is 1 in a terminal or notebook and 2 otherwise (``kerasfed._console``).

While TFF traces and runs computations, ``quiet_tensorflow`` keeps TensorFlow's
and TFF's own output away from the user: TensorFlow's Python logger is limited
to errors, TFF's Python warnings are ignored, and native (C++) log lines below
``TF_CPP_MIN_LOG_LEVEL`` (default here: 2, i.e. errors only) are dropped from
stderr. The last is needed because TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` once,
at import, and TFF's graph compilation logs a few dozen INFO lines ("grappler ...
Starting new session") per round computation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import logging
import math
import os
import re
import statistics
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from typing import Any

import tqdm

from kerasfed._compat import keras
from kerasfed._console import in_notebook, is_interactive, resolve_verbose, terminal_columns
from kerasfed._tf_startup import (
    filtered_stderr, is_startup_noise, native_severity, user_sets_log_level,
)

__all__ = ["RoundProgress", "format_logs", "quiet_tensorflow", "resolve_verbose", "round_line"]

# Counters that are not model quality; shown in the line only as the round's time.
_NOT_SHOWN = ("num_examples", "round_seconds", "bytes_to_clients", "bytes_from_clients",
              # Simulated devices' counters and clock: History and plots have them.
              "dropped", "stragglers", "partial_clients", "simulated_seconds",
              "simulated_seconds_total", "staleness_mean", "staleness_max")

# Shorter names for narrow terminals, applied in this order to each metric name.
_SHORT_NAMES = (
    ("sparse_categorical_accuracy", "acc"),
    ("categorical_accuracy", "acc"),
    ("binary_accuracy", "acc"),
    ("accuracy", "acc"),
    ("mean_squared_error", "mse"),
    ("mean_absolute_error", "mae"),
    ("crossentropy", "xent"),
)
_MIN_BAR = 10  # a narrower bar says nothing; leave it out instead
_MAX_BAR = 20


def format_logs(logs: dict[str, Any]) -> str:
    """``"loss: 0.1234 - accuracy: 0.9500 - val_loss: ..."`` (counters left out)."""
    return " - ".join(f"{k}: {_value(v)}" for k, v in _metrics(logs))


# The spread over clients (``fed_eval_accuracy_p10``...): five numbers per metric
# would push a round's line past any terminal; History and the plots have them.
_SPREAD_SUFFIXES = ("_min", "_p10", "_p50", "_p90", "_max")


def _metrics(logs: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in logs.items()
            if k not in _NOT_SHOWN and _is_number(v)
            and not (k.startswith("fed_eval_") and k.endswith(_SPREAD_SUFFIXES))]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value(value: float) -> str:
    """Four decimals, as Keras; tiny and huge values in exponent form so they stay short."""
    if value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.3e}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def _short_names(names: list[str]) -> dict[str, str]:
    """Shorter names, except where two would become the same."""
    short = {}
    for name in names:
        new = name
        for long, abbreviation in _SHORT_NAMES:
            new = new.replace(long, abbreviation)
        short[name] = new
    taken = list(short.values())
    return {n: s if taken.count(s) == 1 else n for n, s in short.items()}


def _drop_order(names: list[str]) -> list[str]:
    """The metrics to leave out, first to last, when even short names do not fit:
    the loss, the first metric and their validation twins go last (the loss never)."""
    first = next((n for n in names if n != "loss" and not n.startswith(("val_", "fed_eval_"))), None)
    important = {"loss", "val_loss"} | ({first, f"val_{first}"} if first else set())
    others = [n for n in reversed(names) if n not in important]
    return others + [n for n in reversed(names) if n in important and n != "loss"]


@dataclasses.dataclass(frozen=True)
class _Fitted:
    """What of a round's progress fits the width: the metric text, the timing, the bar."""

    metrics: str  # "loss 1.2346  acc 0.8123"
    timing: str  # "" when left out
    bar: int  # the bar's width in characters; 0 when left out

    @property
    def rest(self) -> str:
        return "  ".join(part for part in (self.metrics, self.timing) if part)

    def length(self, head: int) -> int:
        """Characters of ``round_line``'s "head [bar] rest"."""
        bar = self.bar + 3 if self.bar else 0  # brackets and a space
        return head + bar + (len(self.rest) + 1 if self.rest else 0)


def _fit(head: int, logs: dict[str, Any], width: int | None, timing: tuple[str, str]) -> _Fitted:
    """Chooses what fits beside a head of ``head`` characters (see ``round_line``).

    The lengths are those of ``round_line``'s layout (head, bar, metrics, timing), which
    the terminal's layout (head, metrics, bar, timing) never exceeds. When nothing fits,
    the loss alone is returned and the caller cuts it to the width.
    """
    metrics = _metrics(logs)
    names = [n for n, _ in metrics]
    values = dict(metrics)
    short = _short_names(names)
    full_timing, short_timing = timing

    def fitted(shown: list[str], rename: dict | None, times: str, bar: bool) -> _Fitted | None:
        text = "  ".join(f"{(rename or {}).get(n, n)} {_value(values[n])}" for n in shown)
        candidate = _Fitted(text, times, 0)
        if bar:
            # The bar takes what the rest leaves: two brackets and two spaces around it.
            rest = len(candidate.rest)
            room = _MAX_BAR if width is None else min(width - head - rest - 4, _MAX_BAR)
            if room < _MIN_BAR:
                return None
            candidate = dataclasses.replace(candidate, bar=room)
        return candidate if width is None or candidate.length(head) <= width else None

    candidates = [
        (names, None, full_timing, True),
        (names, None, full_timing, False),
        (names, short, full_timing, False),
        (names, short, short_timing, False),
        (names, short, "", False),
    ]
    dropped = list(names)
    for name in _drop_order(names):
        dropped = [n for n in dropped if n != name]
        candidates.append((dropped, short, "", False))
    for candidate in candidates:
        chosen = fitted(*candidate)
        if chosen is not None:
            return chosen
    return _Fitted(f"loss {_value(values['loss'])}" if "loss" in values else "", "", 0)


def round_line(
    done: int,
    rounds: int,
    logs: dict[str, Any],
    *,
    width: int | None = None,
    timing: tuple[str, str] = ("", ""),
) -> str:
    """The progress line after ``done`` of ``rounds`` rounds, at most ``width`` characters.

    Args:
        done: Rounds completed.
        rounds: Rounds in the whole training.
        logs: The latest round's logs (counters are left out).
        width: The most characters the line may take; None for no limit.
        timing: ``(full, short)`` timing texts, e.g. ``("0.21s/round  ETA 5s", "ETA 5s")``.

    Returns:
        The line: the round count first, then (space permitting) a bar, the metric
        values and the timing. What does not fit is left out in this order: the bar,
        long metric names (shortened), the timing, less important metrics; every
        value shown is shown in full.
    """
    head = f"Round {done:>{len(str(rounds))}}/{rounds}"
    fitted = _fit(len(head), logs, width, timing)
    bar = ""
    if fitted.bar:
        filled = round(fitted.bar * done / rounds) if rounds else fitted.bar
        bar = "[" + "=" * filled + "." * (fitted.bar - filled) + "]"
    line = " ".join(part for part in (head, bar, fitted.rest) if part)
    return line if width is None else line[: max(width, 1)]


class RoundProgress(keras.callbacks.Callback):
    """Shows training progress over rounds; rounds are Keras epochs.

    Args:
      verbose: 0, 1 or 2 (see the module docstring).
      rounds: Total number of rounds of the training.
      initial_round: Rounds already completed (a resumed training).
      stream: Where the progress goes. Defaults to ``sys.stdout`` at training start.
      width: Columns of the terminal. Defaults to its width, read at every redraw.
    """

    def __init__(self, verbose: int, rounds: int, initial_round: int = 0, *,
                 stream: Any = None, width: int | None = None):
        super().__init__()
        self._verbose = verbose
        self._rounds = rounds
        self._initial = initial_round
        self._stream = stream
        self._width = width
        self._display: _Display | None = None
        self._seconds: list[float] = []
        self._started = 0.0
        self._last: tuple[int, dict] | None = None  # the latest round shown live

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._started = time.monotonic()
        if self._verbose != 1 or self._display is not None:
            return
        stream = sys.stdout if self._stream is None else self._stream
        if in_notebook() and self._stream is None:
            self._display = _NotebookDisplay(self._notebook_line)
        elif is_interactive(stream):
            self._display = _TerminalDisplay(stream, self._rounds, self._initial, self._width)
        # Otherwise (a file or a pipe) no display: one line per round, as verbose=2.
        if self._display is not None:
            self._display.show(self._initial, {})

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        seconds = logs.get("round_seconds")
        if _is_number(seconds):
            self._seconds.append(seconds)
        if self._display is not None:
            self._display.show(epoch + 1, logs)
            self._last = (epoch + 1, logs)
        elif self._verbose in (1, 2):
            line = f"Round {epoch + 1}/{self._rounds} - {_time(seconds)}"
            shown = format_logs(logs)
            self._print(f"{line} - {shown}" if shown else line)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._display is not None and self._last is not None:
            self._display.finish(*self._last)
        self.close()

    def _notebook_line(self, done: int, logs: dict, final: bool) -> str:
        return round_line(done, self._rounds, logs, timing=self._timing(done, final))

    def _timing(self, done: int, final: bool) -> tuple[str, str]:
        if not self._seconds:
            return "", ""
        per_round = statistics.median(self._seconds)
        if final:
            total = f"{_duration(time.monotonic() - self._started)} in all"
            return f"{per_round:.2f}s/round  {total}", total
        eta = f"ETA {_duration(per_round * (self._rounds - done))}"
        return f"{per_round:.2f}s/round  {eta}", eta

    def note(self, text: str) -> None:
        """Prints a line before the rounds (e.g. how the engine runs them), unless silent;
        wrapped to the width of a terminal, one line anywhere else."""
        if not self._verbose:
            return
        stream = sys.stdout if self._stream is None else self._stream
        if self._verbose == 1 and not in_notebook() and is_interactive(stream):
            width = (self._width or terminal_columns()) - 1
            text = textwrap.fill(text, width=max(width, 20), subsequent_indent="  ")
        self._print(text)

    def _print(self, text: str) -> None:
        print(text, file=sys.stdout if self._stream is None else self._stream, flush=True)

    def close(self) -> None:
        """Ends the display (idempotent; also called when training raises)."""
        if self._display is not None:
            self._display.close()
            self._display = None


def _time(seconds: Any) -> str:
    return f"{seconds:.2f}s" if _is_number(seconds) else "nan s"


class _Display:
    """One progress line shown in place."""

    def show(self, done: int, logs: dict) -> None:
        """Shows the state after ``done`` rounds, ``logs`` being the latest round's."""
        raise NotImplementedError

    def finish(self, done: int, logs: dict) -> None:
        """Shows the final state (with the total time); ``close`` follows."""
        raise NotImplementedError

    def close(self) -> None:
        """Leaves the last state shown."""


class _RoundBar(tqdm.tqdm):
    """tqdm over rounds whose line is fitted to the width at every redraw.

    tqdm measures the rate and redraws the line (a carriage return, then spaces over
    what is left of the longer line before; no ANSI codes at position 0). At each
    redraw ``format_dict`` picks, by ``_fit``, what of ``logs`` and the timing fits the
    width and writes it into ``bar_format``: the values first, then the bar.
    """

    monitor_interval = 0  # no monitor thread: the line changes once a round, by update()

    def __init__(self, stream: Any, rounds: int, initial: int, width: int | None):
        self.logs: dict = {}
        self.final = False  # the finished line: total time instead of the ETA
        self._width = width
        super().__init__(
            file=stream, total=rounds, initial=initial, unit="round", ncols=self._columns(),
            ascii=".=",  # "[=====.....]": no partial-block characters
            leave=True, mininterval=0, miniters=1,  # every round is drawn
            # Line 0 even beside a user's own tqdm bar (an outer loop): tqdm moves the
            # cursor to a nested bar's line with ANSI codes, raw text in a launcher's relay.
            position=0,
        )

    def _columns(self) -> int:
        # kerasfed's width, not tqdm's dynamic_ncols: under `kerasfed launch` stdout is
        # a pipe and only TERMINAL_COLUMNS_VAR knows the columns. One column less than
        # the terminal: a line that fills it wraps on some terminals.
        return (self._width or terminal_columns()) - 1

    @property
    def format_dict(self) -> dict[str, Any]:
        meter = super().format_dict
        meter["ncols"] = self._columns()
        meter["bar_format"] = self._bar_format(meter)
        return meter

    def _bar_format(self, meter: dict[str, Any]) -> str:
        head = f"Round {meter['n']:>{len(str(self.total))}}/{self.total}"
        fitted = _fit(len(head), self.logs, meter["ncols"], self._timing(meter))
        line = " ".join(_literal(part) for part in (head, fitted.metrics) if part)
        if fitted.bar:
            line += f" [{{bar:{fitted.bar}}}]"  # tqdm draws the bar, this wide
        if fitted.timing:
            line += (" " if fitted.bar else "  ") + _literal(fitted.timing)
        return line

    def _timing(self, meter: dict[str, Any]) -> tuple[str, str]:
        """``(full, short)`` timing texts from tqdm's measured rate and elapsed time,
        written short ("5s", "1m05s") so that they fit at 80 columns more often."""
        rate, elapsed = meter["rate"], meter["elapsed"]
        if rate is None and elapsed:  # close() asks for the mean rate, as format_meter
            rate = (meter["n"] - meter["initial"]) / elapsed
        if not rate:
            return "", ""
        if self.final:
            when = f"{_duration(elapsed)} in all"
        else:
            when = f"ETA {_duration((meter['total'] - meter['n']) / rate)}"
        return f"{1 / rate:.2f}s/round  {when}", when


def _literal(text: str) -> str:
    """``text`` as it reads inside a ``str.format`` template."""
    return text.replace("{", "{{").replace("}", "}}")


class _TerminalDisplay(_Display):
    """A ``_RoundBar``: tqdm redraws the line with a carriage return."""

    def __init__(self, stream: Any, rounds: int, initial: int, width: int | None):
        self._bar = _RoundBar(stream, rounds, initial, width)

    def show(self, done: int, logs: dict) -> None:
        changed = logs != self._bar.logs
        self._bar.logs = logs
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)  # redraws: miniters=1, mininterval=0
        elif changed:  # (tqdm drew the start when it was made)
            self._bar.refresh()

    def finish(self, done: int, logs: dict) -> None:
        self._bar.logs, self._bar.final = logs, True  # drawn by close(), with the total time
        self._bar.close()

    def close(self) -> None:
        self._bar.close()  # tqdm leaves the last state and a newline; idempotent


class _NotebookDisplay(_Display):
    """One IPython display updated in place: a saved notebook holds its last state."""

    def __init__(self, line: Any) -> None:
        from IPython.display import display  # noqa: PLC0415  (only inside a kernel)

        self._line = line  # (done, logs, final) -> str
        self._handle = display({"text/plain": ""}, raw=True, display_id=True)

    def show(self, done: int, logs: dict) -> None:
        self._update(self._line(done, logs, False))

    def finish(self, done: int, logs: dict) -> None:
        self._update(self._line(done, logs, True))

    def _update(self, text: str) -> None:
        bar = re.match(r"(Round +(\d+)/(\d+))(?: \[[=.]+\])?(.*)", text)
        done, total = (bar.group(2), bar.group(3)) if bar else ("0", "1")
        rich = (f'<progress value="{done}" max="{total}" style="width:12em"></progress> '
                f"<code>{html.escape(bar.group(1) + bar.group(4) if bar else text)}</code>")
        self._handle.update({"text/plain": text, "text/html": rich}, raw=True)


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Keeps TensorFlow's and TFF's logs and warnings out of the output (see above)."""
    tf_logger = logging.getLogger("tensorflow")
    previous = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _native_logs_filtered():
            # TFF's own BatchNorm warning is replaced by fit's clearer one.
            warnings.filterwarnings("ignore", module=r"tensorflow_federated(\.|$)")
            yield
    finally:
        tf_logger.setLevel(previous)


def _min_native_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    except ValueError:
        return 2


@contextlib.contextmanager
def _native_logs_filtered() -> Iterator[None]:
    """Drops native log lines below the minimum level (and TensorFlow's start-up
    lines, e.g. a late "failed call to cuInit") from file descriptor 2."""
    threshold = _min_native_level()
    startup = not user_sets_log_level()
    if threshold <= 0 and not startup:
        yield
        return
    with filtered_stderr(
        lambda line: _below(line, threshold) or (startup and is_startup_noise(line))
    ):
        yield


def _below(line: bytes, threshold: int) -> bool:
    severity = native_severity(line)
    return severity is not None and severity < threshold
