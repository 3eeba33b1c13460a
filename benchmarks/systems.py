"""Slow devices on a simulated clock: time to a target accuracy, synchronous or FedBuff.

Issue 17, section 5. The FedAvg paper's MNIST 2NN (784-200-200-10) on its
pathological non-IID split (sorted by label, two shards per client), with
log-normal client speeds (``kerasfed.LogNormal(median, sigma)`` examples per
second, one draw per client for the run), trained until a target test accuracy
five ways, all with the same seed (same initial weights, clients, batches and
speeds):

- ``sync``: synchronous FedAvg; each round waits for all its sampled clients.
- ``deadline-drop``: rounds end at ``--deadline`` seconds; late updates are lost
  (``Devices(deadline=..., stragglers="drop")``).
- ``deadline-partial``: the same deadline; a late client sends the local steps
  it finished (``stragglers="partial"``, FedProx's partial work).
- ``over-selection``: sample 30% more clients and keep the first
  ``--clients-per-round`` to finish (``over_selection=0.3``, Bonawitz et al. 2019).
- ``fedbuff``: ``kerasfed.FedBuff(buffer_size=K, concurrency=C)`` (Nguyen et al.
  2022): C clients always training, a server update every K arrivals, stale
  updates down-weighted by ``(1 + tau) ** -0.5``. One "round" is one server update.

For each: server updates (rounds) and simulated seconds to the target, the
client updates the server used and the client trainings it paid for (used plus
those lost as late, cancelled by over-selection or dropped out), and a plot of
test accuracy against simulated seconds.

  nice -n 19 python3 dev.py bench systems --data-dir ../shared/data \\
      --plot docs/systems_accuracy_vs_time.png
  python3 dev.py bench systems --data-dir ../shared/data --examples 60000 --target 0.95 \\
      --max-rounds 1000 --max-updates 2000 --concurrency 10,30,100

The defaults (30,000 examples, target 90%) take about 6 minutes on a busy 2-core
machine; the flags scale it up.

Needs matplotlib for the plot (the default environment, TF 2.14; ``--plot ''``
skips it). Runs on the native engine. Each variant's per-round curve goes to
``--out-dir`` as a CSV (written as the run goes), with a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
import time
import warnings

import numpy as np

import kerasfed
from kerasfed._compat import keras

VARIANTS = ["sync", "deadline-drop", "deadline-partial", "over-selection", "fedbuff"]

# Nguyen et al. (2022), "Federated Learning with Buffered Asynchronous
# Aggregation", AISTATS, abstract; quoted, not measured here.
PAPER_CLAIM = (
    'Nguyen et al. 2022 (AISTATS), abstract: "We empirically demonstrate that FedBuff is '
    '3.3x more efficient than synchronous FL and up to 2.5x more efficient than '
    'asynchronous FL". The earlier arXiv/FL-ICML version: "FedBuff converges up to 3.8x '
    'faster than previous proposals for synchronous FL (e.g., FedAvgM)". Their setting, as '
    "we read the paper: cross-device tasks (e.g. CelebA, Sent140, CIFAR-10), hundreds to "
    "1000 clients training at once, simulated client durations, tuned server optimizers "
    "(a FedAvgM baseline), and 'efficient' counting the client updates sent to reach a "
    "target accuracy. Not this benchmark's small MNIST federation.")


@dataclasses.dataclass
class Outcome:
    """One variant's run: its curve and what it took to reach the target."""

    variant: str
    accuracy: list[float]  # test accuracy after each round (server update)
    clock: list[float]  # simulated seconds since the start, after each round
    used: list[int]  # client updates aggregated, per round
    trained: list[int]  # client trainings paid for, per round
    staleness: list[float]  # FedBuff's mean staleness per update ([] for the others)
    wall: float  # wall-clock seconds of the whole run
    reached: int | None = None  # the first round at or above the target (1-based)

    def upto(self, values: list) -> list:
        return values[: self.reached or len(values)]


