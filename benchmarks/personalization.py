"""Personalization side by side: FedAvg, FedAvg + FineTune, FedPer, FedBN and Ditto.

Two federations whose clients each have a train part and a test part under the
same client id, so that a client's own (personal) model can be tested on its own
held-out examples:

- ``femnist``: the LEAF FEMNIST writers (natural clients, 62 classes), each
  writer's LEAF train rows for training and its test rows for testing (writers
  with both; pixels ``(255 - x) / 255``).
- ``mnist-shards``: the FedAvg paper's pathological non-IID MNIST (sorted by
  label, 200 shards of 300, 2 shards per client, 100 clients), each client's
  examples split 80/20 into train and test with ``--seed``.

Each method trains with the same seed, rounds, clients per round and learning
rate, and is evaluated after its last round on every client's test part:

- ``fedavg``: the global model (pooled accuracy, and the mean and 10th
  percentile of the per-client accuracies);
- ``fedavg+finetune``: the same run with ``personalization=FineTune(epochs=...)``:
  each client's test part is halved, the global model fine-tuned on one half and
  tested on the other (``personalized``), beside the global model on that half
  (``global``);
- ``fedper``: ``personal_layers`` = the output Dense layer (Arivazhagan et al. 2019);
- ``fedavg-bn`` / ``fedbn``: a model with BatchNormalization after each hidden
  layer, averaged as usual / with ``personal_layers="batch_norm"`` (Li et al. 2021);
- ``ditto``: ``algorithm=Ditto(lam=...)``, once per ``--ditto-lams`` (Li et al. 2021).

For the personal methods, ``personalized`` is each client's own weights on its
test part and ``global`` is the global model on the same part.

  python3 dev.py bench --env latest personalization --data-dir ../shared/data
  python3 dev.py bench --env latest personalization --data-dir ../shared/data --quick

FedBN's model uses BatchNormalization momentum 0.9 (``--bn-momentum``; PyTorch's
default 0.1 in Keras's convention): with Keras's default 0.99 the moving statistics,
which FedBN never averages, move 1% per local step, so after a client's few
dozen steps they are still mostly the initial ones and the personal model tests
badly (FEMNIST: 0.40 against FedAvg's 0.71 in a run at 0.99).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import kerasfed
from kerasfed._compat import keras

FEMNIST_FILE = os.path.join("femnist_leaf_subset", "femnist_leaf_niid05_subset.npz")
MNIST_FILES = [os.path.join("mnist", f"{part}-ubyte.gz")
               for part in ("train-images-idx3", "train-labels-idx1")]
METHODS = ["fedavg+finetune", "fedper", "fedavg-bn", "fedbn", "ditto"]

# What each paper claims, qualitatively, and how to read our numbers against it.
CLAIMS = {
    "fedavg+finetune": "fine-tuning the global model is a strong baseline "
                       "(Wang et al. 2019; Yu et al. 2020): personalized > global",
    "fedper": "a personal head helps on non-IID clients (Arivazhagan et al. 2019): "
              "personalized > FedAvg's global",
    "fedbn": "local BatchNorm helps under feature shift (Li et al. 2021), i.e. on "
             "FEMNIST writers: personalized > fedavg-bn's global",
    "ditto": "higher mean and better worst-clients (p10) accuracy than FedAvg "
             "(Li et al. 2021)",
}


# -- data -------------------------------------------------------------------------------------
def check_data_dir(data_dir: str, datasets: list[str]) -> None:
    """Exits with a message naming the missing files, if any."""
    needed = ([FEMNIST_FILE] if "femnist" in datasets else []) + (
        MNIST_FILES if "mnist-shards" in datasets else [])
    missing = [p for p in needed if not os.path.exists(os.path.join(data_dir, p))]
    if missing:
        sys.exit(f"personalization: --data-dir {data_dir!r} lacks {missing}. Expected the "
                 f"shared data folder (e.g. ../shared/data) holding {needed}; see "
                 f"../shared/data/README.md for how to get FEMNIST (LEAF) and MNIST.")


def femnist(data_dir: str):
    """(train clients, test clients, classes): LEAF writers with both train and test rows."""
    with np.load(os.path.join(data_dir, FEMNIST_FILE)) as f:
        x, y, writer, split = f["x"], f["y"], f["writer"], f["split"]
    x = ((255 - x.reshape(len(x), -1)) / 255.0).astype("float32")
    y = y.astype("int32")
    train, test = {}, {}
    for w in np.unique(writer[split == "train"]):
        tr = np.flatnonzero((writer == w) & (split == "train"))
        te = np.flatnonzero((writer == w) & (split == "test"))
        if len(te):
            train[str(w)], test[str(w)] = (x[tr], y[tr]), (x[te], y[te])
    return train, test, 62


def mnist_shards(data_dir: str, seed: int):
    """(train clients, test clients, classes): two label shards per client, 80/20 per client."""
    from kerasfed.datasets import load_mnist

    (x, y), _ = load_mnist(os.path.join(data_dir, "mnist"))
    x = (x.reshape(len(x), -1) / 255.0).astype("float32")
    clients = kerasfed.partition(x, y.astype("int32"), num_clients=100, scheme="shards",
                                 shards_per_client=2, seed=seed)
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for cid, (cx, cy) in clients.items():
        order = rng.permutation(len(cx))
        cut = int(round(0.8 * len(cx)))
        train[cid] = (cx[order[:cut]], cy[order[:cut]])
        test[cid] = (cx[order[cut:]], cy[order[cut:]])
    return train, test, 10


# -- models -----------------------------------------------------------------------------------
def mlp(classes: int, lr: float, seed: int, batch_norm: float | None = None):
    """The FedAvg paper's 2NN (784-200-200); with ``batch_norm`` (a momentum), with
    BatchNormalization after each hidden layer."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((784,))]
    for i in (1, 2):
        layers.append(keras.layers.Dense(200, name=f"hidden{i}",
                                         activation=None if batch_norm else "relu"))
        if batch_norm:
            layers += [keras.layers.BatchNormalization(momentum=batch_norm, name=f"bn{i}"),
                       keras.layers.Activation("relu")]
    layers.append(keras.layers.Dense(classes, activation="softmax", name="head"))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


