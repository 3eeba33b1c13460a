#!/usr/bin/env python3
"""kerasfed demo: one compiled Keras model, trained two ways on real data.

1. Data-parallel: ``fit_distributed`` over two devices (two logical CPUs when the
   machine has no second GPU), then the test accuracy.
2. Federated: the same model over 30 non-IID clients (Dirichlet(0.5) label skew),
   10 per round, with FedAvg, on each engine this environment has: kerasfed's
   native engine (everywhere) and TensorFlow Federated (beside TF 2.14). A
   progress line, each engine's final accuracy, median seconds per round and total
   wall time, and a PNG plot of test accuracy against passes over the training
   data (an epoch of part 1 is one pass; a round, 10 clients x 2 local epochs,
   about two thirds of one).

Data: scikit-learn's handwritten digits (1,797 8x8 images, shipped inside the
scikit-learn wheel, so nothing is downloaded). TensorFlow's C++ start-up lines are
left out unless TF_CPP_MIN_LOG_LEVEL is set.

  python3 dev.py demo [--rounds 30] [--epochs 30] [--out out]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import kerasfed


def make_model():
    """A small MLP for 8x8 digits, compiled like any Keras model."""
    from kerasfed._compat import keras

    keras.utils.set_random_seed(0)  # the same start for every run and engine
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def start_tensorflow() -> float:
    """Imports TensorFlow and splits the CPU into two devices; returns the seconds it took.

    The split must happen before TensorFlow starts (with two GPUs, MirroredStrategy
    uses them instead). ``quiet_tensorflow_startup`` keeps TensorFlow's C++ start-up
    lines (cuDNN/cuFFT/cuBLAS, oneDNN, absl) off the screen unless the user set
    TF_CPP_MIN_LOG_LEVEL; every other line TensorFlow writes still shows.
    """
    start = time.monotonic()
    with kerasfed.quiet_tensorflow_startup():
        kerasfed.use_logical_cpus(2)
    return time.monotonic() - start


def say(text: str) -> None:
    print(text, flush=True)  # flushed: a log file shows each step when it starts


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def epoch_timer():
    """A Keras callback that records each epoch's wall time in ``.seconds``."""
    from kerasfed._compat import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.monotonic() - self._start)

    return EpochTimer()


def passes(num_examples: list[int], train_size: int) -> list[float]:
    """Passes over the training data after each round (examples processed / train size)."""
    done, out = 0, []
    for n in num_examples:
        done += n
        out.append(done / train_size)
    return out


def plot(central: list[float], federated: dict[str, tuple[list[float], list[float]]],
         path: Path) -> None:
    """Test accuracy against passes over the training data: an epoch is one pass, a
    round the examples its clients processed (clients x local epochs)."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.plot(range(1, len(central) + 1), central, color="tab:blue", marker="s", markersize=3,
            label="centralized: fit_distributed, per epoch")
    # Both engines train the same clients on the same batches, so their curves can be
    # the same: big hollow circles under small filled dots keep both visible.
    styles = {"native": dict(color="tab:orange", marker="o", markersize=8, markerfacecolor="none",
                             linestyle="-"),
              "tff": dict(color="tab:green", marker=".", markersize=5, linestyle="--")}
    same = len(federated) == 2 and len({tuple(acc) for _, acc in federated.values()}) == 1
    for engine, (x, accuracy) in federated.items():
        note = " (same values as native)" if same and engine != "native" else ""
        ax.plot(x, accuracy, label=f"federated: fit_federated, {engine} engine, per round{note}",
                **styles.get(engine, {}))
    ax.set_xlabel("passes over the training data (epochs; one round = 10 clients x 2 local epochs)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("digits: centralized vs FedAvg over 30 non-IID clients")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="centralized epochs (default 30)")
    parser.add_argument("--rounds", type=int, default=30, help="federated rounds (default 30)")
    parser.add_argument("--out", default="out", help="folder for the plot (default out/)")
    args = parser.parse_args()

    say("starting TensorFlow with two logical CPU devices ...")
    say(f"TensorFlow started in {start_tensorflow():.1f} s")
    from kerasfed.datasets import load_digits_split

    (x_train, y_train), (x_test, y_test) = load_digits_split()
    say(f"digits: {len(x_train)} train / {len(x_test)} test examples, 8x8 pixels, 10 classes")

    say("\n== 1. fit_distributed: MirroredStrategy over two devices ==")
    say(f"training {args.epochs} epochs, batch 32 split over the two replicas (no per-epoch output) ...")
    timer = epoch_timer()
    start = time.monotonic()
    history = kerasfed.fit_distributed(
        make_model,
        x_train,
        y_train,
        strategy="mirrored",
        epochs=args.epochs,
        batch_size=32,
        validation_data=(x_test, y_test),
        callbacks=[timer],
        verbose=0,
    )
    total = time.monotonic() - start
    strategy = history.model.distribute_strategy
    devices = getattr(strategy.extended, "worker_devices", ())
    central = history.history["val_accuracy"]
    say(f"replicas: {strategy.num_replicas_in_sync} on {', '.join(devices)}")
    say(f"test accuracy after {args.epochs} epochs: {central[-1]:.3f}; "
        f"median {median(timer.seconds):.3f} s per epoch, {total:.1f} s in all")

    say("\n== 2. fit_federated: FedAvg over 30 non-IID clients, 10 per round ==")
    from kerasfed._compat import tff_available

    clients = kerasfed.partition(x_train, y_train, num_clients=30, scheme="dirichlet", alpha=0.5, seed=0)
    sizes = sorted(clients.num_examples(c) for c in clients.client_ids)
    say(f"client sizes: min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}")
    engines = ["native", "tff"] if tff_available() else ["native"]
    federated = {}
    for engine in engines:
        say(f"\n{engine} engine: building it, then {args.rounds} rounds ...")
        start = time.monotonic()
        fed = kerasfed.fit_federated(
            make_model,
            clients,
            rounds=args.rounds,
            clients_per_round=10,
            local_epochs=2,
            batch_size=16,
            validation_data=(x_test, y_test),
            seed=0,
            engine=engine,
            verbose=1,
        )
        total = time.monotonic() - start
        accuracy = fed.history["val_accuracy"]
        federated[engine] = (passes(fed.history["num_examples"], len(x_train)), accuracy)
        say(f"{engine} engine: test accuracy after {args.rounds} rounds: "
            f"{accuracy[-1]:.3f} (centralized: {central[-1]:.3f}); "
            f"median {median(fed.history['round_seconds']):.3f} s per round, {total:.1f} s in all")
    if len(federated) == 2:
        say("the two engines saw the same clients and batches; their accuracies differ by "
            f"{abs(federated['native'][1][-1] - federated['tff'][1][-1]):.1e}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "demo_accuracy.png"
    say("\ndrawing the plot ...")
    plot(central, federated, png)
    say(f"plot: {png.resolve()}")


if __name__ == "__main__":
    main()
