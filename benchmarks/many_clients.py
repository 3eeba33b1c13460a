"""Many clients in flat memory: 10,000 on-disk clients, 100 per round.

MNIST (``--data-dir``; synthetic MNIST-shaped data otherwise) is split into
10,000 IID shards written with ``kerasfed.write_client_data`` (memory-mapped
``.npy``), then ``fit_federated`` trains the 2NN with 100 clients per round and
prints, per round, this process's resident memory (and, on the TFF engine, its
worker's) and the round time. The same rounds over only 1,000 of those clients
show that round time does not depend on the total number of clients.

  python3 dev.py bench many_clients --data-dir ../shared/data/mnist            # TFF + native
  python3 dev.py bench --env latest many_clients --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kerasfed  # noqa: E402
from kerasfed._compat import keras, tff_available  # noqa: E402


def rss_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children_rss_mib() -> float:
    me, total = os.getpid(), 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                    total += rss_mib(pid)
        except (OSError, ValueError, IndexError):
            pass
    return total


class MemoryLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        row = (epoch + 1, rss_mib(), children_rss_mib(), logs["round_seconds"])
        self.rows.append(row)
        if (epoch + 1) % 5 == 0 or epoch < 3:
            print(f"  round {row[0]:3d}: RSS {row[1]:7.0f} MiB, worker {row[2]:6.0f} MiB, "
                  f"{row[3]:.3f} s", flush=True)


def mnist(data_dir):
    if data_dir:
        from kerasfed.datasets import load_mnist

        (x, y), (xt, yt) = load_mnist(data_dir)
        return ((x.reshape(len(x), -1) / 255.0).astype("float32"), y.astype("int32"),
                (xt.reshape(len(xt), -1) / 255.0).astype("float32"), yt.astype("int32"))
    rng = np.random.default_rng(0)
    x = rng.random((60000, 784), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((784, 10)).astype("float32"), axis=1).astype("int32")
    return x, y, x[:10000], y[:10000]


def two_nn():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(200, activation="relu"),
                              keras.layers.Dense(200, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def run(directory, engine, rounds, test):
    log = MemoryLog()
    started = time.perf_counter()
    history = kerasfed.fit_federated(
        two_nn(), directory, rounds=rounds, clients_per_round=100, local_epochs=1,
        batch_size=10, engine=engine, seed=0, callbacks=[log], validation_data=test,
        evaluate_every=rounds, verbose=0)
    total = time.perf_counter() - started
    return log.rows, history.history["val_accuracy"][-1], total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--engines", default="native,tff" if tff_available() else "native")
    args = parser.parse_args()
    x, y, xt, yt = mnist(args.data_dir)
    order = np.random.default_rng(0).permutation(len(x))
    with tempfile.TemporaryDirectory() as tmp:
        shards = {f"c{i:05d}": (x[order[i::args.clients]], y[order[i::args.clients]])
                  for i in range(args.clients)}
        few = dict(list(shards.items())[: args.clients // 10])
        started = time.perf_counter()
        kerasfed.write_client_data(shards, os.path.join(tmp, "all"))
        kerasfed.write_client_data(few, os.path.join(tmp, "tenth"))
        del shards, few
        print(f"wrote {args.clients} clients ({len(x) // args.clients} examples each) in "
              f"{time.perf_counter() - started:.1f} s; RSS now {rss_mib():.0f} MiB")
        del x, y
        for engine in args.engines.split(","):
            for name, count in (("all", args.clients), ("tenth", args.clients // 10)):
                rounds = args.rounds if name == "all" else 10
                print(f"{engine} engine, {count} clients on disk, 100 per round, {rounds} rounds:")
                rows, accuracy, total = run(os.path.join(tmp, name), engine, rounds, (xt, yt))
                rss = [r[1] for r in rows]
                tail = rss[len(rss) // 5:]
                print(f"  -> median round {statistics.median(r[3] for r in rows[1:]):.3f} s, "
                      f"RSS first {rss[0]:.0f} / last {rss[-1]:.0f} MiB, growth after the "
                      f"first fifth {tail[-1] - tail[0]:+.0f} MiB, peak (VmHWM) "
                      f"{rss_mib(field='VmHWM'):.0f} MiB, test accuracy {accuracy:.3f}, "
                      f"total {total:.0f} s", flush=True)


if __name__ == "__main__":
    main()
