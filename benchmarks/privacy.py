"""Accuracy against epsilon: DP-FedAvg (``DPMean``) at a few noise multipliers,
epsilon from dp-accounting for the sampling that ran, native engine.

  python3 dev.py bench privacy                      # digits, 100 clients
  python3 dev.py bench privacy --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kerasfed  # noqa: E402
from _federated_data import iid_clients, mlp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: digits)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.7, 1.0, 1.5])
    args = parser.parse_args()
    clients, test, name = iid_clients(args.data_dir, args.clients)
    q = args.clients_per_round / args.clients
    print(f"{name}: {args.clients} IID clients, Poisson sampling q={q:.2f}, {args.rounds} "
          f"rounds, E=1, B=10, adaptive clip to the median norm, server SGD lr 1.0\n")
    print(f"{'noise multiplier':>17s} {'epsilon':>10s} {'delta':>9s} {'accuracy':>9s} "
          f"{'final clip':>11s}")
    for noise in args.noise:
        dp = kerasfed.DPMean(noise_multiplier=noise, clip_norm=0.5, target_quantile=0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = kerasfed.fit_federated(
                mlp(test[0].shape[1]), clients, rounds=args.rounds,
                clients_per_round=args.clients_per_round, client_sampling="poisson",
                local_epochs=1, batch_size=10, aggregator=dp, engine="native",
                validation_data=test, evaluate_every=args.rounds, seed=0, verbose=0)
        h = history.history
        print(f"{noise:17.2f} {h['epsilon'][-1]:10.2f} {h['dp_delta'][-1]:9.1e} "
              f"{h['val_accuracy'][-1]:9.3f} {h['clip_norm'][-1]:11.3f}", flush=True)


if __name__ == "__main__":
    main()
