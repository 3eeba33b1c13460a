"""Checks that clients' data can be trained on, and its labels read as classes.

The functions take the ``{client_id: (x, y)}`` arrays of a ClientData; each
error names the first client found at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kerasfed.errors import ArgumentTypeError, LabelError
from kerasfed.federated.clients import structure
from kerasfed.federated.clients.arguments import check_int
from kerasfed.federated.clients.errors import ClientDataError

Clients = Mapping[str, tuple]  # (x, y) or (x, y, sample_weight); x, y may be structures


def client_name(cid: str) -> str:
    """How messages name a client: ``Client 'a'``.

    Data checked as one pseudo-client whose id is an argument's name in backticks
    (``"`validation_data`"``) is named as that argument, so the message is right
    where it is made.
    """
    return cid if cid.startswith("`") and cid.endswith("`") else f"Client {cid!r}"


def validate(
    clients: Clients, *, num_classes: int | None = None, sparse_labels: bool | None = None,
    label_rules: Sequence[tuple[str | None, int | None, bool | None]] | None = None,
) -> None:
    """:meth:`ClientData.validate` (see there)."""
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, 1)
    if sparse_labels is not None and not isinstance(sparse_labels, bool):
        raise ArgumentTypeError(
            f"Expected `sparse_labels` to be True, False or None. "
            f"Received: sparse_labels={sparse_labels!r}."
        )
    first = next(iter(clients))
    reference = clients[first]
    for cid, entry in clients.items():
        x, y = entry[0], entry[1]
        if structure.num_rows(x) == 0:
            raise ClientDataError(
                f"{client_name(cid)} has no examples. Every client needs at least one; "
                f"drop it (e.g. client_data.subset(...)) or partition differently."
            )
        for what, part, ref in zip(("features", "labels", "sample weights"), entry, reference):
            _check_same_structure(cid, first, what, part, ref)
            for a, r in zip(structure.leaves(part), structure.leaves(ref)):
                _check_same(cid, first, what, a, r)
                _check_finite(cid, what, a)
        if len(entry) == 3 and (entry[2] < 0).any():
            raise ClientDataError(
                f"{client_name(cid)} has negative sample weights (smallest "
                f"{entry[2].min().item()!r}); sample weights must be >= 0.")
        if label_rules is None:
            if not structure.is_structured(y):  # several outputs are checked by their rules
                _check_labels(cid, y, num_classes, sparse_labels)
            continue
        for (output, classes, sparse), labels in zip(label_rules, structure.leaves(y)):
            _check_labels(cid, labels, classes, sparse, output=output)


def _check_same_structure(cid: str, first: str, what: str, part, ref) -> None:
    try:
        # Dicts must match dicts (same keys); lists and tuples are alike.
        tf.nest.assert_same_structure(structure.lists_to_tuples(part),
                                      structure.lists_to_tuples(ref), check_types=True)
    except (ValueError, TypeError):
        raise ClientDataError(
            f"{client_name(cid)} has {what} structured as {_shape_of(part)}, but client "
            f"{first!r} has {_shape_of(ref)}. All clients must pass the same dict keys / "
            f"list lengths (one array per model input or output)."
        ) from None


def _shape_of(part) -> str:
    return str(tf.nest.map_structure(lambda _: "array", part))


def label_counts(clients: Clients, num_classes: int | None = None) -> np.ndarray:
    """:meth:`ClientData.label_counts` (see there)."""
    if any(structure.is_structured(entry[1]) for entry in clients.values()):
        raise ClientDataError(
            "label_counts needs one label array per client; these clients have several "
            "(a model with several outputs). Count one output's labels yourself, e.g. "
            "np.bincount(y['out'])."
        )
    clients = {cid: entry[:2] for cid, entry in clients.items()}
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
                f"{client_name(cid)} has label {int(c.max())}; expected labels in "
                f"[0, {num_classes}) for num_classes={num_classes}."
            )
        rows.append(np.bincount(c, minlength=num_classes))
    return np.stack(rows).astype(np.int64)


def _check_same(cid: str, first: str, what: str, a: np.ndarray, ref: np.ndarray) -> None:
    if a.shape[1:] != ref.shape[1:] or a.dtype != ref.dtype:
        raise ClientDataError(
            f"{client_name(cid)} has {what} of per-example shape {a.shape[1:]} and dtype "
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
            f"{client_name(cid)} has {nans} NaN and {infs} infinite values in its {what}. "
            f"Remove or impute them before training."
        )


def _check_labels(
    cid: str, y: np.ndarray, num_classes: int | None, sparse_labels: bool | None,
    output: str | None = None,
) -> None:
    # With several outputs the message names the output as well as the client.
    who = client_name(cid) if output is None else f"{client_name(cid)} (output {output!r})"
    trailing = y.shape[1:]
    if sparse_labels is None:
        if num_classes is None:
            return  # nothing to check against
        sparse_labels = trailing in ((), (1,))
    if not sparse_labels:
        if num_classes is not None and trailing != (num_classes,):
            raise LabelError(
                f"{who} has labels of per-example shape {trailing}, but the "
                f"model has {num_classes} classes, so one-hot labels need shape "
                f"({num_classes},). Use integer labels with a sparse loss, or one-hot "
                f"encode with {num_classes} columns."
            )
        return
    if trailing not in ((), (1,)):
        raise LabelError(
            f"{who} has labels of per-example shape {trailing}; sparse "
            f"(integer) labels need shape (n,) or (n, 1). For one-hot labels use a "
            f"categorical (not sparse) loss."
        )
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise LabelError(
            f"{who} has non-integer values in its labels (dtype {y.dtype}), "
            f"but sparse labels are class indices."
        )
    low, high = y.min().item(), y.max().item()  # Python scalars print plainly
    if low < 0 or (num_classes is not None and high >= num_classes):
        bad = low if low < 0 else high
        allowed = ">= 0" if num_classes is None else f"in [0, {num_classes})"
        raise LabelError(
            f"{who} has label {bad!r}; sparse labels must be class indices "
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
            f"{client_name(cid)}: labels of per-example shape {y.shape[1:]} and dtype "
            f"{y.dtype} are neither class indices nor one-hot rows."
        )
    flat = flat[:, 0]
    if len(flat) and flat.min() < 0:
        raise ClientDataError(f"{client_name(cid)} has negative label {flat.min().item()!r}.")
    return flat.astype(np.int64)
