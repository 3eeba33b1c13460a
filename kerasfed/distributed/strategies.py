"""``strategy="..."`` names and the tf.distribute strategies they make.

One small registry turns a name into a strategy (as ``keras.optimizers.get`` turns
a name into an optimizer); strategy instances are accepted as they are. Strategies
are created once per process and reused: ``MultiWorkerMirroredStrategy`` starts a
gRPC server and configures TensorFlow's collectives, which can happen only once
and only before TensorFlow's first op; a model built under a cached strategy's
scope is then recognised and trained as it is on the next call.
"""

from __future__ import annotations

from typing import Callable, Union

import tensorflow as tf

# After `import tensorflow` (see multi_worker.py: kerasfed launch's bootstrap loads
# it while this module may still be importing TensorFlow).
from kerasfed.distributed.multi_worker import MultiWorkerStrategy as _MultiWorkerMirroredStrategy
from kerasfed.distributed.multi_worker import make_multi_worker
from kerasfed.distributed.tf_config import ClusterConfig, TFConfigError, read_tf_config
from kerasfed.errors import (  # noqa: F401  (defined with the family)
    StrategyError,
    StrategyInitError,
)

StrategyLike = Union[str, tf.distribute.Strategy]


_MULTI_WORKER_TOO_LATE = """\
MultiWorkerMirroredStrategy must be created before TensorFlow runs its first op \
(it configures TensorFlow's collective ops, which is possible only at startup), \
but this process has already created a tensor, variable, dataset or model. Create \
the strategy first, at the top of the worker script:

    import kerasfed
    kerasfed.get_strategy("multi_worker")   # before building the model or data
    model = build_model()
    kerasfed.fit_distributed(model, x, y)   # strategy="auto" reuses it

or pass a zero-argument function that builds and compiles the model, and NumPy \
arrays or a dataset_fn as data: fit_distributed(build_model, x, y). Workers started \
by `kerasfed launch` need neither: its bootstrap creates the strategy when the \
script imports TensorFlow (unless --no-auto-strategy)."""


def _default() -> tf.distribute.Strategy:
    return tf.distribute.get_strategy()


def _mirrored() -> tf.distribute.Strategy:
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    # Without GPUs, MirroredStrategy() would use CPU:0 only; take every logical CPU
    # (see kerasfed.use_logical_cpus).
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=cpus)


def _one_device() -> tf.distribute.Strategy:
    device = "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


def _multi_worker() -> tf.distribute.Strategy:
    config = _cluster_config_for("multi_worker")
    try:
        return make_multi_worker(config)
    except RuntimeError as err:
        if "program startup" not in str(err):
            raise
        raise StrategyInitError(_MULTI_WORKER_TOO_LATE) from err
    except ValueError as err:
        if "already configured" not in str(err):
            raise
        raise StrategyInitError(
            "A MultiWorkerMirroredStrategy with another configuration was already "
            "created in this process, and TensorFlow allows only one per process. "
            "Let kerasfed create the only one: call kerasfed.get_strategy('multi_worker') "
            "at the top of the script instead of tf.distribute.MultiWorkerMirroredStrategy()."
        ) from err


_FACTORIES: dict[str, Callable[[], tf.distribute.Strategy]] = {
    "default": _default,
    "mirrored": _mirrored,
    "multi_worker": _multi_worker,
    "one_device": _one_device,
}

STRATEGY_NAMES: tuple[str, ...] = ("auto", *_FACTORIES)
"""Valid values of ``strategy=`` besides a ``tf.distribute.Strategy`` instance."""

_CACHE: dict[str, tf.distribute.Strategy] = {}


def check_strategy(strategy: StrategyLike) -> None:
    """Checks ``strategy`` without creating anything in TensorFlow.

    Raises:
        StrategyError: Unknown name, a strategy kerasfed cannot drive, or
            ``"multi_worker"`` without a usable ``TF_CONFIG``.
        TFConfigError: ``TF_CONFIG`` is set but invalid.
    """
    if isinstance(strategy, tf.distribute.Strategy):
        _check_instance(strategy)
        return
    if not isinstance(strategy, str):
        raise StrategyError(
            f"Expected `strategy` to be one of {list(STRATEGY_NAMES)} or a "
            f"tf.distribute.Strategy instance. Received: strategy={strategy!r} of type "
            f"{type(strategy).__name__}."
        )
    if strategy not in STRATEGY_NAMES:
        raise StrategyError(
            f"Unknown strategy: {strategy!r}. It needs to be one of {list(STRATEGY_NAMES)} "
            f"or a tf.distribute.Strategy instance."
        )
    if strategy == "multi_worker":
        _cluster_config_for("multi_worker")
    elif strategy == "auto":
        config = read_tf_config()  # raises TFConfigError when set but invalid
        if config is not None and config.num_workers > 1:
            _check_trainable_cluster(config)


