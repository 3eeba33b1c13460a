#!/usr/bin/env python3
"""Federated MNIST with kerasfed: the FedAvg paper's 2NN or CNN over 100 clients.

Reads the MNIST IDX files (``train-images-idx3-ubyte.gz`` etc.) from ``--data-dir``;
see the README ("Data for the examples") for where to get them. Splits the
training set over ``--clients`` clients (IID, or the paper's pathological non-IID
"shards" split), trains with FedAvg (``fit_federated``), evaluates the test set on
the global model every round, and can resume after a crash (``--checkpoint-dir``).

  .venv/bin/python examples/federated_mnist.py --data-dir ../shared/data/mnist
  .venv/bin/python examples/federated_mnist.py --data-dir ../shared/data/mnist \\
      --model cnn --scheme shards --rounds 50 --checkpoint-dir out/mnist_ckpt
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import kerasfed  # noqa: E402
from kerasfed.datasets import load_mnist  # noqa: E402


def make_model(kind: str, learning_rate: float):
    from kerasfed._compat import keras

    layers = keras.layers
    if kind == "cnn":  # McMahan et al. 2017, "CNN"
        body = [
            layers.Reshape((28, 28, 1)),
            layers.Conv2D(32, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
        ]
    else:  # "2NN": two hidden layers of 200 units
        body = [layers.Flatten(), layers.Dense(200, activation="relu"), layers.Dense(200, activation="relu")]
    model = keras.Sequential([keras.Input((28, 28)), *body, layers.Dense(10, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--model", choices=["2nn", "cnn"], default="2nn")
    parser.add_argument("--scheme", choices=["iid", "shards", "dirichlet"], default="iid")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--checkpoint-dir", default=None, help="resume from / save to this folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    (x_train, y_train), (x_test, y_test) = load_mnist(args.data_dir)
    x_train, x_test = x_train.astype("float32") / 255.0, x_test.astype("float32") / 255.0
    clients = kerasfed.partition(x_train, y_train.astype("int32"), args.clients, scheme=args.scheme, seed=args.seed)
    print(f"MNIST: {len(x_train)} train / {len(x_test)} test; {len(clients)} {args.scheme} clients, "
          f"{args.clients_per_round} per round")

    history = kerasfed.fit_federated(
        make_model(args.model, args.learning_rate),
        clients,
        rounds=args.rounds,
        clients_per_round=args.clients_per_round,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        validation_data=(x_test, y_test.astype("int32")),
        checkpoint_dir=args.checkpoint_dir,
        seed=args.seed,
        verbose=1,
    )
    accuracy = history.history["val_accuracy"]
    best = max(range(len(accuracy)), key=accuracy.__getitem__)
    print(f"test accuracy: {accuracy[-1]:.4f} after round {args.rounds} "
          f"(best {accuracy[best]:.4f}); mean seconds per round "
          f"{sum(history.history['round_seconds']) / len(history.history['round_seconds']):.2f}")


if __name__ == "__main__":
    main()
