"""Split the CPU into several logical devices, to run MirroredStrategy without GPUs.

Keras tests ``MirroredStrategy`` this way (``keras/src/distribution/distribute_test.py``):
``tf.config.set_logical_device_configuration`` turns the one physical CPU into ``n``
logical ``/device:CPU:i`` devices, each of which becomes a replica. It only works
before TensorFlow initialises its devices (the first op, tensor or variable), so call
this at the top of a script or in a fresh process.
"""

from __future__ import annotations

import tensorflow as tf

from kerasfed.errors import ArgumentError, ArgumentTypeError, DeviceConfigError


def use_logical_cpus(n: int) -> list[str]:
    """Splits the physical CPU into ``n`` logical devices.

    ``fit_distributed(..., strategy="mirrored")`` then trains one replica on each
    logical CPU when there is no GPU. Calling it again with the same ``n`` does
    nothing.

    Args:
        n: Number of logical CPU devices, at least 1.

    Returns:
        The device names, ``["/device:CPU:0", ..., f"/device:CPU:{n-1}"]``.

    Raises:
        ArgumentTypeError: ``n`` is not an int (a TypeError).
        ArgumentError: ``n`` is smaller than 1 (a ValueError).
        DeviceConfigError: TensorFlow initialised its devices already (some op ran
            before this call) with another configuration.

    Example:
        >>> import kerasfed
        >>> kerasfed.use_logical_cpus(2)  # first thing in the script
        ['/device:CPU:0', '/device:CPU:1']
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise ArgumentTypeError(f"Expected `n` to be an int. Received: n={n!r} of type {type(n).__name__}.")
    if n < 1:
        raise ArgumentError(f"Expected `n` to be at least 1. Received: n={n}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    names = [f"/device:CPU:{i}" for i in range(n)]
    current = tf.config.get_logical_device_configuration(cpu)
    if (current is not None and len(current) == n) or (current is None and n == 1):
        return names  # already so (one logical CPU is TensorFlow's default)
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError as err:  # "Virtual devices cannot be modified after being initialized"
        have = len(current) if current else 1
        raise DeviceConfigError(
            f"use_logical_cpus({n}): TensorFlow has already initialised its devices "
            f"({have} logical CPU(s)), so they can no longer be split. Call "
            f"`kerasfed.use_logical_cpus({n})` at the top of the script, before any "
            f"TensorFlow op, tensor, variable or Keras model is created (or run the "
            f"training in a fresh process)."
        ) from err
    return names
