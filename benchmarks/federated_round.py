#!/usr/bin/env python3
"""Seconds per FedAvg round: kerasfed.fit_federated vs TFF written directly vs a fused loop.

The same work for all three (the FedAvg paper's setting, McMahan et al. 2017): 20
clients of 300 examples, 1 local epoch, batch 20, client SGD lr 0.1, server lr 1.0,
on the paper's CNN and its 2NN (200-200). Each contestant runs in its own child
process (so one's TFF worker or graph state cannot slow another), one after the
other, and reports the seconds of every round and the seconds from the call to the
end of round 1. Printed: median seconds per round (round 1 excluded: it traces),
ratios, and time to first round.

  python3 dev.py bench federated_round [--data-dir ../shared/data/mnist] [--rounds 8]

Without --data-dir the examples are synthetic MNIST-shaped arrays: the time per
round does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import signal
import subprocess
import sys
import tempfile
import time

NUM_CLIENTS, CLIENT_SIZE, BATCH, CLIENT_LR = 20, 300, 20, 0.1


def build_model(name: str):
    from kerasfed._compat import keras

    layers = keras.layers
    if name == "cnn":
        body = [
            layers.Reshape((28, 28, 1)),
            layers.Conv2D(32, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
        ]
    else:
        body = [layers.Flatten(), layers.Dense(200, activation="relu"), layers.Dense(200, activation="relu")]
    model = keras.Sequential([keras.Input((28, 28)), *body, layers.Dense(10, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.SGD(CLIENT_LR),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def client_arrays(data_dir: str | None):
    import numpy as np

    n = NUM_CLIENTS * CLIENT_SIZE
    if data_dir:
        from kerasfed.datasets import load_mnist

        (x, y), _ = load_mnist(data_dir)
        x, y = x[:n].astype("float32") / 255.0, y[:n].astype("int32")
    else:
        rng = np.random.default_rng(0)
        x = rng.random((n, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, n).astype("int32")
    return {f"c{i:02d}": (x[i::NUM_CLIENTS], y[i::NUM_CLIENTS]) for i in range(NUM_CLIENTS)}


def run_kerasfed(model_name, clients, rounds):
    import tensorflow_federated  # noqa: F401  (imported before the clock, as for tff_direct)

    import kerasfed
    from kerasfed._compat import keras

    ends = []

    class RoundEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())

    start = time.perf_counter()
    kerasfed.fit_federated(
        build_model(model_name), clients, rounds=rounds, local_epochs=1,
        batch_size=BATCH, seed=0, verbose=0, callbacks=[RoundEnd()],
    )
    return start, ends


def _datasets(clients):
    import tensorflow as tf

    return [
        tf.data.Dataset.from_tensor_slices(xy).batch(BATCH) for xy in clients.values()
    ]


def run_tff_direct(model_name, clients, rounds):
    """FedAvg as a TFF user writes it by hand, on TFF's default execution context."""
    import tensorflow_federated as tff

    start = time.perf_counter()  # after the TFF import, as for kerasfed
    datasets = _datasets(clients)
    spec = datasets[0].element_spec
    from kerasfed._compat import keras

    def model_fn():
        model = build_model(model_name)
        keras_model = keras.models.clone_model(model)  # from_keras_model refuses compiled models
        return tff.learning.models.from_keras_model(
            keras_model, loss=keras.losses.SparseCategoricalCrossentropy(),
            input_spec=spec, metrics=[keras.metrics.SparseCategoricalAccuracy()],
        )

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(CLIENT_LR),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0),
    )
    state = process.initialize()
    ends = []
    for _ in range(rounds):
        state = process.next(state, datasets).state
        ends.append(time.perf_counter())
    return start, ends


def run_fused_loop(model_name, clients, rounds):
    """The floor: local SGD in one tf.function per client, clients one after another."""
    import tensorflow as tf
    from kerasfed._compat import keras

    start = time.perf_counter()
    model = build_model(model_name)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    datasets = _datasets(clients)
    weights = [tf.Variable(v) for v in model.trainable_variables]
    sizes = [float(len(xy[1])) for xy in clients.values()]

    @tf.function
    def client_delta(dataset):
        for var, glob in zip(model.trainable_variables, weights):
            var.assign(glob)
        for x, y in dataset:
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            for var, grad in zip(model.trainable_variables, grads):
                var.assign_sub(CLIENT_LR * grad)
        return [var - glob for var, glob in zip(model.trainable_variables, weights)]

    ends = []
    total = sum(sizes)
    for _ in range(rounds):
        mean_delta = None
        for dataset, size in zip(datasets, sizes):
            delta = [d * (size / total) for d in client_delta(dataset)]
            mean_delta = delta if mean_delta is None else [a + b for a, b in zip(mean_delta, delta)]
        for glob, d in zip(weights, mean_delta):
            glob.assign_add(d)
        ends.append(time.perf_counter())
    return start, ends


CONTESTANTS = {"kerasfed": run_kerasfed, "tff_direct": run_tff_direct, "fused_loop": run_fused_loop}


def child(args) -> None:
    clients = client_arrays(args.data_dir)
    start, ends = CONTESTANTS[args.child](args.model, clients, args.rounds)
    rounds = [b - a for a, b in zip(ends, ends[1:])]
    with open(args.result, "w") as f:
        json.dump({"first_round_s": ends[0] - start, "round_s": rounds}, f)


def run_child(name, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, __file__, "--child", name, "--model", args.model_name,
               "--rounds", str(args.rounds), "--result", result]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        # Own session: TFF's default context leaves its worker process running after
        # Python exits, holding our stdout (see ../shared/NOTES.md); the result goes
        # through a file, and killing the group ends the worker.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        try:
            code = proc.wait()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if code != 0:
            raise SystemExit(f"{name} on {args.model_name} failed with exit code {code}")
        with open(result) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with MNIST IDX files")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--models", default="cnn,2nn")
    parser.add_argument("--child", choices=sorted(CONTESTANTS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f"FedAvg, {NUM_CLIENTS} clients x {CLIENT_SIZE} examples, E=1, B={BATCH}, "
          f"{args.rounds} rounds; median seconds per round after round 1; "
          f"data: {args.data_dir or 'synthetic'}")
    print(f"{'model':6} {'contestant':11} {'s/round':>8} {'vs TFF':>7} {'vs fused':>8} {'call->round 1 s':>16}")
    for model_name in args.models.split(","):
        args.model_name = model_name
        results = {name: run_child(name, args) for name in CONTESTANTS}
        med = {name: statistics.median(r["round_s"]) for name, r in results.items()}
        for name, r in results.items():
            print(f"{model_name:6} {name:11} {med[name]:8.3f} {med[name] / med['tff_direct']:7.2f} "
                  f"{med[name] / med['fused_loop']:8.2f} {r['first_round_s']:16.2f}", flush=True)


if __name__ == "__main__":
    main()
