"""kerasfed's MultiWorkerMirroredStrategy, and the one instance a process makes of it.

Kept apart from ``strategies.py`` and importing nothing of kerasfed but the
TensorFlow-free ``tf_config``: ``kerasfed launch``'s bootstrap creates the
strategy from an import hook the moment TensorFlow finishes importing, which may
be in the middle of importing any kerasfed module (``kerasfed._compat`` and
``strategies`` import TensorFlow at their top).
"""

from __future__ import annotations

import tensorflow as tf

from kerasfed.distributed.tf_config import ClusterConfig

_MADE: list[tf.distribute.MultiWorkerMirroredStrategy] = []


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose ``reduce`` accepts what Keras 3 passes it.

    Keras 3's TensorFlow trainer reduces its per-replica metric results with
    ``strategy.reduce("MEAN", v, axis=0)``; on scalars the collective implementation
    rejects ``axis=0`` ("Invalid reduction dimension 0 for input with 0 dimensions",
    tensorflow/tensorflow#72388, keras-team/keras#20585), so ``fit`` fails under a
    plain MultiWorkerMirroredStrategy. A mean over replicas (``axis=None``) is what
    that call means for scalars, and what MirroredStrategy computes. Nests are
    reduced leaf by leaf (Keras 3 also passes whole batches; see keras3_build.py).
    """

    def reduce(self, reduce_op, value, axis):  # noqa: D102 (see tf.distribute.Strategy)
        def reduce_leaf(leaf):
            parts = leaf.values if isinstance(leaf, tf.distribute.DistributedValues) else (leaf,)
            leaf_axis = None if getattr(parts[0], "shape", None) is not None and parts[0].shape.rank == 0 else axis
            return super(MultiWorkerStrategy, self).reduce(reduce_op, leaf, leaf_axis)

        return tf.nest.map_structure(reduce_leaf, value)


def make_multi_worker(config: ClusterConfig) -> MultiWorkerStrategy:
    """The process's MultiWorkerStrategy for ``config`` (made once, then reused)."""
    if _MADE:
        return _MADE[0]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(config.cluster),
        task_type=config.task_type,
        task_id=config.task_index,
        num_accelerators={"GPU": len(tf.config.list_physical_devices("GPU"))},
        rpc_layer="grpc",
    )
    strategy = MultiWorkerStrategy(cluster_resolver=resolver)
    _MADE.append(strategy)
    return strategy
