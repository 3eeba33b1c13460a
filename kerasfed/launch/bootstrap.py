"""What each worker of ``kerasfed launch`` runs: ``python -m kerasfed.launch.bootstrap
SCRIPT ARGS...``.

TensorFlow lets a process create ``MultiWorkerMirroredStrategy`` only before its
first op, so the script every Keras tutorial writes (build the model, then call
``fit_distributed``) would fail. The bootstrap runs the script as ``python
SCRIPT ARGS...`` would (``__main__``, ``sys.argv``, ``sys.path[0]``) with an
import hook: when the cluster in TF_CONFIG has several training workers, the
strategy is created the moment the script's ``import tensorflow`` (or ``keras``,
or ``kerasfed``'s) has finished, before the script can run an op. A script that
never imports TensorFlow pays nothing. ``fit_distributed(strategy="auto")`` reuses that strategy, and
a script that creates its own ``tf.distribute.MultiWorkerMirroredStrategy()``
gets a second one over the same cluster, which TensorFlow allows. After the
script returns, the workers pass one last collective together, so no worker
leaves while another still talks to it (TF 2.21 otherwise prints gRPC
"Connection refused" errors from workers that finish after the chief).
``kerasfed launch --no-auto-strategy`` runs the script directly instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import runpy
import sys


def _training_workers() -> int:
    """The number of training workers in TF_CONFIG when there are several, else 0."""
    from kerasfed.distributed.tf_config import read_tf_config

    config = read_tf_config()
    if config is None or config.num_workers < 2 or not config.trains:
        return 0
    return config.num_workers


class _StrategyOnImport(importlib.abc.MetaPathFinder):
    """Creates the multi-worker strategy right after ``tensorflow`` is imported."""

    def __init__(self) -> None:
        self.created = False

    def find_spec(self, fullname, path, target=None):  # noqa: D102 (MetaPathFinder)
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # find the real module, once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            # The importer may be a half-imported kerasfed module: this path imports
            # only multi_worker.py, which imports nothing else of kerasfed with TF.
            from kerasfed.distributed.multi_worker import make_multi_worker
            from kerasfed.distributed.tf_config import read_tf_config

            make_multi_worker(read_tf_config())
            self.created = True

        spec.loader.exec_module = exec_module  # this spec's loader is tensorflow's alone
        return spec


# Keys of the final all-reduce: far above the group and instance keys strategies
# number from 1, so that a strategy the script made itself (TensorFlow's own
# tutorial does) cannot have used them.
_BARRIER_GROUP_KEY = 2**30 + 1
_BARRIER_INSTANCE_KEY = 2**30 + 1


def _finish_together(num_workers: int) -> None:
    import tensorflow as tf
    from tensorflow.python.ops import collective_ops  # no public barrier in TF 2.14

    with tf.device("/cpu:0"):
        collective_ops.all_reduce_v2(
            tf.constant(1.0), group_size=num_workers, group_key=_BARRIER_GROUP_KEY,
            instance_key=_BARRIER_INSTANCE_KEY, merge_op="Add", final_op="Id")


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m kerasfed.launch.bootstrap SCRIPT [ARGS ...]")
    script = argv[0]
    workers = _training_workers()
    hook = _StrategyOnImport()
    if workers:
        sys.meta_path.insert(0, hook)
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(script)) if os.path.isfile(script) else script
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise
    if hook.created:
        _finish_together(workers)


if __name__ == "__main__":
    main(sys.argv[1:])