def resolve_name(strategy: str) -> str:
    """The registered name ``"auto"`` stands for in this process (others: themselves).

    ``"auto"``: ``"multi_worker"`` when ``TF_CONFIG`` lists more than one training
    process, else ``"mirrored"`` when there are several GPUs, else ``"default"``.
    """
    if strategy != "auto":
        return strategy
    config = read_tf_config()
    if config is not None and config.num_workers > 1:
        return "multi_worker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def get_strategy(strategy: StrategyLike = "auto") -> tf.distribute.Strategy:
    """Returns the strategy ``strategy`` names, created once per process.

    Call it first thing in a multi-worker script when the model or data is built
    before ``fit_distributed`` runs: ``MultiWorkerMirroredStrategy`` can only be
    created before TensorFlow's first op. ``fit_distributed`` reuses the same
    instance.

    Args:
        strategy: ``"auto"`` (default), ``"default"``, ``"mirrored"``,
            ``"multi_worker"``, ``"one_device"``, or a ``tf.distribute.Strategy``
            (returned as it is). ``"auto"`` picks ``"multi_worker"`` when
            ``TF_CONFIG`` lists more than one training process, else
            ``"mirrored"`` with several GPUs, else ``"default"`` (no
            distribution). ``"mirrored"`` uses all GPUs, or all logical CPUs when
            there is no GPU (see ``use_logical_cpus``).

    Returns:
        The strategy.

    Raises:
        StrategyError: See :func:`check_strategy`.
        TFConfigError: ``TF_CONFIG`` is set but invalid.
        StrategyInitError: ``"multi_worker"`` after TensorFlow already ran an op.

    Example:
        >>> import kerasfed
        >>> kerasfed.get_strategy("default").num_replicas_in_sync
        1
    """
    check_strategy(strategy)
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    name = resolve_name(strategy)
    if name not in _CACHE:
        _CACHE[name] = _FACTORIES[name]()
    return _CACHE[name]


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` synchronises several processes."""
    return worker_count(strategy) > 1


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """Number of processes training together under ``strategy``."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(t, ())) for t in ("chief", "worker")) or 1


def worker_rank(strategy: tf.distribute.Strategy) -> int:
    """This process's index among the training processes (the chief first)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0
    spec = resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return 0
    return len(spec.get("chief", ())) + int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and summaries under ``strategy``."""
    return bool(strategy.extended.should_checkpoint)


def _check_instance(strategy: tf.distribute.Strategy) -> None:
    ps_class = getattr(tf.distribute.experimental, "ParameterServerStrategy", None)
    if ps_class is not None and isinstance(strategy, ps_class):
        raise StrategyError(
            "fit_distributed trains synchronously (every replica applies the same "
            "update); ParameterServerStrategy is asynchronous and not supported. Use "
            "strategy='multi_worker' (MultiWorkerMirroredStrategy) instead."
        )
    # Imported here: `kerasfed launch`'s bootstrap creates a strategy while
    # `kerasfed._compat` is still importing TensorFlow (see launch/bootstrap.py).
    from kerasfed._compat import KERAS_3

    if (
        KERAS_3
        and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and not isinstance(strategy, _MultiWorkerMirroredStrategy)
    ):
        raise StrategyError(
            "Keras 3 cannot fit a model under a plain tf.distribute."
            "MultiWorkerMirroredStrategy (keras-team/keras#20585). Pass "
            "strategy='multi_worker' (or kerasfed.get_strategy('multi_worker')); "
            "kerasfed then creates one that works with Keras 3."
        )


def _cluster_config_for(name: str) -> ClusterConfig:
    config = read_tf_config()
    if config is None:
        raise StrategyError(
            f"strategy={name!r} needs TF_CONFIG, which tells each process the addresses "
            f"of all workers and its own index, but TF_CONFIG is unset. Start the "
            f"workers with `kerasfed launch --workers N script.py` (it sets TF_CONFIG), "
            f"or set TF_CONFIG yourself; use strategy='auto' to train without it."
        )
    _check_trainable_cluster(config)
    return config


def _check_trainable_cluster(config: ClusterConfig) -> None:
    if "ps" in config.cluster:
        raise StrategyError(
            f"TF_CONFIG lists parameter-server ('ps') tasks {config.cluster['ps']}, but "
            f"fit_distributed trains synchronously with MultiWorkerMirroredStrategy, "
            f"which has no parameter servers. List all training processes under "
            f"'worker' (and optionally one 'chief')."
        )
    if not config.trains:
        raise StrategyError(
            f"This process is the {config.task_type!r} task in TF_CONFIG; only 'chief' "
            f"and 'worker' tasks train with fit_distributed. Run an evaluator's own "
            f"loop instead of fit_distributed."
        )


__all__ = [
    "STRATEGY_NAMES",
    "StrategyError",
    "StrategyInitError",
    "TFConfigError",
    "check_strategy",
    "get_strategy",
    "is_chief",
    "is_multi_worker",
    "resolve_name",
    "worker_count",
    "worker_rank",
]
