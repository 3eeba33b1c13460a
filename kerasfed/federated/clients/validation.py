"""Checks that clients' data can be trained on, and its labels read as classes.

The functions take the ``{client_id: (x, y)}`` arrays of a ClientData; each
error names the first client found at fault.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kerasfed.federated.clients.arguments import check_int
from kerasfed.federated.clients.errors import ClientDataError

Clients = Mapping[str, tuple[np.ndarray, np.ndarray]]


def validate(
    clients: Clients, *, num_classes: int | None = None, sparse_labels: bool | None = None
) -> None:
    """:meth:`ClientData.validate` (see there)."""
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, 1)
    if sparse_labels is not None and not isinstance(sparse_labels, bool):
        raise TypeError(
            f"Expected `sparse_labels` to be True, False or None. "
            f"Received: sparse_labels={sparse_labels!r}."
        )
    first = next(iter(clients))
    fx, fy = clients[first]
    for cid, (x, y) in clients.items():
        if len(x) == 0:
            raise ClientDataError(
                f"Client {cid!r} has no examples. Every client needs at least one; "
                f"drop it (e.g. client_data.subset(...)) or partition differently."
            )
        _check_same(cid, first, "features", x, fx)
        _check_same(cid, first, "labels", y, fy)
        _check_finite(cid, "features", x)
        _check_finite(cid, "labels", y)
        _check_labels(cid, y, num_classes, sparse_labels)


def label_counts(clients: Clients, num_classes: int | None = None) -> np.ndarray:
    """:meth:`ClientData.label_counts` (see there)."""
    classes = {cid: _class_indices(cid, y) for cid, (_, y) in clients.items()}
    if num_classes is None:
        tops = [c.max() for c in classes.values() if len(c)]
        widths = [y.shape[1] for _, y in clients.values() if y.ndim == 2 and y.shape[1] > 1]
        num_classes = max([int(t) + 1 for t in tops] + widths + [1])
    num_classes = check_int("num_classes", num_classes, 1)
    rows = []
    for cid, c in classes.items():
        if len(c) and c.max() >= num_classes:
            raise ClientDataError(
                f"Client {cid!r} has label {int(c.max())}; expected labels in "
                f"[0, {num_classes}) for num_classes={num_classes}."
            )
        rows.append(np.bincount(c, minlength=num_classes))
    return np.stack(rows).astype(np.int64)


def _check_same(cid: str, first: str, what: str, a: np.ndarray, ref: np.ndarray) -> None:
    if a.shape[1:] != ref.shape[1:] or a.dtype != ref.dtype:
        raise ClientDataError(
            f"Client {cid!r} has {what} of per-example shape {a.shape[1:]} and dtype "
            f"{a.dtype}, but client {first!r} has shape {ref.shape[1:]} and dtype "
            f"{ref.dtype}. All clients must share one shape and dtype; convert them "
            f"(e.g. .astype(np.float32)) before training."
        )


def _check_finite(cid: str, what: str, a: np.ndarray) -> None:
    if a.dtype.kind != "f":
        return
    finite = np.isfinite(a)
    if not finite.all():
        nans = int(np.isnan(a).sum())
        infs = int(a.size - finite.sum()) - nans
        raise ClientDataError(
            f"Client {cid!r} has {nans} NaN and {infs} infinite values in its {what}. "
            f"Remove or impute them before training."
        )


def _check_labels(
    cid: str, y: np.ndarray, num_classes: int | None, sparse_labels: bool | None
) -> None:
    trailing = y.shape[1:]
    if sparse_labels is None:
        if num_classes is None:
            return  # nothing to check against
        sparse_labels = trailing in ((), (1,))
    if not sparse_labels:
        if num_classes is not None and trailing != (num_classes,):
            raise ClientDataError(
                f"Client {cid!r} has labels of per-example shape {trailing}, but the "
                f"model has {num_classes} classes, so one-hot labels need shape "
                f"({num_classes},). Use integer labels with a sparse loss, or one-hot "
                f"encode with {num_classes} columns."
            )
        return
    if trailing not in ((), (1,)):
        raise ClientDataError(
            f"Client {cid!r} has labels of per-example shape {trailing}; sparse "
            f"(integer) labels need shape (n,) or (n, 1). For one-hot labels use a "
            f"categorical (not sparse) loss."
        )
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise ClientDataError(
            f"Client {cid!r} has non-integer values in its labels (dtype {y.dtype}), "
            f"but sparse labels are class indices."
        )
    low, high = y.min().item(), y.max().item()  # Python scalars print plainly
    if low < 0 or (num_classes is not None and high >= num_classes):
        bad = low if low < 0 else high
        allowed = ">= 0" if num_classes is None else f"in [0, {num_classes})"
        raise ClientDataError(
            f"Client {cid!r} has label {bad!r}; sparse labels must be class indices "
            f"{allowed}. Check the model's number of output units or remap the labels."
        )


def _class_indices(cid: str, y: np.ndarray) -> np.ndarray:
    """Class index per example from sparse or one-hot labels."""
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1) if len(y) else np.zeros(0, np.int64)
    # reshape(0, -1) is ambiguous for a client without examples: give the width.
    flat = y.reshape(len(y), int(np.prod(y.shape[1:], dtype=np.int64)))
    if flat.shape[1] != 1 or (y.dtype.kind == "f" and not np.array_equal(y, np.round(y))):
        raise ClientDataError(
            f"Client {cid!r}: labels of per-example shape {y.shape[1:]} and dtype "
            f"{y.dtype} are neither class indices nor one-hot rows."
        )
    flat = flat[:, 0]
    if len(flat) and flat.min() < 0:
        raise ClientDataError(f"Client {cid!r} has negative label {flat.min().item()!r}.")
    return flat.astype(np.int64)
