"""TensorFlow's C++ start-up lines, and keeping them off the user's screen.

Importing TensorFlow prints lines that say nothing about the user's program:
TF 2.14 "Unable to register cuDNN/cuFFT/cuBLAS factory" (even at
``TF_CPP_MIN_LOG_LEVEL=2``), TF 2.21 "WARNING: All log messages before
absl::InitializeLog() ..." and "Could not find cuda drivers" twice (even at level 3:
they are written before TensorFlow reads its level), the oneDNN and CPU-feature
notes, and "failed call to cuInit" when CUDA libraries are installed without a GPU.

Only two things hide the lines TensorFlow writes before it reads its level: pointing
file descriptor 2 elsewhere while TensorFlow is imported
(:func:`quiet_tensorflow_startup`), or dropping them where the stream is read
(``kerasfed launch`` relays its workers' lines through :func:`is_startup_noise`).
Both apply only when the user has not set ``TF_CPP_MIN_LOG_LEVEL``: a user who set
it chose what TensorFlow shows.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping

LOG_LEVEL_VAR = "TF_CPP_MIN_LOG_LEVEL"
# Errors only: INFO and WARNING lines of TensorFlow's C++ side are off.
QUIET_LOG_LEVEL = "2"

# The prefixes of TensorFlow's native logger ("2026-01-01 12:00:00.123456: E
# tensorflow/...cc:12] ") and of absl ("E0000 00:00:1796650656.595701   12349 file.cc:52] ").
# The severity letter is captured (one group per form).
NATIVE_PREFIX = (
    r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) \S+:\d+\] "
    r"|([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] )"
)
_NATIVE_LINE = re.compile(rf"^{NATIVE_PREFIX}".encode())
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
# The messages themselves, each as TensorFlow writes it at start-up.
_NOISE_MESSAGES = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"Unable to register cu(?:DNN|FFT|BLAS) factory: Attempting to register factory for plugin",
    r"Could not find cuda drivers on your machine, GPU will not be used",
    r"failed call to cuInit: ",
    r"oneDNN custom operations are on\.",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    # The second line of the CPU-instructions note, written without a prefix.
    r"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler",
    r"TF-TRT Warning: Could not find TensorRT",
)
_NOISE_LINE = re.compile(
    rf"^{NATIVE_PREFIX}?(?:{'|'.join(_NOISE_MESSAGES)})".encode()
)


def native_severity(line: bytes) -> int | None:
    """0-3 (INFO to FATAL) for a line of TensorFlow's native or absl logger, else None."""
    match = _NATIVE_LINE.match(line)
    return None if match is None else _SEVERITY[match.group(1) or match.group(2)]


def is_startup_noise(line: bytes) -> bool:
    """Whether ``line`` (one line of stderr, as bytes) is one of TensorFlow's start-up lines."""
    return _NOISE_LINE.match(line.lstrip(b"\r")) is not None


def user_sets_log_level(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``TF_CPP_MIN_LOG_LEVEL`` is set (then its owner decides what TF shows)."""
    return LOG_LEVEL_VAR in (os.environ if environ is None else environ)


@contextlib.contextmanager
def quiet_tensorflow_startup() -> Iterator[None]:
    """Keeps TensorFlow's C++ start-up lines off stderr while the block runs.

    Wrap the first ``import tensorflow`` (or the first call that imports it and
    looks for devices, such as ``kerasfed.use_logical_cpus``). When
    ``TF_CPP_MIN_LOG_LEVEL`` is unset, this sets it to ``"2"`` (C++ errors only; it
    stays set, as TensorFlow reads it at import) and points file descriptor 2 at a
    temporary file during the block; afterwards every captured line except the known
    start-up lines is written back to stderr, also when the block raises (then before
    the exception propagates), so no real error is lost. When the variable is set,
    the block runs untouched.

    Example:
        >>> import kerasfed
        >>> with kerasfed.quiet_tensorflow_startup():
        ...     import tensorflow as tf
    """
    if user_sets_log_level():
        yield
        return
    os.environ[LOG_LEVEL_VAR] = QUIET_LOG_LEVEL
    with filtered_stderr(is_startup_noise):
        yield


@contextlib.contextmanager
def filtered_stderr(drop: Callable[[bytes], bool]) -> Iterator[None]:
    """Sends file descriptor 2 to a temporary file for the block, then writes back
    every line for which ``drop`` is false (also when the block raises).

    File descriptor 2 and not ``sys.stderr``: TensorFlow's C++ code writes to the
    descriptor directly.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
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
            _write_all(2, b"".join(line for line in capture if not drop(line)))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
