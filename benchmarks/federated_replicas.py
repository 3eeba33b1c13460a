"""Federated rounds spread over tf.distribute replicas: seconds per round, side by side.

The same FedAvg work (the paper's MNIST 2NN or CNN, IID clients, 20 per round,
E=1, B=10) runs in fresh processes, one per contestant:

  one         strategy=None: one process, one replica
  one/2       the same with max_parallel_clients at half the round: how far float32
              rounding alone moves the weights (ReLU kinks make 1e-8 grow over rounds)
  mirrored    strategy="mirrored" over two logical CPUs of one process
  workers     strategy="multi_worker": two worker processes on 127.0.0.1
              started by `kerasfed launch --workers 2`
  gpu         strategy="mirrored" over the local GPUs (skipped without one)

Each prints its median round time (the first round, which compiles, left out)
and its weights; the table gives the ratio to `one` and the largest weight
difference from it after round 1 and at the end (the result must not depend on
the replicas beyond float32 rounding, which ReLU kinks amplify over rounds: see
`one/2`), and the last round's training loss.

  python3 dev.py bench federated_replicas [--model cnn] [--data-dir ../shared/data/mnist]
  python3 dev.py bench --env latest federated_replicas
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build(model_name: str):
    from kerasfed._compat import keras

    keras.utils.set_random_seed(0)
    if model_name == "cnn":
        layers = [keras.Input((28, 28, 1)),
                  keras.layers.Conv2D(32, 5, padding="same", activation="relu"),
                  keras.layers.MaxPooling2D(2),
                  keras.layers.Conv2D(64, 5, padding="same", activation="relu"),
                  keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                  keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)]
    else:
        layers = [keras.Input((784,)), keras.layers.Dense(200, activation="relu"),
                  keras.layers.Dense(200, activation="relu"), keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def clients(model_name: str, data_dir: str | None, num_clients: int, per_client: int):
    if data_dir:
        from kerasfed.datasets import load_mnist

        (x, y), _ = load_mnist(data_dir)
        x = (x[: num_clients * per_client] / 255.0).astype("float32")
        y = y[: num_clients * per_client].astype("int32")
    else:  # MNIST-shaped noise: the speed is the same
        rng = np.random.default_rng(0)
        x = rng.random((num_clients * per_client, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, len(x)).astype("int32")
    x = x.reshape(len(x), 28, 28, 1) if model_name == "cnn" else x.reshape(len(x), -1)
    return {f"c{i:03d}": (x[i::num_clients], y[i::num_clients]) for i in range(num_clients)}


def contestant(args) -> None:
    """One contestant's training, in this process (or this worker)."""
    if args.run == "mirrored":
        from kerasfed.distributed.devices import use_logical_cpus

        use_logical_cpus(2)
    import kerasfed
    from kerasfed._compat import keras

    strategy = {"one": None, "one/2": None, "mirrored": "mirrored", "gpu": "mirrored",
                "workers": "multi_worker"}[args.run]
    chunk = args.per_round // 2 if args.run == "one/2" else None
    times: list[float] = []
    first_weights: list = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)
            if epoch == 0:
                first_weights.extend(self.model.get_weights())

    model = build(args.model)
    history = kerasfed.fit_federated(
        model, clients(args.model, args.data_dir, args.clients, args.per_client),
        rounds=args.rounds, clients_per_round=args.per_round, batch_size=10, seed=0,
        engine="native", strategy=strategy, max_parallel_clients=chunk, callbacks=[Clock()],
        verbose=0)
    if os.environ.get("KERASFED_RANK", "0") != "0":
        return
    np.savez(args.out, *model.get_weights(), *first_weights)
    print("RESULT " + json.dumps({"seconds": statistics.median(times[1:]),
                                  "first": times[0], "loss": history.history["loss"][-1],
                                  "form": history.params["engine_form"]}), flush=True)


def run_contestant(name: str, args, out: str) -> dict | None:
    if name == "gpu":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
    me = [str(Path(__file__).resolve()), "--run", name, "--out", out, "--model", args.model,
          "--rounds", str(args.rounds), "--clients", str(args.clients),
          "--per-client", str(args.per_client), "--per-round", str(args.per_round)]
    if args.data_dir:
        me += ["--data-dir", args.data_dir]
    command = ([sys.executable, "-m", "kerasfed", "launch", "--workers", "2", *me]
               if name == "workers" else [sys.executable, *me])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if name != "gpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    run = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in run.stdout.splitlines() if "RESULT " in line]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads(lines[0].split("RESULT ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["2nn", "cnn"], default="2nn")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-client", type=int, default=600)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        contestant(args)
        return

    import tensorflow as tf

    print(f"federated_replicas: {args.model}, {args.per_round} of {args.clients} clients x "
          f"{args.per_client} examples per round, E=1, B=10, {args.rounds} rounds; "
          f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        results, weights = {}, {}
        for name in ("one", "one/2", "mirrored", "workers", "gpu"):
            out = os.path.join(tmp, f"{name.replace('/', '_')}.npz")
            results[name] = run_contestant(name, args, out)
            if results[name] is not None:
                saved = np.load(out)
                weights[name] = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        base = results["one"]["seconds"]
        print(f"{'contestant':<10} {'s/round':>8} {'vs one':>7} {'|dw| r1':>8} {'|dw| end':>9} "
              f"{'loss':>7}  how")
        for name, r in results.items():
            if r is None:
                print(f"{name:<10} {'skipped: no GPU here':>28}")
                continue
            half = len(weights["one"]) // 2  # final weights, then round 1's
            gaps = [np.abs(a - b).max() for a, b in zip(weights[name], weights["one"])]
            end, first = float(max(gaps[:half])), float(max(gaps[half:]))
            print(f"{name:<10} {r['seconds']:8.3f} {r['seconds'] / base:6.2f}x {first:8.1e} "
                  f"{end:9.1e} {r['loss']:7.4f}  {r['form']}")


if __name__ == "__main__":
    main()