# -- one method -------------------------------------------------------------------------------
def run_method(method: str, train, test, classes: int, args) -> list[dict]:
    """Trains one method; returns its table rows (one per model evaluated)."""
    kwargs = {}
    if method == "fedavg+finetune":
        kwargs["personalization"] = kerasfed.FineTune(epochs=args.finetune_epochs)
    elif method == "fedper":
        kwargs["personal_layers"] = ["head"]
    elif method == "fedbn":
        kwargs["personal_layers"] = "batch_norm"
    elif method.startswith("ditto"):
        kwargs["algorithm"] = kerasfed.Ditto(lam=float(method.split("=")[1]))
    model = mlp(classes, args.lr, args.seed,
                batch_norm=args.bn_momentum if method in ("fedbn", "fedavg-bn") else None)
    start = time.perf_counter()
    history = kerasfed.fit_federated(
        model, train, rounds=args.rounds, clients_per_round=args.clients_per_round,
        batch_size=args.batch_size, local_epochs=1, evaluation_clients=test,
        evaluate_every=args.rounds, engine="native", seed=args.seed, verbose=0, **kwargs)
    seconds = time.perf_counter() - start
    h = history.history
    last = history.client_metrics[-1]
    # A client that never trained is evaluated with the initial personal weights.
    trained = set().union(*map(set, history.participants))
    untrained = sum(cid not in trained for cid in last)

    def row(name: str, kind: str, mean_key: str, values: list[float]) -> dict:
        # Cross-check: History's mean over clients is the mean of client_metrics' values
        # (fed_eval_accuracy is pooled over examples instead, so it is not compared).
        assert np.isclose(np.mean(values), h[mean_key][-1]) or mean_key == "fed_eval_accuracy"
        return {"method": name, "model": kind, "mean": float(np.mean(values)),
                "p10": float(np.percentile(values, 10)), "min": float(np.min(values)),
                "pooled": h["fed_eval_accuracy"][-1], "seconds": seconds,
                "untrained": untrained}

    per_client_global = [m["accuracy"] for m in last.values()]
    if method == "fedavg-bn":
        return [row(method, "global", "fed_eval_accuracy", per_client_global)]
    if method == "fedavg+finetune":
        base = [m["baseline_accuracy"] for m in last.values()]
        own = [m["personalized_accuracy"] for m in last.values()]
        return [row("fedavg", "global", "fed_eval_accuracy", per_client_global),
                row(method, "global, test half", "fed_eval_baseline_accuracy", base),
                row(method, "fine-tuned, test half", "fed_eval_personalized_accuracy", own)]
    base = [m["baseline_accuracy"] for m in last.values()]
    own = [m["personalized_accuracy"] for m in last.values()]
    return [row(method, "global", "fed_eval_baseline_accuracy", base),
            row(method, "personalized", "fed_eval_personalized_accuracy", own)]


