"""Checks shared by kerasfed's public calls, so that they refuse the same mistakes alike.

- ``check_verbose`` / ``check_callbacks``: the Keras-style arguments both
  ``fit_distributed`` and ``fit_federated`` take (one rule, one error class each).
- ``checked_call``: a decorator that turns a call that does not fit the signature
  (an unknown keyword, too many positional arguments, a missing required one) into
  a ``SignatureError`` that names the fix, instead of Python's bare ``TypeError``.
- ``user_stacklevel``: where warnings raised inside such calls should point.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from kerasfed.errors import (  # noqa: F401  (CallbacksTypeError, VerboseError: defined with the family)
    CallbacksTypeError,
    SignatureError,
    VerboseError,
)

F = TypeVar("F", bound=Callable[..., Any])

VERBOSE_CHOICES = ("auto", 0, 1, 2)


def check_verbose(verbose: Any, *, caller: str) -> int | str:
    """Returns ``verbose`` (``"auto"``, 0, 1 or 2) or raises ``VerboseError``."""
    if (isinstance(verbose, str) and verbose == "auto") or (
        not isinstance(verbose, bool) and isinstance(verbose, int) and verbose in (0, 1, 2)
    ):
        return verbose
    raise VerboseError(
        f"{caller}: expected `verbose` to be one of {list(VERBOSE_CHOICES)}. Received: "
        f"verbose={verbose!r}. Use 0 (silent), 1 (progress bar), 2 (one line per epoch "
        f"or round) or 'auto'."
    )


def check_callbacks(callbacks: Any, *, caller: str) -> list:
    """Returns the callbacks as a new list; None means none.

    Raises:
      CallbacksTypeError: Not a list/tuple of ``keras.callbacks.Callback`` (a single
        callback too, as ``model.fit`` refuses it).
    """
    from kerasfed._compat import keras  # noqa: PLC0415  (imports TensorFlow)

    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback) or not isinstance(callbacks, (list, tuple)):
        raise CallbacksTypeError(
            f"{caller}: expected `callbacks` to be a list of keras.callbacks.Callback. "
            f"Received: {type(callbacks).__name__}. Wrap a single callback in a list: "
            f"callbacks=[cb]."
        )
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, keras.callbacks.Callback):
            raise CallbacksTypeError(
                f"{caller}: expected `callbacks` to hold keras.callbacks.Callback objects. "
                f"callbacks[{i}] is {callback!r:.60} of type {type(callback).__name__}."
            )
    return list(callbacks)


# -- Calls that do not fit the signature ---------------------------------------------------


def checked_call(
    *,
    keyword_hints: Mapping[str, str] | None = None,
    positional_hint: Callable[[tuple], str] | None = None,
    extra_keywords: Callable[[], Iterable[str]] | None = None,
) -> Callable[[F], F]:
    """Makes a public call refuse arguments that do not fit its signature with a SignatureError.

    Python's own ``TypeError`` ("got an unexpected keyword argument 'epochs'")
    names neither the fix nor the close matches. The decorated function keeps its
    signature and docstring (``functools.wraps``), so help() and the docs show it.

    Args:
        keyword_hints: Unknown keyword -> what to do instead, for the mistakes
            users make most (``epochs=`` to ``fit_federated``).
        positional_hint: Given the positional arguments, returns what to do when
            there are too many of them (``fit_federated(model, x, y)``).
        extra_keywords: For a function with ``**kwargs``: returns the keywords
            those take (e.g. ``keras.Model.fit``'s); called only when needed.

    Returns:
        The decorator.
    """
    hints = dict(keyword_hints or {})

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def checked(*args: Any, **kwargs: Any) -> Any:
            _check_call(func.__name__, signature, args, kwargs, hints, positional_hint, extra_keywords)
            return func(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate


def unknown_keywords_error(
    caller: str, unknown: Iterable[str], accepted: Iterable[str], hints: Mapping[str, str] | None = None
) -> SignatureError:
    """The error for keywords ``caller`` does not take: each with its hint or close matches."""
    unknown, accepted = sorted(unknown), list(accepted)
    advice = []
    for name in unknown:
        if hints and name in hints:
            advice.append(f"`{name}`: {hints[name]}")
            continue
        close = difflib.get_close_matches(name, accepted, n=3, cutoff=0.6)
        if close:
            advice.append(f"`{name}`: did you mean {' or '.join(f'`{c}`' for c in close)}?")
    return SignatureError(
        f"{caller}() got unexpected keyword argument(s) {unknown}. "
        + (" ".join(advice) + " " if advice else "")
        + f"It takes: {', '.join(accepted)}."
    )


def _check_call(
    caller: str,
    signature: inspect.Signature,
    args: tuple,
    kwargs: dict,
    hints: Mapping[str, str],
    positional_hint: Callable[[tuple], str] | None,
    extra_keywords: Callable[[], Iterable[str]] | None,
) -> None:
    params = signature.parameters
    kinds = inspect.Parameter
    by_keyword = [n for n, p in params.items() if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    var_keyword = any(p.kind is kinds.VAR_KEYWORD for p in params.values())
    # An unknown keyword first: `fit_federated(model, x, y, epochs=3)` is about epochs.
    unknown = [k for k in kwargs if k not in by_keyword]
    if unknown and var_keyword:
        extra = set(extra_keywords()) if extra_keywords is not None else None
        unknown = [] if extra is None else [k for k in unknown if k not in extra]
        by_keyword += sorted((extra or set()) - set(by_keyword))
    if unknown:
        raise unknown_keywords_error(caller, unknown, by_keyword, hints)
    positional = [n for n, p in params.items() if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(positional) and not any(p.kind is kinds.VAR_POSITIONAL for p in params.values()):
        hint = positional_hint(args) if positional_hint is not None else (
            "Pass the other arguments by keyword."
        )
        raise SignatureError(
            f"{caller}() takes {len(positional)} positional argument(s) "
            f"({', '.join(positional)}) but {len(args)} were given. {hint}"
        )
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:  # a missing required argument, or one given twice
        missing = [
            n for n, p in params.items()
            if p.default is p.empty and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
            and n not in kwargs and n not in positional[: len(args)]
        ]
        twice = [n for n in positional[: len(args)] if n in kwargs]
        if twice:
            problem = f"got `{twice[0]}` twice, by position and by keyword"
        elif missing:
            problem = f"is missing the required argument(s) {', '.join(f'`{n}`' for n in missing)}"
        else:
            problem = f"cannot take these arguments ({e})"
        raise SignatureError(f"{caller}() {problem}. See help({caller}).") from None


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn`` point at the user's line.

    Counted to the first frame outside the kerasfed package, so a warning raised
    deep inside ``fit_federated`` (behind ``checked_call``'s wrapper) names the
    caller's file and line however many kerasfed frames lie between.
    Call it as ``warnings.warn(..., stacklevel=user_stacklevel())``.
    """
    frame = sys._getframe(1)  # the function calling warnings.warn: stacklevel 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
