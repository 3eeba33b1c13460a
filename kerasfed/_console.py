"""Where output goes: a terminal, a Jupyter notebook, or a file/pipe.

Both fit calls resolve ``verbose="auto"`` here, with Keras' rule for runs that are
not interactive ("``verbose=2`` is recommended when not running interactively"):
1 (a progress bar) in a terminal or a notebook, 2 (one line per epoch or round)
when stdout is a file or a pipe, where a bar's carriage-return redraws would pile up.

``kerasfed launch`` reads its workers' stdout through a pipe and redraws a live
worker's bar on its own terminal; it tells that worker so (and how many columns it
has, less the ``[0] `` prefix) through :data:`TERMINAL_COLUMNS_VAR`.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TextIO

# Set by `kerasfed launch` for the workers whose bars it shows live on a terminal.
TERMINAL_COLUMNS_VAR = "KERASFED_TERMINAL_COLUMNS"


def resolve_verbose(verbose: int | str) -> int:
    """0, 1 or 2 for a checked ``verbose``: ``"auto"`` is 1 when interactive, else 2."""
    if verbose == "auto":
        return 1 if is_interactive() else 2
    return int(verbose)


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (its stdout is no TTY, yet shows a live display)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    # ipykernel's shells (Jupyter, VS Code, Colab's subclass) have a kernel; a
    # terminal IPython has none.
    return shell is not None and getattr(shell, "kernel", None) is not None


def is_interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stdout) is seen by a person as it is written."""
    stream = sys.stdout if stream is None else stream
    if in_notebook() or launcher_columns() is not None:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def launcher_columns() -> int | None:
    """The columns ``kerasfed launch`` gives this worker's live output, if any."""
    try:
        columns = int(os.environ.get(TERMINAL_COLUMNS_VAR, ""))
    except ValueError:
        return None
    return columns if columns > 0 else None


def terminal_columns() -> int:
    """Width of the terminal the output goes to (``COLUMNS`` first, then the TTY; 80 if unknown)."""
    return launcher_columns() or shutil.get_terminal_size((80, 24)).columns