# -- report -----------------------------------------------------------------------------------
def print_table(dataset: str, rows: list[dict], args, train, test) -> None:
    sizes = [len(y) for _, y in test.values()]
    print(f"\n## {dataset}: {len(train)} clients, test parts of {min(sizes)}-{max(sizes)} "
          f"examples (median {int(np.median(sizes))}); {args.rounds} rounds, "
          f"{args.clients_per_round} clients/round, E=1, B={args.batch_size}, SGD lr {args.lr}")
    print("| method | model evaluated | mean per-client acc | p10 | min | pooled acc (global) "
          "| clients never trained | rounds | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['model']} | {r['mean']:.4f} | {r['p10']:.4f} | "
              f"{r['min']:.4f} | {r['pooled']:.4f} | {r['untrained']} | {args.rounds} | "
              f"{r['seconds']:.1f} |")


def print_claims(dataset: str, rows: list[dict]) -> None:
    """Each paper's claim beside what this run measured."""
    get = {(r["method"], r["model"]): r for r in rows}
    fedavg = get.get(("fedavg", "global"))
    checks = []
    if ("fedavg+finetune", "fine-tuned, test half") in get:
        own = get[("fedavg+finetune", "fine-tuned, test half")]
        base = get[("fedavg+finetune", "global, test half")]
        checks.append(("fedavg+finetune", own, base, "the global model on the same halves"))
    if ("fedper", "personalized") in get and fedavg:
        checks.append(("fedper", get[("fedper", "personalized")], fedavg, "FedAvg's global"))
    if ("fedbn", "personalized") in get and ("fedavg-bn", "global") in get:
        checks.append(("fedbn", get[("fedbn", "personalized")], get[("fedavg-bn", "global")],
                       "fedavg-bn's global"))
    for (method, model), row in get.items():
        if method.startswith("ditto") and model == "personalized" and fedavg:
            checks.append((method, row, fedavg, "FedAvg's global"))
    print(f"\n{dataset}: the papers' claims against this run")
    print("| method | claim | measured: mean (p10) vs reference | agrees |")
    print("|---|---|---|---|")
    for method, own, ref, ref_name in checks:
        better_mean, better_p10 = own["mean"] > ref["mean"], own["p10"] >= ref["p10"]
        agrees = "yes" if better_mean and better_p10 else ("partly" if better_mean else "no")
        claim = CLAIMS[method.split()[0]]
        print(f"| {method} | {claim} | {own['mean']:.4f} ({own['p10']:.4f}) vs "
              f"{ref_name} {ref['mean']:.4f} ({ref['p10']:.4f}) | {agrees} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True,
                        help="the shared data folder, with femnist_leaf_subset/ and mnist/")
    parser.add_argument("--datasets", default="femnist,mnist-shards")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, of {METHODS} (fedavg comes with fedavg+finetune)")
    parser.add_argument("--quick", action="store_true",
                        help="a couple of minutes: fewer rounds and clients per round")
    parser.add_argument("--rounds", type=int, default=None, help="default 30 (quick: 3)")
    parser.add_argument("--clients-per-round", type=int, default=None,
                        help="default 15 (quick: 5)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05, help="client SGD learning rate")
    parser.add_argument("--ditto-lams", default="0.1,1",
                        help="Ditto's lam, one run each (comma-separated)")
    parser.add_argument("--bn-momentum", type=float, default=0.9,
                        help="BatchNormalization momentum of the FedBN model (0.9: PyTorch's "
                             "default 0.1; Keras's default 0.99 moves each "
                             "client's statistics only 1%% per local step)")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 30)
    args.clients_per_round = args.clients_per_round or (5 if args.quick else 15)
    datasets = args.datasets.split(",")
    methods = args.methods.split(",")
    unknown = [d for d in datasets if d not in ("femnist", "mnist-shards")] + [
        m for m in methods if m not in METHODS]
    methods = [m for m in methods if m != "ditto"] + (
        [f"ditto lam={float(lam):g}" for lam in args.ditto_lams.split(",")]
        if "ditto" in methods else [])
    if unknown:
        sys.exit(f"personalization: unknown datasets/methods {unknown}; datasets: femnist, "
                 f"mnist-shards; methods: {METHODS}")
    check_data_dir(args.data_dir, datasets)
    import tensorflow as tf
    print(f"kerasfed personalization benchmark: TF {tf.__version__}, "
          f"Keras {keras.__version__}, seed {args.seed}, FineTune epochs {args.finetune_epochs}, "
          f"BatchNormalization momentum {args.bn_momentum}")
    for dataset in datasets:
        train, test, classes = (femnist(args.data_dir) if dataset == "femnist"
                                else mnist_shards(args.data_dir, args.seed))
        rows = []
        for method in methods:
            print(f"  {dataset}: {method} ...", flush=True)
            rows += run_method(method, train, test, classes, args)
            print(f"    done in {rows[-1]['seconds']:.1f} s", flush=True)
        print_table(dataset, rows, args, train, test)
        print_claims(dataset, rows)


if __name__ == "__main__":
    main()
