"""The client and server update rules as pure functions of tensors.

Each rule is ``init(weights) -> state`` and ``step(state, weights, grads) ->
(state, weights)`` over lists of tensors, with no ``tf.Variable``, so one rule
steps a single client, or every client of a round at once under
``tf.vectorized_map``. The formulas are those of the compiled Keras optimizers
(clients) and of ``tff.learning.optimizers`` (server), which
``tests/test_client_optimizers.py`` and ``tests/test_native_engine.py`` check
step for step. State slots are named as TFF names them (``accumulator``,
``preconditioner``, ``step``), so a checkpoint's server-optimizer state means the
same on both engines.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from kerasfed.federated.client_optimizers import ClientOptimizerSpec
from kerasfed.federated.server_optimizers import (
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerYogi,
)

State = dict[str, Any]


def _zeros(weights) -> list[tf.Tensor]:
    return [tf.zeros_like(w) for w in weights]


def _full(weights, value: float) -> list[tf.Tensor]:
    return [tf.fill(tf.shape(w), tf.cast(value, w.dtype)) for w in weights]


@dataclasses.dataclass(frozen=True)
class Rule:
    """A first-order update rule with fixed hyper-parameters."""

    kind: str  # sgd, nesterov, adam, yogi, adagrad, rmsprop
    learning_rate: float
    momentum: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    weight_decay: float = 0.0
    initial_accumulator: float = 0.0
    rho: float = 0.9
    centered: bool = False

    # -- state ------------------------------------------------------------------
    def slots(self) -> tuple[str, ...]:
        """Names of the per-weight state lists (plus ``step`` where counted)."""
        return {
            "sgd": ("accumulator",) if self.momentum else (),
            "nesterov": ("accumulator",),
            "adam": ("step", "accumulator", "preconditioner"),
            "yogi": ("step", "accumulator", "preconditioner"),
            "adagrad": ("preconditioner",),
            "rmsprop": ("velocity",)
            + (("momentum_accumulator",) if self.momentum else ())
            + (("average_gradient",) if self.centered else ()),
        }[self.kind]

    def num_hyperparameters(self) -> int:
        """How many scalar hyper-parameters TFF's version of this rule keeps in its state."""
        return {
            "sgd": 2 if self.momentum else 1,
            "nesterov": 2,
            "adam": 5 if self.weight_decay else 4,
            "yogi": 4,
            "adagrad": 2,
            "rmsprop": 4,
        }[self.kind]

    def init(self, weights) -> State:
        state: State = {}
        for slot in self.slots():
            if slot == "step":
                state[slot] = tf.zeros((), tf.int32)  # TFF counts in int32
            elif slot == "preconditioner" and self.kind in ("yogi", "adagrad"):
                state[slot] = _full(weights, self.initial_accumulator)
            else:
                state[slot] = _zeros(weights)
        return state

    # -- update -----------------------------------------------------------------
    def step(self, state: State, weights, grads) -> tuple[State, list[tf.Tensor]]:
        return getattr(self, f"_{self.kind}")(state, list(weights), list(grads))

    def _sgd(self, state, weights, grads):
        lr = self.learning_rate
        if not self.momentum:
            return state, [w - lr * g for w, g in zip(weights, grads)]
        acc = [self.momentum * a + g for a, g in zip(state["accumulator"], grads)]
        return {"accumulator": acc}, [w - lr * a for w, a in zip(weights, acc)]

    def _nesterov(self, state, weights, grads):
        mu, lr = self.momentum, self.learning_rate
        acc = [mu * a + g for a, g in zip(state["accumulator"], grads)]
        new = [w - lr * (mu * a + g) for w, a, g in zip(weights, acc, grads)]
        return {"accumulator": acc}, new

    def _adam_like(self, state, weights, grads, second_moment):
        b1, b2, eps, lr = self.beta_1, self.beta_2, self.epsilon, self.learning_rate
        step = state["step"] + 1
        t = tf.cast(step, weights[0].dtype)
        lr_t = lr * tf.sqrt(1.0 - tf.pow(b2, t)) / (1.0 - tf.pow(b1, t))
        m = [b1 * a + (1.0 - b1) * g for a, g in zip(state["accumulator"], grads)]
        v = [second_moment(p, g) for p, g in zip(state["preconditioner"], grads)]
        new = []
        for w, mi, vi in zip(weights, m, v):
            if self.weight_decay:  # decoupled, before the step, as Keras and TFF's AdamW
                w = w - lr * self.weight_decay * w
            new.append(w - lr_t * mi / (tf.sqrt(vi) + eps))
        return {"step": step, "accumulator": m, "preconditioner": v}, new

    def _adam(self, state, weights, grads):
        b2 = self.beta_2
        return self._adam_like(state, weights, grads, lambda v, g: b2 * v + (1.0 - b2) * g * g)

    def _yogi(self, state, weights, grads):
        b2 = self.beta_2

        def second(v, g):
            g2 = g * g
            return v - (1.0 - b2) * tf.sign(v - g2) * g2

        return self._adam_like(state, weights, grads, second)

    def _adagrad(self, state, weights, grads):
        pre = [p + g * g for p, g in zip(state["preconditioner"], grads)]
        new = [
            w - self.learning_rate * g / tf.sqrt(p + self.epsilon)
            for w, g, p in zip(weights, grads, pre)
        ]
        return {"preconditioner": pre}, new

    def _rmsprop(self, state, weights, grads):
        rho, lr, eps, mu = self.rho, self.learning_rate, self.epsilon, self.momentum
        out: State = {}
        v = [rho * a + (1.0 - rho) * g * g for a, g in zip(state["velocity"], grads)]
        out["velocity"] = v
        denominators = [vi + eps for vi in v]
        if self.centered:
            mg = [rho * a + (1.0 - rho) * g for a, g in zip(state["average_gradient"], grads)]
            denominators = [d - m * m for d, m in zip(denominators, mg)]
        increments = [lr * g * tf.math.rsqrt(d) for g, d in zip(grads, denominators)]
        if mu:
            increments = [mu * m + i for m, i in zip(state["momentum_accumulator"], increments)]
            out["momentum_accumulator"] = increments
        if self.centered:
            out["average_gradient"] = mg
        return out, [w - i for w, i in zip(weights, increments)]


