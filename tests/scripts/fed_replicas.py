"""fit_federated(strategy=...) in a child process; the tests compare with one process.

Usage:
  ``fed_replicas.py mirrored OUT.json``: splits the CPU into two logical devices
  (possible only before TensorFlow starts, so not in a pytest process), then runs
  every case of ``CASES`` with ``strategy=None`` and with ``strategy="mirrored"``
  and writes the largest weight and History differences to OUT.json.

  ``fed_replicas.py gpu OUT.json``: the same over the GPUs (one GPU is split into
  two logical GPUs), to run where there is a GPU.

  ``fed_replicas.py worker OUT_DIR [--die-after-round K]``: one worker of a
  ``kerasfed launch --workers 2`` job: runs the ``WORKER_CASES`` with
  ``strategy="multi_worker"`` and a checkpoint_dir, a CSVLogger and a History file
  under OUT_DIR/user, and saves this worker's weights and History to
  OUT_DIR/rank{R}.npz. With ``--die-after-round K`` worker 1 kills itself
  (SIGKILL) after round K of its first attempt, so that the launcher's
  ``--max-restarts`` restarts the job and the run resumes from the checkpoint.

``CASES`` and ``make_problem`` are imported by tests/test_fit_federated_strategy.py
to run the same trainings in one process.
"""

from __future__ import annotations

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# name -> fit_federated arguments (besides model and clients).
CASES = {
    # Plain FedAvg: the weighted sums are all-reduced; one client per round leaves
    # a replica without clients.
    "fedavg": dict(rounds=3, clients_per_round=5, local_epochs=2, batch_size=4),
    "one_client": dict(rounds=2, clients_per_round=1, batch_size=4),
    # Robust and private combiners gather every update.
    "median": dict(rounds=2, clients_per_round=5, batch_size=4, aggregator="median"),
    "mime_adam": dict(rounds=2, clients_per_round=4, batch_size=4, algorithm="mime",
                      server_optimizer="adam", server_learning_rate=0.05),
    "fedsgd_poisson": dict(rounds=3, clients_per_round=3, batch_size=4, algorithm="fedsgd",
                           client_sampling="poisson"),
}
SEED = 11
# Across worker processes, the two collectives: all-reduced sums (FedAvg, with
# federated evaluation divided among the workers) and gathered updates (median).
# The other cases take the same paths as under "mirrored" (each worker launch
# costs its TensorFlow start-up, so the launch test runs only these).
WORKER_CASES = ("fedavg", "median")


def make_problem(batchnorm: bool = False):
    """A compiled model with fixed initial weights, 8 training and 3 held-out clients."""
    from kerasfed._compat import keras  # noqa: PLC0415

    rng = np.random.default_rng(0)

    def clients(sizes, prefix):
        out = {}
        for i, n in enumerate(sizes):
            x = rng.normal(size=(n, 6)).astype(np.float32)
            y = ((x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)).astype(np.int64)
            out[f"{prefix}{i}"] = (x, y)
        return out

    train = clients((5, 9, 12, 4, 7, 10, 3, 8), "client_")
    held_out = clients((6, 11, 5), "eval_")
    layers = [keras.Input((6,)), keras.layers.Dense(5, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    model = keras.Sequential([*layers, keras.layers.Dense(3)])
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                       if "moving_variance" not in w.path else np.ones(w.shape, np.float32)
                       for w in model.weights] if hasattr(model.weights[0], "path") else
                      [rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                       if "moving_variance" not in w.name else np.ones(w.shape, np.float32)
                       for w in model.weights])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model, train, held_out


def run_case(name: str, strategy, **extra):
    from kerasfed.federated.fit import fit_federated  # noqa: PLC0415

    model, train, held_out = make_problem(batchnorm=name == "fedavg")
    history = fit_federated(model, train, evaluation_clients=held_out, engine="native",
                            seed=SEED, verbose=0, strategy=strategy, **CASES[name], **extra)
    return model.get_weights(), history


