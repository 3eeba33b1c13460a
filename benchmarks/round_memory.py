"""Memory of one native round with large client updates: mean against robust combiners.

A model of 2.0M weights (7.7 MiB of update per client), clients of 4 examples,
chunks of ``--chunk`` clients (``max_parallel_clients``). Each contestant runs in
its own process: one traced warm-up round of 10 clients, then the peak RSS is
reset (``/proc/self/clear_refs``) and one round of ``--clients`` clients is
timed; printed: the peak resident memory above the round's start, the seconds,
and the clients' updates' total size for comparison.

  python3 dev.py bench --env latest round_memory [--clients 150] [--chunk 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FEATURES, HIDDEN, CLASSES = 1000, 2000, 10


def one(aggregator: str, clients: int, chunk: int) -> None:
    import numpy as np

    from many_clients import rss_mib  # (imports TensorFlow: the child's job only)

    import kerasfed
    from kerasfed._compat import keras

    rng = np.random.default_rng(0)
    data = {f"c{i}": (rng.random((4, FEATURES), np.float32),
                      rng.integers(0, CLASSES, 4).astype(np.int32)) for i in range(clients)}
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(HIDDEN, activation="relu"),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    run = dict(batch_size=4, engine="native", verbose=0, max_parallel_clients=chunk,
               aggregator=aggregator, seed=0)
    kerasfed.fit_federated(model, data, rounds=1, clients_per_round=10, **run)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS starts again from here
    start = rss_mib()
    began = time.perf_counter()
    kerasfed.fit_federated(model, data, rounds=1, clients_per_round=clients, **run)
    seconds = time.perf_counter() - began
    updates = clients * model.count_params() * 4 / 2**20
    print(f"{aggregator:14s} {clients:8d} {chunk:6d} {rss_mib(field='VmHWM') - start:12.0f} "
          f"{updates:14.0f} {seconds:8.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=150)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--aggregators", default="mean,trimmed_mean,median")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child's contestant
    args = parser.parse_args()
    if args.one:
        one(args.one, args.clients, args.chunk)
        return
    print(f"{'aggregator':14s} {'clients':>8s} {'chunk':>6s} {'peak MiB':>12s} "
          f"{'updates MiB':>14s} {'seconds':>8s}", flush=True)
    for aggregator in args.aggregators.split(","):
        subprocess.run([sys.executable, __file__, "--one", aggregator, "--clients",
                        str(args.clients), "--chunk", str(args.chunk)], check=True)


if __name__ == "__main__":
    main()