def client_rule(spec: ClientOptimizerSpec) -> Rule:
    """The update rule of the compiled Keras optimizer (see ``optimizer_settings``)."""
    p = spec.params
    if spec.kind == "sgd":
        kind = "nesterov" if p.get("nesterov") and p.get("momentum") else "sgd"
        return Rule(kind, spec.learning_rate, momentum=p.get("momentum", 0.0))
    if spec.kind in ("adam", "adamw"):
        return Rule(
            "adam", spec.learning_rate, beta_1=p["beta_1"], beta_2=p["beta_2"],
            epsilon=p["epsilon"], weight_decay=p.get("weight_decay", 0.0),
        )
    if spec.kind == "adagrad":
        return Rule(
            "adagrad", spec.learning_rate, epsilon=p["epsilon"],
            initial_accumulator=p["initial_accumulator_value"],
        )
    if spec.kind == "rmsprop":
        return Rule(
            "rmsprop", spec.learning_rate, rho=p["rho"], momentum=p.get("momentum", 0.0),
            epsilon=p["epsilon"], centered=p.get("centered", False),
        )
    raise ValueError(f"no native rule for client optimizer {spec.kind!r}")


def server_rule(optimizer: ServerOptimizer, learning_rate: float) -> Rule:
    """The update rule ``tff.learning.optimizers`` builds for a server optimizer."""
    if isinstance(optimizer, ServerSGD):
        return Rule("sgd", learning_rate, momentum=optimizer.momentum)
    if isinstance(optimizer, ServerAdam):
        return Rule("adam", learning_rate, beta_1=optimizer.beta_1, beta_2=optimizer.beta_2,
                    epsilon=optimizer.epsilon)
    if isinstance(optimizer, ServerYogi):
        return Rule("yogi", learning_rate, beta_1=optimizer.beta_1, beta_2=optimizer.beta_2,
                    epsilon=optimizer.epsilon,
                    initial_accumulator=optimizer.initial_accumulator_value)
    if isinstance(optimizer, ServerAdagrad):
        return Rule("adagrad", learning_rate, epsilon=optimizer.epsilon,
                    initial_accumulator=optimizer.initial_accumulator_value)
    raise ValueError(f"no native rule for server optimizer {optimizer!r}")
