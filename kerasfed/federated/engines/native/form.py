"""Which form the native engine trains a model in, and when it falls back.

``lockstep`` (clients stacked, ``tf.vectorized_map``; ``+xla`` compiled by XLA)
is fastest for small per-example models; ``sequential`` (one client after
another) takes every model. A model is put in the fastest form it is known to
support; if that form fails while the engine first builds and runs it, the
engine falls back one step (``FALLBACK``) and says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

from kerasfed._compat import KERAS_3
from kerasfed.federated.engines.native import forward as fwd

#: The next form to try when one fails the first time it runs.
FALLBACK = {"lockstep+xla": "lockstep", "lockstep": "sequential"}

#: The errors that mean "this form cannot run this model" when the form is first
#: traced and run: tracing (ValueError, TypeError, NotImplementedError) and
#: graph/XLA building (InvalidArgumentError, UnimplementedError...). Running out
#: of memory is not one of them: it is reported, never turned into another form.
FORM_ERRORS = (ValueError, TypeError, NotImplementedError, tf.errors.InvalidArgumentError,
               tf.errors.UnimplementedError, tf.errors.InternalError,
               tf.errors.FailedPreconditionError)

# Clients the sequential form trains at once when each op runs on one thread
# (intra-op parallelism 1): one per core, up to 4. With TensorFlow's default
# thread pool, two clients side by side contended for it and were no faster
# (CNN round 2.05 s against 1.93 s); with one thread per op they took 1.55 s.
_IN_FLIGHT = max(1, min(4, os.cpu_count() or 1))


def clients_in_flight() -> int:
    """Clients the sequential form trains side by side in this process."""
    threads = tf.config.threading.get_intra_op_parallelism_threads()  # 0: not set there
    if threads == 0:
        threads = int(os.environ.get("TF_NUM_INTRAOP_THREADS", "0") or 0)
    return _IN_FLIGHT if threads == 1 else 1


def choose_form(model, requested: str | None) -> tuple[str, str]:
    """``(form, why)`` for ``model``: the ``requested`` one, else the fastest it supports."""
    if requested is not None:
        return requested, "requested"
    reason = fwd.StatelessForward.supported(model)
    if reason is not None:
        return "sequential", reason
    classes = fwd.layer_classes(model)
    mixing = sorted({c for c in classes if c not in fwd.PER_EXAMPLE_LAYERS})
    if mixing:
        return "sequential", f"layers {mixing} are not known to treat examples independently"
    if fwd.CONVOLUTION_LAYERS & set(classes):
        return "sequential", "convolutions train faster one client at a time on CPU"
    if KERAS_3:
        return "lockstep+xla", "per-example layers: clients stacked and trained in lockstep, XLA"
    # Measured on the 2NN round: XLA made TF 2.14's lockstep slower (0.13 s
    # against 0.11 s), while it speeds up TF 2.21's (0.057 s against 0.080 s).
    return "lockstep", "per-example layers: clients stacked and trained in lockstep"


def side_by_side(devices: Sequence[str | None]) -> bool:
    """Whether a process's replicas on ``devices`` train at the same time (threads).

    Accelerators do. Logical CPUs share one thread pool: side by side they only
    contend for it (2NN round, TF 2.21, two logical CPUs on 2 cores: 0.47 s in
    threads against 0.32 s one after the other), so they take turns.
    """
    return not any("CPU" in (d or "CPU").upper() for d in devices)
