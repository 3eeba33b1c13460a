#!/usr/bin/env python3
"""Seconds per epoch: kerasfed.fit_distributed vs plain ``model.fit`` on one device.

The same training for every contestant: an MLP (784-256-256-10, SGD) on synthetic
MNIST-shaped data, global batch 64, Keras's default shuffling. Contestants:

- ``plain_fit``: ``model.fit`` in one process on one device (the baseline);
- ``default``: ``fit_distributed(..., strategy="default")``, i.e. no distribution
  (what ``"auto"`` picks on a machine with one device): the cost of kerasfed itself;
- ``plain_fit_backup`` and ``default_backup``: the same two with an epoch-wise
  backup (``keras.callbacks.BackupAndRestore`` / ``backup_dir``); kerasfed then
  feeds the arrays as a stream whose order survives a restart, and the ratio of
  the two is the cost of that stream;
- ``mirrored_2cpu``: ``fit_distributed(..., strategy="mirrored")`` over two logical
  CPUs of one process (``use_logical_cpus(2)``);
- ``multi_worker_2``: two processes on 127.0.0.1 started by ``kerasfed launch
  --workers 2``, ``strategy="auto"`` (MultiWorkerMirroredStrategy);
- ``tf_multi_worker_2``: the same two processes running ``model.fit`` under a
  ``tf.distribute.MultiWorkerMirroredStrategy`` written directly (no kerasfed but
  the launcher): TensorFlow's own cost of synchronising two processes. Keras 3
  cannot do this (keras-team/keras#20585); the row then says so.

Each contestant runs in its own child process (logical devices and the
multi-worker strategy must be set up before TensorFlow starts), one after the
other; ``--repeats`` runs the whole list again and keeps each contestant's best
median, which filters out load from other programs. Printed: median seconds per
epoch after the first (which traces the step function), and ratios to the
baseline. The distributed contestants share this machine's cores with each other,
so their ratios measure coordination overhead, not a speed-up.

  python3 dev.py bench distributed_overhead [--epochs 6] [--examples 60000] [--repeats 2]
      [--contestants plain_fit,default]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

FEATURES, CLASSES, BATCH = 784, 10, 64
CONTESTANTS = (
    "plain_fit", "default", "plain_fit_backup", "default_backup", "mirrored_2cpu", "multi_worker_2", "tf_multi_worker_2"
)
LABELS = {
    "plain_fit": "model.fit, 1 device",
    "default": "fit_distributed default",
    "plain_fit_backup": "model.fit + BackupAndRestore",
    "default_backup": "fit_distributed default, backup_dir",
    "mirrored_2cpu": "fit_distributed mirrored 2 CPUs",
    "multi_worker_2": "fit_distributed 2 workers",
    "tf_multi_worker_2": "model.fit under TF's MWMS, 2 workers",
}


def build_model():
    from kerasfed._compat import keras

    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def make_data(n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((n, FEATURES), dtype="float32")
    y = rng.integers(0, CLASSES, size=n).astype("int32")
    return x, y


def child(name: str, epochs: int, examples: int) -> None:
    """Trains as contestant ``name`` and prints its epoch seconds as JSON."""
    if name == "mirrored_2cpu":
        from kerasfed.distributed.devices import use_logical_cpus

        use_logical_cpus(2)  # before TensorFlow starts
    elif name == "multi_worker_2":
        from kerasfed.distributed.strategies import get_strategy

        get_strategy("multi_worker")  # before TensorFlow's first op
    elif name == "tf_multi_worker_2":
        import tensorflow as tf

        tf_strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from kerasfed._compat import keras
    from kerasfed.distributed.fit import fit_distributed

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    x, y = make_data(examples)
    clock = EpochClock()
    model = build_model()
    backup_dir = tempfile.mkdtemp(prefix="kerasfed-bench-")  # removed below
    if name == "plain_fit":
        model.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=[clock], verbose=0)
    elif name == "plain_fit_backup":
        backup = keras.callbacks.BackupAndRestore(os.path.join(backup_dir, "b"))
        model.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=[backup, clock], verbose=0)
    elif name == "default_backup":
        fit_distributed(
            model, x, y, strategy="default", batch_size=BATCH, epochs=epochs, callbacks=[clock], verbose=0,
            backup_dir=os.path.join(backup_dir, "b"),
        )
    elif name == "tf_multi_worker_2":
        with tf_strategy.scope():
            model = build_model()
        model.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=[clock], verbose=0)
    else:
        strategy = {"default": "default", "mirrored_2cpu": "mirrored", "multi_worker_2": "auto"}[name]
        fit_distributed(model, x, y, strategy=strategy, batch_size=BATCH, epochs=epochs, callbacks=[clock], verbose=0)
    shutil.rmtree(backup_dir, ignore_errors=True)
    rank = int(os.environ.get("KERASFED_RANK", "0"))
    print(json.dumps({"rank": rank, "epoch_s": clock.seconds}), flush=True)


def run_child(name: str, args) -> list[float] | None:
    script = [os.path.abspath(__file__), "--child", name, "--epochs", str(args.epochs), "--examples", str(args.examples)]
    if name.endswith("multi_worker_2"):
        cmd = [sys.executable, "-m", "kerasfed", "launch", "--workers", "2", *script]
    else:
        cmd = [sys.executable, *script]
    # Own session, killed afterwards: no worker may outlive the benchmark.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, start_new_session=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    )
    try:
        out, _ = proc.communicate()
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        if name == "tf_multi_worker_2":
            return None  # Keras 3 (see the module docstring)
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    for line in out.splitlines():  # launch prefixes lines with "[rank] "
        text = line.split("] ", 1)[1] if line.startswith("[") else line
        if text.startswith("{"):
            report = json.loads(text)
            if report["rank"] == 0:
                return report["epoch_s"]
    raise SystemExit(f"{name} printed no result")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--examples", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--contestants", default=",".join(CONTESTANTS), help=f"comma-separated subset of {','.join(CONTESTANTS)}"
    )
    parser.add_argument("--child", choices=CONTESTANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.epochs, args.examples)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not counted)")
    names = [n for n in CONTESTANTS if n in args.contestants.split(",")]
    if "plain_fit" not in names or len(names) != len(args.contestants.split(",")):
        parser.error(f"--contestants must include plain_fit and name only {','.join(CONTESTANTS)}")
    from importlib.metadata import version

    print(
        f"MLP 784-256-256-10, {args.examples} synthetic examples, global batch {BATCH}, "
        f"{args.epochs} epochs (median of epochs 2..{args.epochs}), best of {args.repeats} run(s); "
        f"TensorFlow {version('tensorflow')}, Keras {version('keras')}, {os.cpu_count()} CPU cores"
    )
    best: dict[str, float | None] = {}
    for _ in range(args.repeats):
        for name in names:
            seconds = run_child(name, args)
            median = None if seconds is None else statistics.median(seconds[1:])
            best[name] = median if best.get(name) is None else min(best[name], median)
    base = best["plain_fit"]
    print(f"{'contestant':38} {'s/epoch':>8} {'vs model.fit':>13}")
    for name in names:
        if best[name] is None:
            print(f"{LABELS[name]:38} {'fails in this Keras (keras-team/keras#20585)':>22}")
        else:
            print(f"{LABELS[name]:38} {best[name]:8.3f} {best[name] / base:13.3f}")
    if best.get("plain_fit_backup") and best.get("default_backup"):
        ratio = best["default_backup"] / best["plain_fit_backup"]
        print(f"with a backup, fit_distributed vs model.fit: {ratio:.3f}")


if __name__ == "__main__":
    main()
