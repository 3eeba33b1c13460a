"""Worker script for the multi-worker tests: `kerasfed launch --workers 2 dist_train.py OUT ...`.

Trains tests/scripts/dist_common.py's model with fit_distributed and records, per
rank, what the tests check: final weights and history (``result.rank{R}.npz``), the
epochs begun in each attempt (``epochs.rank{R}.txt``), every path written to
(``paths.rank{R}.json``) and the process ids (``pids.txt``); with ``--shards``, then
the example ids each worker gets (``shards.rank{R}.json``, tests/scripts/dist_shards.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dist_common  # noqa: E402  (tests/scripts is sys.path[0])

from kerasfed.distributed.fit import fit_distributed  # noqa: E402
from kerasfed.distributed.strategies import get_strategy  # noqa: E402

RANK = int(os.environ.get("KERASFED_RANK", "0"))
ATTEMPT = os.environ.get("KERASFED_RESTART_COUNT", "0")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--model-as-function", action="store_true")
    p.add_argument("--validation", action="store_true")
    p.add_argument("--dataset-fn", action="store_true", help="then train again from a dataset_fn")
    p.add_argument("--shards", action="store_true",
                   help="then record which examples each worker gets (dist_shards.record)")
    p.add_argument("--backup")
    p.add_argument("--shuffle", type=int, metavar="SEED", help="shuffle, after keras.utils.set_random_seed(SEED)")
    p.add_argument("--kill-at-epoch", type=int, help="rank 1 SIGKILLs itself there in attempt 0")
    p.add_argument("--fail", choices=["before", "during"], help="rank 1 raises")
    p.add_argument("--save")
    p.add_argument("--checkpoint")
    p.add_argument("--tensorboard")
    p.add_argument("--csv")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    with open(os.path.join(args.out, "pids.txt"), "a") as f:
        f.write(f"{ATTEMPT} {RANK} {os.getpid()}\n")
    if not args.model_as_function:
        # What a user script does when it builds the model before fit_distributed:
        # the multi-worker strategy has to exist before TensorFlow's first op.
        get_strategy()
    from kerasfed._compat import keras

    saved_to: list[str] = []

    class SpySequential(keras.Sequential):
        """Records where the model is saved (save_path and ModelCheckpoint)."""

        def save(self, filepath, *a, **k):
            saved_to.append(os.fspath(filepath))
            return super().save(filepath, *a, **k)

    class Recorder(keras.callbacks.Callback):
        def __init__(self, file_callbacks):
            super().__init__()
            self.file_callbacks = file_callbacks
            self.paths_during = {}

        def on_train_begin(self, logs=None):
            self.paths_during = _paths(self.file_callbacks)

        def on_epoch_begin(self, epoch, logs=None):
            with open(os.path.join(args.out, f"epochs.rank{RANK}.txt"), "a") as f:
                f.write(f"{ATTEMPT} {epoch}\n")

        def on_epoch_end(self, epoch, logs=None):
            if RANK == 1 and ATTEMPT == "0" and epoch == args.kill_at_epoch:
                os.kill(os.getpid(), signal.SIGKILL)
            if RANK == 1 and args.fail == "during":
                raise RuntimeError("rank 1 fails during training")

    x, y = dist_common.make_data(args.n)
    file_callbacks = []
    if args.checkpoint:
        file_callbacks.append(keras.callbacks.ModelCheckpoint(args.checkpoint))
    if args.tensorboard:
        file_callbacks.append(keras.callbacks.TensorBoard(args.tensorboard))
    if args.csv:
        file_callbacks.append(keras.callbacks.CSVLogger(args.csv))
    recorder = Recorder(file_callbacks)
    if RANK == 1 and args.fail == "before":
        raise RuntimeError("rank 1 fails before training")
    model = (lambda: dist_common.build_model()) if args.model_as_function else dist_common.build_model(SpySequential)
    validation = dist_common.make_data(16, seed=5) if args.validation else None
    if args.shuffle is not None:
        keras.utils.set_random_seed(args.shuffle)
    history = fit_distributed(
        model,
        x,
        y,
        batch_size=args.batch,
        epochs=args.epochs,
        shuffle=args.shuffle is not None,
        validation_data=validation,
        callbacks=[*file_callbacks, recorder],
        backup_dir=args.backup,
        save_path=args.save,
        verbose="auto",  # progress on the chief only
    )
    dist_common.save_weights(
        os.path.join(args.out, f"result.rank{RANK}.npz"), history.model, loss=history.history["loss"],
        val_loss=history.history.get("val_loss", []),
    )
    with open(os.path.join(args.out, f"paths.rank{RANK}.json"), "w") as f:
        json.dump({"during": recorder.paths_during, "after": _paths(file_callbacks), "saved_to": saved_to}, f)

    if args.dataset_fn:
        import tensorflow as tf

        def dataset_fn(context):
            # Each input pipeline takes every num_input_pipelines-th example, so a
            # global batch holds the same examples as a single process's batch.
            ds = tf.data.Dataset.from_tensor_slices((x, y))
            ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
            return ds.batch(context.get_per_replica_batch_size(args.batch))

        history = fit_distributed(
            dist_common.build_model, dataset_fn, epochs=args.epochs, steps_per_epoch=args.n // args.batch, verbose=0
        )
        dist_common.save_weights(
            os.path.join(args.out, f"result_fn.rank{RANK}.npz"), history.model, loss=history.history["loss"]
        )

    if args.shards:
        import dist_shards

        dist_shards.record(args.out)


def _paths(callbacks) -> dict:
    names = {"ModelCheckpoint": "filepath", "TensorBoard": "log_dir", "CSVLogger": "filename"}
    return {type(c).__name__: getattr(c, names[type(c).__name__]) for c in callbacks}


if __name__ == "__main__":
    main()
    sys.exit(0)
