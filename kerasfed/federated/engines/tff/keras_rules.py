"""TFF optimizers for the two Keras 2.14 update rules TFF 0.87 does not have.

* SGD with Nesterov momentum: ``tff.learning.optimizers.build_sgdm`` has no
  ``nesterov`` flag (Sutskever et al. 2013, "On the importance of initialization
  and momentum in deep learning", in the form Keras uses).
* RMSprop as Keras computes it (Tieleman & Hinton 2012): Keras divides by
  ``sqrt(v + epsilon)`` and supports ``momentum`` and ``centered`` (Graves 2013,
  "Generating sequences with recurrent neural networks"); TFF's
  ``build_rmsprop`` divides by ``sqrt(v) + epsilon`` and has neither option.

Both follow TFF's optimizer contract: no ``tf.Variable``; all step-to-step memory
is in the state, which holds the learning rate under
``tff.learning.optimizers.LEARNING_RATE_KEY`` so that TFF's learning-rate
scheduling can find it. This module imports TensorFlow Federated; import it only
where TFF is available (``client_optimizers`` does so lazily).
"""

from __future__ import annotations

import collections
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

_LR = tff.learning.optimizers.LEARNING_RATE_KEY
_MOMENTUM = "momentum"
_RHO = "rho"
_EPSILON = "epsilon"


def _zeros_like_specs(specs: Any) -> Any:
    return tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), specs)


def _map_leaves(fn, num_outputs: int, *structures: Any) -> tuple:
    """Applies ``fn`` leaf-wise; returns ``num_outputs`` structures like the first."""
    flat = [tf.nest.flatten(s) for s in structures]
    results = [fn(*leaves) for leaves in zip(*flat)]
    return tuple(
        tf.nest.pack_sequence_as(structures[0], [r[i] for r in results])
        for i in range(num_outputs)
    )


class NesterovSGD(tff.learning.optimizers.Optimizer):
    """SGD with Nesterov momentum, step for step equal to ``keras.optimizers.SGD``.

    Keras keeps ``m = momentum * m - lr * g`` and adds ``momentum * m - lr * g`` to
    the weights. With ``a = -m / lr`` (valid for a constant learning rate) this is::

        a = momentum * a + g
        w = w - lr * (momentum * a + g)
    """

    def __init__(self, learning_rate: float, momentum: float):
        self._lr = learning_rate
        self._momentum = momentum

    def initialize(self, specs: Any) -> collections.OrderedDict:
        accumulator = _zeros_like_specs(specs)
        return collections.OrderedDict(
            [(_LR, self._lr), (_MOMENTUM, self._momentum), ("accumulator", accumulator)]
        )

    def next(self, state, weights, gradients):
        gradients = tff.learning.optimizers.handle_indexed_slices_gradients(gradients)
        tff.learning.optimizers.check_weights_gradients_match(weights, gradients)
        lr, momentum = state[_LR], state[_MOMENTUM]

        def update(w, a, g):
            if g is None:
                return w, a
            mu = tf.cast(momentum, g.dtype)
            a = mu * a + g
            return w - tf.cast(lr, g.dtype) * (mu * a + g), a

        new_weights, new_accumulator = _map_leaves(
            update, 2, weights, state["accumulator"], gradients
        )
        new_state = collections.OrderedDict(
            [(_LR, lr), (_MOMENTUM, momentum), ("accumulator", new_accumulator)]
        )
        return new_state, new_weights

    def get_hparams(self, state):
        return collections.OrderedDict([(_LR, state[_LR]), (_MOMENTUM, state[_MOMENTUM])])

    def set_hparams(self, state, hparams):
        return tff.structure.update_struct(state, **hparams)


class KerasRMSprop(tff.learning.optimizers.Optimizer):
    """RMSprop, step for step equal to ``keras.optimizers.RMSprop`` (Keras 2.14)::

        v = rho * v + (1 - rho) * g**2
        mg = rho * mg + (1 - rho) * g                     # only if centered
        increment = lr * g / sqrt(v - mg**2 + epsilon)   # mg = 0 if not centered
        m = momentum * m + increment                      # m = increment if momentum == 0
        w = w - m
    """

    def __init__(
        self, learning_rate: float, rho: float, momentum: float, epsilon: float, centered: bool
    ):
        self._lr = learning_rate
        self._rho = rho
        self._momentum = momentum
        self._epsilon = epsilon
        # Structural choices (they decide which slots the state has), not hparams.
        self._use_momentum = momentum > 0
        self._centered = centered

    def initialize(self, specs: Any) -> collections.OrderedDict:
        state = collections.OrderedDict(
            [
                (_LR, self._lr),
                (_RHO, self._rho),
                (_MOMENTUM, self._momentum),
                (_EPSILON, self._epsilon),
            ]
        )
        state["velocity"] = _zeros_like_specs(specs)
        if self._use_momentum:
            state["momentum_accumulator"] = _zeros_like_specs(specs)
        if self._centered:
            state["average_gradient"] = _zeros_like_specs(specs)
        return state

    def next(self, state, weights, gradients):
        gradients = tff.learning.optimizers.handle_indexed_slices_gradients(gradients)
        tff.learning.optimizers.check_weights_gradients_match(weights, gradients)
        lr, rho, momentum, epsilon = (state[k] for k in (_LR, _RHO, _MOMENTUM, _EPSILON))
        # Slots this configuration does not use ride along as the gradients so that
        # every leaf function has the same arity; they are returned unchanged.
        moms = state["momentum_accumulator"] if self._use_momentum else gradients
        avgs = state["average_gradient"] if self._centered else gradients

        def update(w, v, m, mg, g):
            if g is None:
                return w, v, m, mg
            cast = lambda x: tf.cast(x, g.dtype)  # noqa: E731
            v = cast(rho) * v + (1.0 - cast(rho)) * tf.square(g)
            denominator = v + cast(epsilon)
            if self._centered:
                mg = cast(rho) * mg + (1.0 - cast(rho)) * g
                denominator = denominator - tf.square(mg)
            increment = cast(lr) * g * tf.math.rsqrt(denominator)
            if self._use_momentum:
                m = cast(momentum) * m + increment
                increment = m
            return w - increment, v, m, mg

        new_weights, new_v, new_m, new_mg = _map_leaves(
            update, 4, weights, state["velocity"], moms, avgs, gradients
        )
        new_state = collections.OrderedDict(
            [(_LR, lr), (_RHO, rho), (_MOMENTUM, momentum), (_EPSILON, epsilon)]
        )
        new_state["velocity"] = new_v
        if self._use_momentum:
            new_state["momentum_accumulator"] = new_m
        if self._centered:
            new_state["average_gradient"] = new_mg
        return new_state, new_weights

    def get_hparams(self, state):
        return collections.OrderedDict((k, state[k]) for k in (_LR, _RHO, _MOMENTUM, _EPSILON))

    def set_hparams(self, state, hparams):
        return tff.structure.update_struct(state, **hparams)
