"""FedProx's proximal term as a wrapper around the client optimizer.

FedProx (Li et al. 2020) minimises ``F_k(w) + mu/2 * ||w - w_t||**2`` on each
client, where ``w_t`` is the model the client received this round; the gradient
gains ``mu * (w - w_t)``. TFF 0.87's own FedProx
(``tff.learning.algorithms.build_weighted_fed_prox``) adds ``mu * (w_t - w)``
instead (``proximal_client_work.py``: ``delta_l2_regularizer * (y - x)`` with
``x`` the current and ``y`` the initial weights), which pushes clients *away*
from the server model; kerasfed's test reproduces that. So kerasfed runs FedAvg
with this wrapper as the client optimizer.

The wrapper needs ``w_t`` but a TFF optimizer's ``initialize`` only sees weight
*specs*. TFF's FedAvg client work initializes the client optimizer at the start
of every client's local training and calls ``next`` first with the received
weights, so the wrapper records the weights of its first step as the anchor.
This module imports TensorFlow Federated; import it only where TFF exists.
"""

from __future__ import annotations

import collections
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

PROXIMAL_STRENGTH_KEY = "proximal_strength"


class ProximalOptimizer(tff.learning.optimizers.Optimizer):
    """``base`` applied to ``gradient + mu * (w - w_first_step)``."""

    def __init__(self, base: tff.learning.optimizers.Optimizer, mu: float):
        self._base = base
        self._mu = mu

    def initialize(self, specs: Any) -> collections.OrderedDict:
        return collections.OrderedDict(
            [
                ("base", self._base.initialize(specs)),
                (PROXIMAL_STRENGTH_KEY, self._mu),
                ("anchor", tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), specs)),
                ("step", tf.constant(0, tf.int32)),
            ]
        )

    def next(self, state, weights, gradients):
        gradients = tff.learning.optimizers.handle_indexed_slices_gradients(gradients)
        tff.learning.optimizers.check_weights_gradients_match(weights, gradients)
        first = tf.equal(state["step"], 0)
        anchor = tf.nest.map_structure(
            lambda a, w: tf.where(first, w, a), state["anchor"], weights
        )
        mu = state[PROXIMAL_STRENGTH_KEY]

        def proximal(g, w, a):
            return None if g is None else g + tf.cast(mu, g.dtype) * (w - a)

        gradients = tf.nest.map_structure(proximal, gradients, weights, anchor)
        base_state, new_weights = self._base.next(state["base"], weights, gradients)
        new_state = collections.OrderedDict(
            [
                ("base", base_state),
                (PROXIMAL_STRENGTH_KEY, mu),
                ("anchor", anchor),
                ("step", state["step"] + 1),
            ]
        )
        return new_state, new_weights

    def get_hparams(self, state):
        hparams = collections.OrderedDict(self._base.get_hparams(state["base"]))
        hparams[PROXIMAL_STRENGTH_KEY] = state[PROXIMAL_STRENGTH_KEY]
        return hparams

    def set_hparams(self, state, hparams):
        base_hparams = collections.OrderedDict(
            (k, v) for k, v in hparams.items() if k != PROXIMAL_STRENGTH_KEY
        )
        return collections.OrderedDict(
            [
                ("base", self._base.set_hparams(state["base"], base_hparams)),
                (PROXIMAL_STRENGTH_KEY, hparams[PROXIMAL_STRENGTH_KEY]),
                ("anchor", state["anchor"]),
                ("step", state["step"]),
            ]
        )