# -- data and model ---------------------------------------------------------------------------
def mnist_shards(data_dir: str, examples: int, num_clients: int, seed: int):
    """(clients, test): the first ``examples`` MNIST training examples (in the
    file's order) split into ``num_clients`` clients of two label shards each."""
    from kerasfed.datasets import load_mnist

    path = os.path.join(data_dir, "mnist")
    if not os.path.exists(os.path.join(path, "train-images-idx3-ubyte.gz")):
        sys.exit(f"systems: --data-dir {data_dir!r} lacks mnist/train-images-idx3-ubyte.gz; "
                 f"pass the shared data folder (e.g. ../shared/data, see its README.md).")
    (x, y), (xt, yt) = load_mnist(path)
    x = (x[:examples].reshape(-1, 784) / 255.0).astype("float32")
    xt = (xt.reshape(-1, 784) / 255.0).astype("float32")
    clients = kerasfed.partition(x, y[:examples].astype("int32"), num_clients=num_clients,
                                 scheme="shards", shards_per_client=2, seed=seed)
    return clients, (xt, yt.astype("int32"))


def two_nn(lr: float, seed: int):
    """The FedAvg paper's 2NN: two hidden ReLU layers of 200 units, client SGD."""
    keras.utils.set_random_seed(seed)  # the same initial weights for every variant
    layers = keras.layers
    model = keras.Sequential([keras.Input((784,)), layers.Dense(200, activation="relu"),
                              layers.Dense(200, activation="relu"),
                              layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


# -- the variants -----------------------------------------------------------------------------
def variant_arguments(variant: str, args, concurrency: int | None = None) -> dict:
    """``fit_federated``'s keyword arguments that make ``variant`` (FedBuff: with
    ``concurrency`` clients training at once)."""
    speed = kerasfed.LogNormal(median=args.speed_median, sigma=args.speed_sigma)
    common = dict(speed=speed, bandwidth=args.bandwidth, dropout=args.dropout)
    if variant == "fedbuff":
        return dict(devices=kerasfed.Devices(**common), clients_per_round=None,
                    algorithm=kerasfed.FedBuff(buffer_size=args.buffer_size,
                                               concurrency=concurrency))
    devices = {
        "sync": kerasfed.Devices(**common),
        "deadline-drop": kerasfed.Devices(**common, deadline=args.deadline, stragglers="drop"),
        "deadline-partial": kerasfed.Devices(**common, deadline=args.deadline,
                                             stragglers="partial"),
        "over-selection": kerasfed.Devices(**common, over_selection=args.over_selection),
    }[variant]
    return dict(devices=devices, clients_per_round=args.clients_per_round, algorithm="fedavg")


class StopAtTarget(keras.callbacks.Callback):
    """Stops after the first round at or above ``target``; appends each round to a CSV."""

    def __init__(self, target: float, csv_path: str):
        super().__init__()
        self.target, self.csv_path, self.reached = target, csv_path, None
        with open(csv_path, "w") as f:
            f.write("round,val_accuracy,simulated_seconds_total\n")

    def on_epoch_end(self, epoch, logs=None):
        accuracy = logs.get("val_accuracy")
        if accuracy is None:  # not an evaluated round
            return
        with open(self.csv_path, "a") as f:
            f.write(f"{epoch + 1},{accuracy:.5f},{logs.get('simulated_seconds_total', 0):.2f}\n")
        if (epoch + 1) % 25 == 0:
            print(f"    round {epoch + 1}: accuracy {accuracy:.4f}", file=sys.stderr, flush=True)
        if accuracy >= self.target and self.reached is None:
            self.reached = epoch + 1
            self.model.stop_training = True


def run_variant(variant: str, clients, test, args, concurrency: int | None = None) -> Outcome:
    model = two_nn(args.lr, args.seed)
    max_rounds = args.max_updates if variant == "fedbuff" else args.max_rounds
    name = f"fedbuff C={concurrency}" if variant == "fedbuff" else variant
    stop = StopAtTarget(args.target, os.path.join(args.out_dir,
                                                  f"{name.replace(' C=', '-C')}.csv"))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = kerasfed.fit_federated(
            model, clients, rounds=max_rounds, local_epochs=args.local_epochs,
            batch_size=args.batch_size, validation_data=test, validation_batch_size=1000,
            engine="native", seed=args.seed, callbacks=[stop], verbose=0,
            **variant_arguments(variant, args, concurrency))
    wall = time.perf_counter() - started
    h = history.history
    used = [len(p) for p in history.participants]
    lost = np.add(h.get("dropped", [0] * len(used)), h.get("stragglers", [0] * len(used)))
    return Outcome(variant=name, accuracy=list(h["val_accuracy"]),
                   clock=list(h["simulated_seconds_total"]), used=used,
                   trained=[u + int(x) for u, x in zip(used, lost)],
                   staleness=list(h.get("staleness_mean", [])), wall=wall, reached=stop.reached)


# -- report -----------------------------------------------------------------------------------
def summary(outcome: Outcome, baseline: Outcome | None) -> dict:
    reached = outcome.reached is not None
    seconds = outcome.clock[outcome.reached - 1] if reached else None
    base = baseline.clock[baseline.reached - 1] if baseline and baseline.reached else None
    return {
        "variant": outcome.variant, "reached": reached,
        "rounds": outcome.reached if reached else len(outcome.accuracy),
        "simulated_seconds": seconds if reached else outcome.clock[-1],
        "speedup_vs_sync": base / seconds if reached and base else None,
        "updates_used": int(sum(outcome.upto(outcome.used))),
        "clients_trained": int(sum(outcome.upto(outcome.trained))),
        "best_accuracy": float(max(outcome.accuracy)),
        "mean_staleness": float(np.mean(outcome.upto(outcome.staleness)))
        if outcome.staleness else None,
        "wall_seconds": outcome.wall,
    }


def print_table(rows: list[dict], args) -> None:
    print(f"\nTime to {args.target:.0%} test accuracy in simulated seconds ('>': not reached "
          f"in time)")
    print(f"{'variant':17s} {'rounds':>6s} {'sim. s':>9s} {'vs sync':>7s} {'used':>6s} "
          f"{'trained':>7s} {'best acc':>8s} {'stale':>5s} {'wall s':>6s}")
    for r in rows:
        mark = "" if r["reached"] else ">"
        speedup = f"{r['speedup_vs_sync']:.2f}x" if r["speedup_vs_sync"] else "-"
        stale = f"{r['mean_staleness']:.2f}" if r["mean_staleness"] is not None else "-"
        print(f"{r['variant']:17s} {mark + str(r['rounds']):>6s} "
              f"{mark + format(r['simulated_seconds'], '.0f'):>9s} {speedup:>7s} "
              f"{r['updates_used']:6d} {r['clients_trained']:7d} {r['best_accuracy']:8.4f} "
              f"{stale:>5s} {r['wall_seconds']:6.0f}")
    print("rounds: server updates (FedBuff: one per buffer of K); used: client updates\n"
          "aggregated; trained: client trainings paid for (used + lost: late, cancelled\n"
          "by over-selection, dropped out); stale: FedBuff's mean staleness (in server\n"
          "updates); wall s: this machine's seconds for the run, compiling included.")


def print_claim(rows: list[dict], args) -> None:
    print("\nThe FedBuff paper's claim (their setting, not ours):")
    print(textwrap.fill(PAPER_CLAIM, 80, initial_indent="  ", subsequent_indent="  "))
    sync = next((r for r in rows if r["variant"] == "sync"), None)
    fedbuffs = [r for r in rows if r["variant"].startswith("fedbuff")]
    if not (sync and fedbuffs):
        return
    print(f"Measured here (MNIST 2NN, non-IID shards, log-normal speeds), against\n"
          f"sync FedAvg ({args.clients_per_round} clients training at a time):")
    for fedbuff in fedbuffs:
        if not (sync["reached"] and fedbuff["reached"]):
            print(f"  {fedbuff['variant']}: not both reached the target; see the table")
            continue
        time_ratio = sync["simulated_seconds"] / fedbuff["simulated_seconds"]
        trips_ratio = fedbuff["updates_used"] / sync["updates_used"]
        print(f"  {fedbuff['variant']}: {fedbuff['simulated_seconds']:.0f} vs "
              f"{sync['simulated_seconds']:.0f} simulated s to the target "
              f"({time_ratio:.2f}x {'faster' if time_ratio >= 1 else 'slower'});\n"
              f"    {fedbuff['updates_used']} vs {sync['updates_used']} client updates used "
              f"({trips_ratio:.2f}x as many as sync)")


def plot(outcomes: list[Outcome], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for outcome in outcomes:
        label = outcome.variant.replace("fedbuff", f"FedBuff K={args.buffer_size},")
        ax.plot(outcome.clock, outcome.accuracy, lw=1.2, label=label)
    ax.axhline(args.target, color="k", ls="--", lw=0.8, label=f"target {args.target:.0%}")
    ax.set_xscale("log")
    ax.set_xlabel("simulated seconds (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(max(0.0, args.target - 0.3), 1.0)
    ax.set_title(f"MNIST 2NN, non-IID shards, {args.num_clients} clients, speeds "
                 f"LogNormal(median={args.speed_median:g}, sigma={args.speed_sigma:g}) ex/s",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    fig.savefig(args.plot, dpi=100, bbox_inches="tight")
    print(f"plot: {args.plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the shared data folder, with mnist/")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {VARIANTS}")
    parser.add_argument("--examples", type=int, default=30000,
                        help="MNIST training examples used (default 30000; the paper: 60000)")
    parser.add_argument("--num-clients", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1, help="client SGD learning rate")
    parser.add_argument("--target", type=float, default=0.90,
                        help="target test accuracy (default 0.90)")
    parser.add_argument("--max-rounds", type=int, default=150,
                        help="most rounds of a synchronous variant (default 150)")
    parser.add_argument("--max-updates", type=int, default=300,
                        help="most FedBuff server updates (default 300)")
    parser.add_argument("--speed-median", type=float, default=100.0,
                        help="median client speed, examples per second (default 100)")
    parser.add_argument("--speed-sigma", type=float, default=1.0,
                        help="sigma of the log of the speeds (default 1.0)")
    parser.add_argument("--bandwidth", type=float, default=None,
                        help="bytes per second to and from each client (default: no "
                             "communication time)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="probability a client drops out (default 0)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="round deadline in simulated seconds (default: twice the "
                             "median client's time for its local work)")
    parser.add_argument("--over-selection", type=float, default=0.3)
    parser.add_argument("--buffer-size", type=int, default=10, help="FedBuff's K (default 10)")
    parser.add_argument("--concurrency", default="30",
                        help="FedBuff's C, or several comma-separated (one run each; "
                             "default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=os.path.join("out", "systems"),
                        help="per-variant CSV curves and summary.json (default out/systems)")
    parser.add_argument("--plot", default=os.path.join("out", "systems",
                                                       "accuracy_vs_time.png"),
                        help="PNG of test accuracy against simulated time ('' for none)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"systems: unknown variants {unknown}; choose from {VARIANTS}")
    clients, test = mnist_shards(args.data_dir, args.examples, args.num_clients, args.seed)
    per_client = args.examples // args.num_clients
    if args.deadline is None:
        args.deadline = 2.0 * per_client * args.local_epochs / args.speed_median
    os.makedirs(args.out_dir, exist_ok=True)
    import tensorflow as tf

    from kerasfed._compat import KERAS_3

    print(f"kerasfed systems benchmark: TF {tf.__version__} (Keras {3 if KERAS_3 else 2}), "
          f"native engine, seed {args.seed}")
    print(textwrap.fill(
          f"MNIST 2NN, {args.examples} examples in {args.num_clients} clients of 2 label "
          f"shards ({per_client} each), E={args.local_epochs}, B={args.batch_size}, "
          f"SGD lr {args.lr}; {args.clients_per_round} clients per round; speeds "
          f"LogNormal(median={args.speed_median:g}, sigma={args.speed_sigma:g}) ex/s "
          f"(median client {per_client * args.local_epochs / args.speed_median:g} s); "
          f"deadline {args.deadline:g} s; over-selection {args.over_selection:g}; FedBuff "
          f"K={args.buffer_size}, C={args.concurrency}; bandwidth "
          f"{args.bandwidth or 'unlimited'}; dropout {args.dropout:g}", 80))
    runs = [(v, int(c)) for v in variants
            for c in (args.concurrency.split(",") if v == "fedbuff" else [0])]
    outcomes = []
    for variant, concurrency in runs:
        print(f"  {variant}{f' C={concurrency}' if concurrency else ''} ...", flush=True)
        outcomes.append(run_variant(variant, clients, test, args, concurrency or None))
        o = outcomes[-1]
        print(f"    {'reached' if o.reached else 'did not reach'} {args.target:.0%} after "
              f"{o.reached or len(o.accuracy)} rounds, {o.wall:.0f} s wall", flush=True)
    baseline = next((o for o in outcomes if o.variant == "sync"), None)
    rows = [summary(o, baseline) for o in outcomes]
    print_table(rows, args)
    print_claim(rows, args)
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump({"settings": vars(args), "rows": rows}, f, indent=1)
    if args.plot:
        plot(outcomes, args)


if __name__ == "__main__":
    main()
