"""The FedAvg paper reproduced: rounds to a target test accuracy, ours beside the paper's.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas (2017), "Communication-Efficient
Learning of Deep Networks from Decentralized Data", Table 2 / Figure 2: MNIST 2NN
(target 97%) and CNN (99%), 100 clients of 600 examples, IID or pathological
non-IID (two label shards of 300 per client), C = 0.1 (10 clients per round),
FedSGD as the baseline; the Shakespeare LSTM (54%, one client per play role);
and one FEMNIST row (LEAF's writers as clients, no paper figure). Each row
trains with kerasfed.fit_federated on the native engine until the target or
--max-rounds, prints our rounds beside the paper's, and writes a plot of test
accuracy against rounds (``--plot``, needs matplotlib: the default environment).

  python3 dev.py bench --env latest paper_fedavg --data-dir ../shared/data --rows cnn-iid-E5-B10
  python3 dev.py bench paper_fedavg --data-dir ../shared/data --rows all --plot out/fedavg.png
  python3 dev.py bench paper_fedavg --data-dir ../shared/data --rows none --plot out/fedavg.png

``--algorithms fedavg,fedprox,scaffold`` trains each row with each algorithm side
by side (FedProx with mu=0.01, SCAFFOLD with option II control variates), e.g.
the issue-15 comparison on the pathological non-IID split:

  python3 dev.py bench --env latest paper_fedavg --data-dir ../shared/data --rows 2nn-E1-B10
      --splits non-iid --algorithms fedavg,fedprox,scaffold --max-rounds 300

Each row's test accuracy per round goes to ``--curves-dir`` (a CSV per row and
split, written as the run goes, so a stopped run keeps its curve); ``--rows none``
only redraws the plot from those CSVs.

The paper tuned the client learning rate per row over a grid; we use one rate
per model (``--lr``), so a row may need more rounds than the paper's for that
reason alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import sys
import time
import warnings

import numpy as np

import kerasfed
from kerasfed._compat import keras

INF = None  # B = infinity: the whole client dataset is one batch


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    task: str  # "2nn", "cnn", "lstm", "femnist"
    epochs: int
    batch: int | None
    paper_iid: int | None
    paper_non_iid: int | None
    fedsgd: bool = False


# Rounds from the paper (None where it has no figure). MNIST CNN and Shakespeare:
# Table 2 (C = 0.1). MNIST 2NN: Table 1 (C = 0.1, E = 1; B = inf is FedSGD), since
# the 2NN rows of Table 4 were not available to us.
ROWS = [
    Row("2nn-fedsgd", "2nn", 1, INF, 1474, 1796, fedsgd=True),
    Row("2nn-E1-B10", "2nn", 1, 10, 87, 664),
    Row("cnn-fedsgd", "cnn", 1, INF, 626, 483, fedsgd=True),
    Row("cnn-E5-Binf", "cnn", 5, INF, 179, 1000),
    Row("cnn-E1-B50", "cnn", 1, 50, 65, 600),
    Row("cnn-E20-Binf", "cnn", 20, INF, 234, 672),
    Row("cnn-E1-B10", "cnn", 1, 10, 34, 350),
    Row("cnn-E5-B50", "cnn", 5, 50, 29, 334),
    Row("cnn-E20-B50", "cnn", 20, 50, 32, 426),
    Row("cnn-E5-B10", "cnn", 5, 10, 20, 229),
    Row("cnn-E20-B10", "cnn", 20, 10, 18, 173),
    Row("lstm-fedsgd", "lstm", 1, INF, 2488, 3906, fedsgd=True),
    Row("lstm-E1-B50", "lstm", 1, 50, 1635, 549),
    Row("lstm-E5-Binf", "lstm", 5, INF, 613, 597),
    Row("lstm-E1-B10", "lstm", 1, 10, 460, 164),
    Row("lstm-E5-B50", "lstm", 5, 50, 401, 152),
    Row("lstm-E5-B10", "lstm", 5, 10, 192, 41),
    Row("femnist-E1-B10", "femnist", 1, 10, None, None),
]
TARGETS = {"2nn": 0.97, "cnn": 0.99, "lstm": 0.54, "femnist": 0.75}
LEARNING_RATES = {"2nn": 0.1, "cnn": 0.2, "lstm": 1.47, "femnist": 0.05}
# FedSGD takes one full-batch step per round, so it wants a larger rate than the
# minibatch rows (the paper tuned each row's rate separately).
FEDSGD_LEARNING_RATES = {"2nn": 0.5, "cnn": 0.2, "lstm": 1.47}  # CNN at 0.5 diverged


# -- data -------------------------------------------------------------------------------------
def mnist(data_dir: str, task: str, iid: bool, seed: int):
    from kerasfed.datasets import load_mnist

    (x, y), (xt, yt) = load_mnist(os.path.join(data_dir, "mnist"))
    x, xt = (x / 255.0).astype("float32"), (xt / 255.0).astype("float32")
    if task == "2nn":
        x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    else:
        x, xt = x[..., None], xt[..., None]
    y, yt = y.astype("int32"), yt.astype("int32")
    clients = kerasfed.partition(x, y, num_clients=100, scheme="iid" if iid else "shards",
                                 seed=seed, **({} if iid else {"shards_per_client": 2}))
    return clients, (xt, yt)


def femnist(data_dir: str):
    with np.load(os.path.join(data_dir, "femnist_leaf_subset",
                              "femnist_leaf_niid05_subset.npz")) as f:
        x, y, writer, split = f["x"], f["y"], f["writer"], f["split"]
    x = ((255 - x) / 255.0).astype("float32")[..., None]
    train = split == "train"
    clients = kerasfed.partition(x[train], y[train].astype("int32"), None, scheme="by_key",
                                 keys=writer[train])
    return clients, (x[~train], y[~train].astype("int32"))


SEQ = 80


def shakespeare(data_dir: str, iid: bool, seed: int):
    """One client per (play, speaker) with >= 2 lines; 80-character windows."""
    path = os.path.join(data_dir, "shakespeare_plays", "shakespeare_plays_lines.jsonl.gz")
    texts: dict[str, list[str]] = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            if row["line_number"]:
                texts.setdefault(f"{row['play_name']}/{row['speaker']}", []).append(
                    row["text_entry"])
    texts = {k: " ".join(v) for k, v in texts.items() if len(v) >= 2}
    vocab = sorted({c for t in texts.values() for c in t})
    index = {c: i + 1 for i, c in enumerate(vocab)}  # 0: padding
    clients, test_x, test_y = {}, [], []
    for cid, text in texts.items():
        codes = np.array([index[c] for c in text], np.int32)
        if len(codes) <= SEQ + 1:
            continue
        starts = np.arange(0, len(codes) - SEQ - 1, SEQ)
        xs = np.stack([codes[s:s + SEQ] for s in starts])
        ys = codes[starts + SEQ]
        cut = max(1, int(0.8 * len(xs)))  # the paper's per-role 80/20 split in time
        clients[cid] = (xs[:cut], ys[:cut])
        test_x.append(xs[cut:])
        test_y.append(ys[cut:])
    if iid:
        x = np.concatenate([c[0] for c in clients.values()])
        y = np.concatenate([c[1] for c in clients.values()])
        clients = kerasfed.partition(x, y, num_clients=len(clients), scheme="iid", seed=seed)
    return clients, (np.concatenate(test_x), np.concatenate(test_y)), len(vocab) + 1


# -- models -----------------------------------------------------------------------------------
def make_model(task: str, lr: float, classes: int = 10):
    layers = keras.layers
    if task == "2nn":
        body = [keras.Input((784,)), layers.Dense(200, activation="relu"),
                layers.Dense(200, activation="relu"), layers.Dense(classes, activation="softmax")]
    elif task in ("cnn", "femnist"):
        body = [keras.Input((28, 28, 1)), layers.Conv2D(32, 5, padding="same", activation="relu"),
                layers.MaxPooling2D(2), layers.Conv2D(64, 5, padding="same", activation="relu"),
                layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(512, activation="relu"),
                layers.Dense(classes, activation="softmax")]
    else:
        body = [keras.Input((SEQ,)), layers.Embedding(classes, 8), layers.LSTM(256, return_sequences=True),
                layers.LSTM(256), layers.Dense(classes, activation="softmax")]
    model = keras.Sequential(body)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class StopAtTarget(keras.callbacks.Callback):
    """Stops at the target accuracy; appends each round to a CSV as it goes.

    The CSV (round, test accuracy, seconds since the start) keeps the curve of a
    run that is stopped before it ends, and ``--plot`` draws every CSV it finds.
    """

    def __init__(self, target: float, csv_path: str, label: str):
        super().__init__()
        self.target, self.reached, self.curve = target, None, []
        self.csv_path, self.label, self.started = csv_path, label, time.perf_counter()
        with open(csv_path, "w") as f:
            f.write("round,val_accuracy,seconds\n")

    def on_epoch_end(self, epoch, logs=None):
        accuracy = logs.get("val_accuracy")
        if accuracy is None:
            return
        elapsed = time.perf_counter() - self.started
        self.curve.append((epoch + 1, accuracy))
        with open(self.csv_path, "a") as f:
            f.write(f"{epoch + 1},{accuracy:.5f},{elapsed:.1f}\n")
        if (epoch + 1) % 10 == 0:
            best = max(a for _, a in self.curve)
            print(f"  {self.label}: round {epoch + 1}, accuracy {accuracy:.4f} (best {best:.4f}), "
                  f"{elapsed:.0f} s", file=sys.stderr, flush=True)
        if accuracy >= self.target and self.reached is None:
            self.reached = epoch + 1
            self.model.stop_training = True


ALGORITHMS = {"fedavg": "fedavg", "fedprox": kerasfed.FedProx(mu=0.01), "scaffold": "scaffold"}


def run_row(row: Row, iid: bool, args, algorithm: str = "fedavg") -> dict:
    seed = args.seed
    classes = 10
    if row.task in ("2nn", "cnn"):
        clients, test = mnist(args.data_dir, row.task, iid, seed)
    elif row.task == "femnist":
        clients, test = femnist(args.data_dir)
        classes = 62
    else:
        clients, test, classes = shakespeare(args.data_dir, iid, seed)
    sizes = [len(x) for x, _ in (clients.values() if isinstance(clients, dict)
                                 else (clients[c] for c in clients.client_ids))]
    batch = row.batch or max(sizes)
    keras.utils.set_random_seed(seed)
    lr = args.lr or (FEDSGD_LEARNING_RATES if row.fedsgd else LEARNING_RATES)[row.task]
    model = make_model(row.task, lr, classes)
    split = "iid" if iid else "non-iid"
    os.makedirs(args.curves_dir, exist_ok=True)
    label = (f"{row.name}-{split}" + (f"-lr{lr:g}" if args.lr else "")
             + (f"-{algorithm}" if algorithm != "fedavg" else ""))  # a rerun at another rate keeps both
    stop = StopAtTarget(TARGETS[row.task], os.path.join(args.curves_dir, f"{label}.csv"), label)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = kerasfed.fit_federated(
            model, clients, rounds=args.max_rounds,
            clients_per_round=max(1, round(0.1 * len(sizes))), local_epochs=row.epochs,
            batch_size=batch, algorithm="fedsgd" if row.fedsgd else ALGORITHMS[algorithm],
            # FedSGD: the server takes the step with the mean gradient (the
            # paper's FedSGD is FedAvg with E = 1, B = inf at the same rate).
            server_learning_rate=lr if row.fedsgd else 1.0, validation_data=test,
            validation_batch_size=1000,  # the test set each round: B=10 would take longer than the round
            engine="native", seed=seed, callbacks=[stop], verbose=0)
    return {"reached": stop.reached,
            "seconds_per_round": float(np.median(history.history["round_seconds"]))
            if history.history.get("round_seconds") else float("nan"),
            "total": time.perf_counter() - started, "lr": lr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with mnist/, shakespeare_plays/, ...")
    parser.add_argument("--rows", default="cnn-E5-B10", help="comma-separated names, or 'all': "
                        + ", ".join(r.name for r in ROWS))
    parser.add_argument("--splits", default="iid,non-iid")
    parser.add_argument("--max-rounds", type=int, default=300)
    parser.add_argument("--lr", type=float, default=None, help="client learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algorithms", default="fedavg",
                        help="comma-separated: " + ", ".join(ALGORITHMS) + " (default fedavg)")
    parser.add_argument("--curves-dir", default=os.path.join("out", "paper_fedavg"),
                        help="where each row's per-round CSV goes (default out/paper_fedavg)")
    parser.add_argument("--plot", default=None,
                        help="write accuracy-vs-rounds of every CSV in --curves-dir to this PNG")
    args = parser.parse_args()
    chosen = ROWS if args.rows == "all" else [r for r in ROWS if r.name in args.rows.split(",")]
    if args.rows == "none" and args.plot:  # only redraw the plot from earlier runs' CSVs
        plot_curves(args.curves_dir, args.plot)
        return
    if not chosen:
        sys.exit(f"no such rows: {args.rows}")
    algorithms = args.algorithms.split(",")
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        sys.exit(f"no such algorithms: {unknown}; choose from {list(ALGORITHMS)}")
    print(f"{'row':16s} {'split':8s} {'algorithm':9s} {'target':>6s} {'paper':>6s} {'ours':>8s} "
          f"{'ratio':>6s} {'s/round':>8s} {'lr':>6s}")
    for row in chosen:
        for split in args.splits.split(","):
            iid = split == "iid"
            if row.task == "femnist" and iid:
                continue  # natural writers only
            for algorithm in (["fedsgd"] if row.fedsgd else algorithms):
                result = run_row(row, iid, args, "fedavg" if row.fedsgd else algorithm)
                paper = row.paper_iid if iid else row.paper_non_iid
                ours = result["reached"]
                shown = str(ours) if ours else f">{args.max_rounds}"
                ratio = f"{ours / paper:.2f}" if ours and paper else "-"
                print(f"{row.name:16s} {split:8s} {algorithm:9s} {TARGETS[row.task]:6.2f} "
                      f"{paper or '-':>6} {shown:>8s} {ratio:>6s} "
                      f"{result['seconds_per_round']:8.2f} {result['lr']:6g}", flush=True)
    if args.plot:
        plot_curves(args.curves_dir, args.plot)


def plot_curves(curves_dir: str, path: str) -> None:
    """Test accuracy against rounds: a panel per model, a line per row, split and rate."""
    curves: dict[str, dict[str, tuple]] = {}
    for name in sorted(os.listdir(curves_dir)):
        if name.endswith(".csv"):
            data = np.loadtxt(os.path.join(curves_dir, name), delimiter=",", skiprows=1, ndmin=2)
            if len(data):
                task = name.split("-")[0]
                curves.setdefault(task, {})[name[:-4]] = (data[:, 0], data[:, 1])
    if not curves:
        sys.exit(f"no curves (*.csv) in {curves_dir}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("2nn", "cnn", "femnist", "lstm") if t in curves]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        target = TARGETS[task]
        # More curves than the default ten colours: tab20's dark shades, then its light ones.
        colors = plt.cm.tab20([*range(0, 20, 2), *range(1, 20, 2)])
        for i, (label, (rounds, accuracy)) in enumerate(curves[task].items()):
            ax.plot(rounds, accuracy, label=label, lw=1, color=colors[i % 20],
                    ls="--" if "non-iid" in label and task != "femnist" else "-")  # dashed: non-IID
        ax.axhline(target, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{task.upper()} (target {target:.0%})")
        ax.set_xlabel("communication rounds")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(target - {"2nn": 0.07, "cnn": 0.04}.get(task, 0.25), min(1.0, target + 0.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
