"""What ``fit_federated`` prints: round progress, and none of TensorFlow's chatter.

``verbose=1`` shows one ``tqdm.auto`` bar over the rounds (a widget in a notebook
when ipywidgets is installed, a text bar in a terminal) with the latest round's
loss and metrics; ``verbose=2`` prints one line per round, like Keras' ``fit``
with ``verbose=2``; ``verbose=0`` prints nothing. ``"auto"`` means 1 in a terminal
or notebook and 2 otherwise (a log file or a CI job, where a bar's carriage
returns would pile up).

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
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

from kerasfed._compat import keras

# Counters that are not model quality; shown in the line only as the round's time.
_NOT_SHOWN = ("num_examples", "round_seconds", "bytes_to_clients", "bytes_from_clients")


def resolve_verbose(verbose: int | str) -> int:
    """0, 1 or 2 for a checked ``verbose`` (``_arguments.check_verbose``): ``"auto"``
    is 1 in a terminal or notebook, else 2."""
    if verbose == "auto":
        return 1 if _interactive() else 2
    return int(verbose)


def _interactive() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        return True  # a Jupyter kernel: its stdout is no TTY, but a bar renders
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def format_logs(logs: dict[str, Any]) -> str:
    """``"loss: 0.1234 - accuracy: 0.9500 - val_loss: ..."`` (counters left out)."""
    return " - ".join(
        f"{k}: {v:.4f}" for k, v in logs.items() if k not in _NOT_SHOWN and _is_number(v)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class RoundProgress(keras.callbacks.Callback):
    """Shows training progress over rounds; rounds are Keras epochs.

    Args:
      verbose: 0, 1 or 2 (see the module docstring).
      rounds: Total number of rounds of the training.
      initial_round: Rounds already completed (a resumed training).
    """

    def __init__(self, verbose: int, rounds: int, initial_round: int = 0):
        super().__init__()
        self._verbose = verbose
        self._rounds = rounds
        self._initial = initial_round
        self._bar = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self._verbose == 1 and self._bar is None:
            with warnings.catch_warnings():
                # tqdm.auto warns when a notebook lacks ipywidgets, then falls back
                # to the text bar, which is what we want anyway.
                warnings.simplefilter("ignore")
                from tqdm.auto import tqdm  # noqa: PLC0415

                self._bar = tqdm(
                    total=self._rounds,
                    initial=self._initial,
                    desc="fit_federated",
                    unit="round",
                    file=sys.stdout,
                    dynamic_ncols=True,
                )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self._bar is not None:
            self._bar.set_postfix_str(format_logs(logs), refresh=False)
            self._bar.update(1)
        elif self._verbose == 2:
            seconds = logs.get("round_seconds", float("nan"))
            line = f"Round {epoch + 1}/{self._rounds} - {seconds:.2f}s"
            shown = format_logs(logs)
            print(f"{line} - {shown}" if shown else line, flush=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def note(self, text: str) -> None:
        """Prints one line before the rounds (e.g. how the engine runs them), unless silent."""
        if self._verbose:
            print(text, flush=True)

    def close(self) -> None:
        """Closes the bar (idempotent; also called when training raises)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# "2026-01-01 12:00:00.123456: I tensorflow/core/...] message" (TensorFlow's native
# logger) and "I0101 12:00:00.123456 1234 file.cc:12] message" (absl / gRPC).
_NATIVE_LOG_LINE = re.compile(
    rb"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) \S+:\d+\]"
    rb"|([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\])"
)
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}


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
    """Sends file descriptor 2 to a temporary file for the block, then writes back
    every line except native log lines below the minimum level."""
    threshold = _min_native_level()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    if threshold <= 0:
        os.close(saved)
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture if not _below(line, threshold)]
            if kept:
                os.write(2, b"".join(kept))


def _below(line: bytes, threshold: int) -> bool:
    match = _NATIVE_LOG_LINE.match(line)
    if match is None:
        return False
    return _SEVERITY[match.group(1) or match.group(2)] < threshold
