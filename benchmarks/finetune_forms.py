"""Times the fine-tuning evaluation's forms side by side on the FedAvg paper's 2NN.

``python3 dev.py bench --env latest finetune_forms [clients]``
prints, for each form, the best of a few warm calls (the first call of each
form, which traces and compiles, is timed apart). The forms run alternately in
one process, so a busy machine slows them alike.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import tensorflow as tf

from kerasfed._compat import KERAS_3, keras
from kerasfed.federated.engines.native import forward as fwd
from kerasfed.federated.engines.native.finetune import FineTuneEvaluation, SplitClient
from kerasfed.federated.engines.native.optimizers import Rule
from kerasfed.federated.personalization import split_examples, split_seed


def _two_nn() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((784,)), keras.layers.Dense(200, activation="relu"),
        keras.layers.Dense(200, activation="relu"), keras.layers.Dense(10, activation="softmax"),
    ])


def benchmark(num_clients: int = 50, examples: int = 60, batch_size: int = 10,
              epochs: int = 1, repeats: int = 3) -> dict[str, dict[str, float]]:
    """``{form: {"first_s": ..., "warm_s": ...}}`` for every form the model can take.

    Args:
      num_clients: Evaluation clients (all in one chunk).
      examples: Examples per client (half fine-tune, half test).
      batch_size: Fine-tuning batch size (the FedAvg paper's B=10).
      epochs: Fine-tuning epochs.
      repeats: Warm calls per form; the best is reported.
    """
    model = _two_nn()
    rng = np.random.default_rng(0)
    clients = []
    for i in range(num_clients):
        x = rng.random((examples, 784), np.float32)
        y = rng.integers(0, 10, examples).astype(np.int32)
        tune, test = split_examples(examples, 0.5, split_seed(0, 0, f"c{i}"))
        clients.append(SplitClient(cid=f"c{i}", x=x, y=y, w=None, tune=tune, test=test))
    loss = keras.losses.SparseCategoricalCrossentropy(reduction=None if KERAS_3 else "none")
    trainable = [tf.convert_to_tensor(v) for v in fwd.variables(model.trainable_variables)]
    forms = ["lockstep+xla", "lockstep", "sequential"] if KERAS_3 else ["lockstep", "sequential"]
    runs = {}
    for form in forms:
        runs[form] = FineTuneEvaluation(
            model, loss=loss, flatten=None,
            metrics=[lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            rule=Rule("sgd", 0.1), batch_size=batch_size, epochs=epochs, form=form,
            max_parallel_clients=num_clients)
    results: dict[str, dict[str, float]] = {}
    for form, run in runs.items():
        started = time.perf_counter()
        run(trainable, [], clients)
        results[form] = {"first_s": time.perf_counter() - started, "warm_s": float("inf")}
    for _ in range(repeats):  # alternately, so that load on the machine hits every form
        for form, run in runs.items():
            started = time.perf_counter()
            run(trainable, [], clients)
            results[form]["warm_s"] = min(results[form]["warm_s"],
                                          time.perf_counter() - started)
    return results


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    print(f"TF {tf.__version__}, {n} clients x 60 examples (30 fine-tune, 30 test), 2NN, "
          f"E=1, B=10")
    for form, r in benchmark(n).items():
        print(f"  {form:13s} first call {r['first_s']:6.2f} s   warm {r['warm_s']:6.3f} s")
