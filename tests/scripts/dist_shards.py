"""Worker script: which examples does each worker get? `kerasfed launch --workers 2 dist_shards.py OUT`.

(tests/test_multi_worker.py runs :func:`record` at the end of dist_train.py
``--shards``, in the workers that just trained: one launch, one TensorFlow start.)

Distributes, the way ``model.fit`` does (``strategy.experimental_distribute_dataset``),
the datasets fit_distributed builds from in-memory arrays (with a remainder and
shuffling) and a file-based dataset passed as it is, and writes the example ids
this worker saw to ``OUT/shards.rank{R}.json``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasfed.distributed.strategies import get_strategy, worker_rank  # noqa: E402

N_ARRAYS = 57  # not a multiple of the global batch: the last batch is partial
GLOBAL_BATCH = 8
N_FILES, PER_FILE = 4, 10


def local_ids(strategy, distributed_batch) -> list[int]:
    ids = []
    for part in strategy.experimental_local_results(distributed_batch):
        ids.extend(int(v) for v in part.numpy().reshape(-1))
    return ids


def epoch_ids(strategy, dataset, epochs: int, steps: int | None = None) -> list[list[list[int]]]:
    """For each epoch, for each step, the ids this worker's replicas got.

    A finite dataset is iterated anew every epoch; an endless one (``steps`` per
    epoch) once, as ``model.fit`` does.
    """
    distributed = strategy.experimental_distribute_dataset(dataset)
    if steps is None:
        return [[local_ids(strategy, batch[0]) for batch in distributed] for _ in range(epochs)]
    iterator = iter(distributed)
    return [[local_ids(strategy, next(iterator)[0]) for _ in range(steps)] for _ in range(epochs)]


def write_files(folder: str) -> list[str]:
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    paths = []
    for f in range(N_FILES):
        path = os.path.join(folder, f"part-{f}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(f * PER_FILE, (f + 1) * PER_FILE):
                feature = {"id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        paths.append(path)
    return paths


def record(out: str) -> None:
    """Writes the example ids this worker got to ``out/shards.rank{R}.json``."""
    strategy = get_strategy("multi_worker")
    rank = worker_rank(strategy)
    import numpy as np
    import tensorflow as tf

    from kerasfed.distributed import data, epoch_order

    ids = np.arange(N_ARRAYS, dtype="int64").reshape(-1, 1)
    inputs = data.check_training_data(ids, ids.copy(), None, None, {})
    seed = data.shared_seed(strategy)
    shuffled, steps = epoch_order.training_batches(inputs, batch_size=GLOBAL_BATCH, shuffle=True, seed=seed)
    in_order, _ = epoch_order.training_batches(inputs, batch_size=GLOBAL_BATCH, shuffle=False, seed=seed)

    # Every worker writes identical files to its own folder: the same as a shared
    # filesystem for FILE sharding, which splits the list of files by position.
    files = write_files(os.path.join(out, f"files{rank}"))
    records = tf.data.TFRecordDataset(files).map(
        lambda r: tf.io.parse_single_example(r, {"id": tf.io.FixedLenFeature([1], tf.int64)})["id"]
    )
    records = records.map(lambda i: (i, i)).batch(4)

    result = {
        "seed": seed,
        "shuffled": epoch_ids(strategy, shuffled, 2, steps),
        "in_order": epoch_ids(strategy, in_order, 1, steps),
        "validation": epoch_ids(strategy, data.arrays_dataset(inputs, batch_size=GLOBAL_BATCH), 1),
        "files": epoch_ids(strategy, records, 1),
    }
    with open(os.path.join(out, f"shards.rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    record(sys.argv[1])