def _max_diff(a, b) -> float:
    return float(max(np.abs(u - v).max() for u, v in zip(a, b)))


def _history_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b), (sorted(a), sorted(b))
    worst = 0.0
    for key in a:
        if key == "round_seconds":
            continue
        x, y = np.asarray(a[key], float), np.asarray(b[key], float)
        worst = max(worst, float(np.nanmax(np.abs(x - y))) if x.size else 0.0)
    return worst


def mirrored(out_path: str, device: str = "CPU") -> None:
    import tensorflow as tf  # noqa: PLC0415

    from kerasfed.distributed.devices import use_logical_cpus  # noqa: PLC0415
    from kerasfed.federated.engines.native import engine as native_engine  # noqa: PLC0415

    if device == "CPU":
        use_logical_cpus(2)
    else:
        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) == 1:
            tf.config.set_logical_device_configuration(
                gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=2048)] * 2)
    out, one_process = {}, {}
    for name in CASES:
        one_process[name] = run_case(name, None)
        one, h1 = one_process[name]
        two, h2 = run_case(name, "mirrored")
        out[name] = {"weights": _max_diff(one, two), "history": _history_diff(h1.history, h2.history),
                     "replicas": h2.params.get("replicas"), "form": h2.params["engine_form"]}
    # Replicas of one process train side by side (threads) on accelerators; the
    # same code path, forced on the logical CPUs (one process: the run above).
    native_engine.side_by_side = lambda devices: True
    one, h1 = one_process["fedavg"]
    two, h2 = run_case("fedavg", "mirrored")
    out["fedavg_side_by_side"] = {"weights": _max_diff(one, two), "replicas": h2.params["replicas"],
                                  "history": _history_diff(h1.history, h2.history),
                                  "form": h2.params["engine_form"]}
    with open(out_path, "w") as f:
        json.dump(out, f)


def worker(out_dir: str, die_after_round: int | None) -> None:
    import kerasfed  # noqa: PLC0415
    from kerasfed._compat import keras  # noqa: PLC0415

    rank = int(os.environ["KERASFED_RANK"])
    first_attempt = os.environ.get("KERASFED_RESTART_COUNT", "0") == "0"
    user = os.path.join(out_dir, "user")
    os.makedirs(user, exist_ok=True)

    class CsvPath(keras.callbacks.Callback):
        """Where this worker's CSVLogger writes while it trains (chief: the user's path)."""

        def __init__(self, logger):
            super().__init__()
            self.logger, self.path = logger, None

        def on_train_begin(self, logs=None):
            self.path = os.path.abspath(self.logger.filename)

    class DieAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if rank == 1 and first_attempt and die_after_round == epoch + 1:
                os.kill(os.getpid(), signal.SIGKILL)

    saved = {}
    for name in WORKER_CASES:
        logger = keras.callbacks.CSVLogger(os.path.join(user, f"{name}.csv"))
        csv_path = CsvPath(logger)
        callbacks = [logger, csv_path, DieAfter()]
        weights, history = run_case(
            name, "multi_worker", callbacks=callbacks,
            checkpoint_dir=os.path.join(user, f"ckpt_{name}"))
        saved.update({f"{name}/{i}": w for i, w in enumerate(weights)})
        saved[f"{name}/history"] = np.array(json.dumps(history.history))
        saved[f"{name}/replicas"] = np.array(history.params["replicas"])
        saved[f"{name}/csv"] = np.array(csv_path.path)
        die_after_round = None  # only in the first case
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **saved)
    with open(os.path.join(out_dir, "pids.txt"), "a") as f:
        f.write(f"rank {rank} {os.getpid()}\n")
    print(f"worker {rank} done; kerasfed {kerasfed.__version__}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if sys.argv[1] in ("mirrored", "gpu"):
        mirrored(sys.argv[2], "CPU" if sys.argv[1] == "mirrored" else "GPU")
    else:
        die = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--die-after-round" else None
        worker(sys.argv[2], die)
