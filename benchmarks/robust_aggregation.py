"""Robust aggregation under attack: final accuracy of every combiner under every
attack (30% of the clients malicious), and each aggregator's round time against
the plain mean's, measured side by side in one run on the native engine.

  python3 dev.py bench robust_aggregation                 # digits (scikit-learn)
  python3 dev.py bench robust_aggregation --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kerasfed  # noqa: E402
from _federated_data import iid_clients, mlp  # noqa: E402

ATTACKS = {
    "none": None,
    "sign_flip x10": kerasfed.Attack("sign_flip", 0.3, scale=10.0),
    "scale x10": kerasfed.Attack("scale", 0.3, scale=10.0),
    "gaussian x10": kerasfed.Attack("gaussian", 0.3, scale=10.0),
    "label_flip": kerasfed.Attack("label_flip", 0.3),
}


def combiners(clients_per_round: int) -> dict:
    f = int(0.3 * clients_per_round)
    return {
        "mean": "mean",
        "median": "median",
        "trimmed_mean(0.3)": kerasfed.TrimmedMean(beta=0.3),
        f"krum(f={f})": kerasfed.Krum(byzantine=f),
        f"multi_krum(f={f},m=5)": kerasfed.Krum(byzantine=f, select=5),
        f"bulyan(f={(clients_per_round - 3) // 4})":
            kerasfed.Bulyan(byzantine=(clients_per_round - 3) // 4),
        "clip(adaptive)+mean": [kerasfed.ClipNorm(1.0, target_quantile=0.5), "mean"],
        "zeroing+mean": [kerasfed.Zeroing(5.0), "mean"],
    }


COST_ONLY = {
    "quantize(8)+mean": [kerasfed.Quantize(bits=8), "mean"],
    "quantize(8,rot)+mean": [kerasfed.Quantize(bits=8, rotation=True), "mean"],
    "top_k(1%)+mean": [kerasfed.TopK(0.01), "mean"],
    "secure_sum(16)": kerasfed.SecureSum(bits=16, clip_range=1.0),
    "dp_mean(1.0)": kerasfed.DPMean(noise_multiplier=1.0, clip_norm=1.0),
}


def run(clients, test, *, rounds, aggregator, attack, clients_per_round):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = kerasfed.fit_federated(
            mlp(test[0].shape[1]), clients, rounds=rounds, clients_per_round=clients_per_round,
            local_epochs=1, batch_size=20, engine="native", aggregator=aggregator, attack=attack,
            validation_data=test, evaluate_every=rounds, seed=1, verbose=0)
    seconds = statistics.median(history.history["round_seconds"][1:])
    return history.history["val_accuracy"][-1], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: digits)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    clients, test, name = iid_clients(args.data_dir, args.clients,
                                      per_client=300 if args.data_dir else None)
    cpr = args.clients
    table = combiners(cpr)
    print(f"{name}: {args.clients} IID clients, all in every round, 30% attackers, "
          f"{args.rounds} rounds, E=1, B=20, MLP 64 hidden units, native engine\n")
    header = f"{'aggregator':24s}" + "".join(f"{a:>15s}" for a in ATTACKS) + f"{'s/round':>10s}"
    print("final test accuracy\n" + header)
    base_seconds = None
    for label, aggregator in table.items():
        row, times = [], []
        for attack in ATTACKS.values():
            accuracy, seconds = run(clients, test, rounds=args.rounds, aggregator=aggregator,
                                    attack=attack, clients_per_round=cpr)
            row.append(accuracy)
            times.append(seconds)
        seconds = statistics.median(times)
        base_seconds = base_seconds or seconds
        print(f"{label:24s}" + "".join(f"{a:15.3f}" for a in row)
              + f"{seconds:10.4f}", flush=True)
    print("\nround time of each aggregator against the mean's (no attack)")
    _, mean_seconds = run(clients, test, rounds=args.rounds, aggregator="mean", attack=None,
                          clients_per_round=cpr)
    for label, aggregator in {**table, **COST_ONLY}.items():
        accuracy, seconds = run(clients, test, rounds=args.rounds, aggregator=aggregator,
                                attack=None, clients_per_round=cpr)
        print(f"{label:24s} {seconds:8.4f} s  {seconds / mean_seconds:6.2f}x mean  "
              f"accuracy {accuracy:.3f}", flush=True)


if __name__ == "__main__":
    main()
