#!/usr/bin/env python3
"""kerasfed demo: one compiled Keras model, trained two ways on real data.

1. Data-parallel: ``fit_distributed`` over two devices (two logical CPUs when the
   machine has no second GPU), then the test accuracy.
2. Federated: the same model over 30 non-IID clients (Dirichlet(0.5) label skew),
   10 per round, with FedAvg, on each engine this environment has: kerasfed's
   native engine (everywhere) and TensorFlow Federated (beside TF 2.14). A
   progress bar, each engine's final accuracy and seconds per round, and a PNG
   plot of validation accuracy per round (federated) against per epoch
   (centralized, from part 1).

Data: scikit-learn's handwritten digits (1,797 8x8 images, shipped inside the
scikit-learn wheel, so nothing is downloaded).

  python3 dev.py demo [--rounds 30] [--epochs 30] [--out out]
"""

from __future__ import annotations

import argparse
import os
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


def plot(central: list[float], federated: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(range(1, len(central) + 1), central, label="centralized (fit_distributed), per epoch")
    for engine, curve in federated.items():
        ax.plot(range(1, len(curve) + 1), curve, linestyle="-" if engine == "native" else "--",
                label=f"federated (fit_federated, FedAvg, {engine} engine), per round")
    ax.set_xlabel("epoch / round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("digits: centralized vs 30 non-IID clients")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="centralized epochs (default 30)")
    parser.add_argument("--rounds", type=int, default=30, help="federated rounds (default 30)")
    parser.add_argument("--out", default="out", help="folder for the plot (default out/)")
    args = parser.parse_args()

    # Two devices: split the CPU in two before TensorFlow starts (a no-op split
    # is not needed with two GPUs: then MirroredStrategy uses them).
    kerasfed.use_logical_cpus(2)
    from kerasfed.datasets import load_digits_split

    (x_train, y_train), (x_test, y_test) = load_digits_split()
    print(f"digits: {len(x_train)} train / {len(x_test)} test examples, 8x8 pixels, 10 classes")

    print("\n== 1. fit_distributed: MirroredStrategy over two devices ==")
    history = kerasfed.fit_distributed(
        make_model,
        x_train,
        y_train,
        strategy="mirrored",
        epochs=args.epochs,
        batch_size=32,
        validation_data=(x_test, y_test),
        verbose=0,
    )
    strategy = history.model.distribute_strategy
    devices = getattr(strategy.extended, "worker_devices", ())
    central = history.history["val_accuracy"]
    print(f"replicas: {strategy.num_replicas_in_sync} on {', '.join(devices)}")
    print(f"test accuracy after {args.epochs} epochs: {central[-1]:.3f}")

    print("\n== 2. fit_federated: FedAvg over 30 non-IID clients, 10 per round ==")
    from kerasfed._compat import tff_available

    clients = kerasfed.partition(x_train, y_train, num_clients=30, scheme="dirichlet", alpha=0.5, seed=0)
    sizes = sorted(clients.num_examples(c) for c in clients.client_ids)
    print(f"client sizes: min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}")
    engines = ["native", "tff"] if tff_available() else ["native"]
    federated = {}
    for engine in engines:
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
        federated[engine] = fed.history["val_accuracy"]
        per_round = sorted(fed.history["round_seconds"])[len(fed.history["round_seconds"]) // 2]
        print(f"{engine} engine: test accuracy after {args.rounds} rounds: "
              f"{federated[engine][-1]:.3f} (centralized: {central[-1]:.3f}); "
              f"median {per_round:.3f} s per round")
    if len(federated) == 2:
        print("the two engines saw the same clients and batches; their accuracies differ by "
              f"{abs(federated['native'][-1] - federated['tff'][-1]):.1e}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "demo_accuracy.png"
    plot(central, federated, png)
    print(f"plot: {png.resolve()}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
