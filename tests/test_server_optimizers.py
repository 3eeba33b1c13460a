"""Server optimizers take the steps of their papers' rules (numpy references), on both
engines: TFF's ``tff.learning.optimizers`` and the native engine's ``server_rule``."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.federated
# Names and hyper-parameter checks need no TFF; only building the optimizers does.
requires_tff = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_federated") is None, reason="needs TensorFlow Federated"
)

from kerasfed.federated.server_optimizers import (  # noqa: E402
    SERVER_OPTIMIZER_NAMES,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizerError,
    ServerOptimizerTypeError,
    ServerSGD,
    ServerYogi,
    check_server_learning_rate,
    resolve_server_optimizer,
)

_RNG = np.random.default_rng(1)
_W0 = _RNG.normal(size=(5,)).astype(np.float32)
# Pseudo-gradients (-average client delta) of 4 rounds, one coordinate always 0.
_GRADS = [
    np.append(_RNG.normal(scale=s, size=(4,)), 0.0).astype(np.float32) for s in (1, 0.1, 2, 0.5)
]


def _numpy_steps(rule, lr: float) -> np.ndarray:
    w = _W0.astype(np.float64)
    state: dict = {}
    for t, g in enumerate(_GRADS, start=1):
        w = rule(state, w, g.astype(np.float64), t, lr)
    return w


def _sgd(momentum):
    def rule(s, w, g, t, lr):
        s["v"] = momentum * s.get("v", 0.0) + g
        return w - lr * s["v"]

    return rule


def _adam(b1, b2, eps):
    def rule(s, w, g, t, lr):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g**2
        lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)  # TFF's bias correction
        return w - lr_t * s["m"] / (np.sqrt(s["v"]) + eps)

    return rule


def _yogi(b1, b2, eps, v0):
    def rule(s, w, g, t, lr):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        v = s.get("v", np.full_like(g, v0))
        s["v"] = v - (1 - b2) * np.sign(v - g**2) * g**2  # Reddi et al., Algorithm 2
        lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        return w - lr_t * s["m"] / (np.sqrt(s["v"]) + eps)

    return rule


def _adagrad(v0, eps):
    def rule(s, w, g, t, lr):
        s["v"] = s.get("v", v0) + g**2
        return w - lr * g / np.sqrt(s["v"] + eps)

    return rule


def _tff_steps(optimizer) -> np.ndarray:
    import tensorflow as tf  # noqa: PLC0415

    weights = tf.constant(_W0)
    state = optimizer.initialize(tf.TensorSpec(_W0.shape, tf.float32))
    state = tf.nest.map_structure(tf.convert_to_tensor, state)  # as TFF passes it
    step = tf.function(optimizer.next)  # TFF runs the server optimizer in a graph
    for g in _GRADS:
        state, weights = step(state, weights, tf.constant(g))
    return np.asarray(weights)


_CASES = {
    "sgd_default": ("sgd", _sgd(0.0)),
    "sgd_momentum": (ServerSGD(momentum=0.9), _sgd(0.9)),
    "adam_default": ("adam", _adam(0.9, 0.99, 1e-3)),
    "adam_params": (ServerAdam(beta_1=0.5, beta_2=0.9, epsilon=1e-2), _adam(0.5, 0.9, 1e-2)),
    "yogi_default": ("Yogi", _yogi(0.9, 0.99, 1e-3, 1e-6)),
    "yogi_params": (
        ServerYogi(beta_1=0.0, beta_2=0.5, epsilon=0.1, initial_accumulator_value=0.3),
        _yogi(0.0, 0.5, 0.1, 0.3),
    ),
    "adagrad_default": ("adagrad", _adagrad(0.0, 1e-6)),
    "adagrad_params": (
        ServerAdagrad(initial_accumulator_value=0.1, epsilon=0.0),
        _adagrad(0.1, 0.0),
    ),
}


@requires_tff
@pytest.mark.parametrize(("spec", "rule"), _CASES.values(), ids=_CASES.keys())
def test_server_optimizer_matches_numpy(spec, rule):
    lr = 0.3
    from kerasfed.federated.engines.tff.optimizers import tff_server_optimizer  # noqa: PLC0415

    got = _tff_steps(tff_server_optimizer(resolve_server_optimizer(spec), lr))
    np.testing.assert_allclose(got, _numpy_steps(rule, lr), rtol=1e-5, atol=1e-6)
    assert got[-1] == _W0[-1]  # a coordinate whose update is always 0 stays put


def _native_steps(rule, grads, initial):
    """``rule`` (a native ``Rule``) stepped over ``grads``, as the engine runs it (in a graph)."""
    import tensorflow as tf  # noqa: PLC0415

    weights = [tf.constant(w) for w in initial]
    state = rule.init(weights)
    step = tf.function(rule.step)
    for g in grads:
        state, weights = step(state, weights, [tf.constant(x) for x in g])
    return state, [np.asarray(w) for w in weights]


@pytest.mark.native  # needs no TFF: runs under the newest TF too
@pytest.mark.parametrize(("spec", "rule"), _CASES.values(), ids=_CASES.keys())
def test_native_server_rule_matches_numpy(spec, rule):
    from kerasfed.federated.engines.native.optimizers import server_rule  # noqa: PLC0415

    lr = 0.3
    _, (got,) = _native_steps(
        server_rule(resolve_server_optimizer(spec), lr), [[g] for g in _GRADS], [_W0]
    )
    np.testing.assert_allclose(got, _numpy_steps(rule, lr), rtol=1e-5, atol=1e-6)
    assert got[-1] == _W0[-1]  # a coordinate whose update is always 0 stays put


# The native rule against TFF's optimizer on the same random pseudo-gradients: the
# weights and every state slot, which checkpoints carry between the engines.
_SHAPES = [(3,), (2, 4)]
_AGAINST_TFF = {
    "sgd": ServerSGD(),
    "sgd_momentum": ServerSGD(momentum=0.9),
    "adam": ServerAdam(),
    "yogi": ServerYogi(),
    "adagrad": ServerAdagrad(),
}


@requires_tff
@pytest.mark.parametrize("optimizer", _AGAINST_TFF.values(), ids=_AGAINST_TFF.keys())
def test_native_server_rule_equals_tffs_step_for_step(optimizer):
    import tensorflow as tf  # noqa: PLC0415

    from kerasfed.federated.engines.native.optimizers import server_rule  # noqa: PLC0415
    from kerasfed.federated.engines.tff.optimizers import tff_server_optimizer  # noqa: PLC0415

    lr = 0.3
    rng = np.random.default_rng(7)
    initial = [rng.normal(size=s).astype(np.float32) for s in _SHAPES]
    grads = [[rng.normal(size=s).astype(np.float32) for s in _SHAPES] for _ in range(3)]

    tff_optimizer = tff_server_optimizer(optimizer, lr)
    tff_state = tff_optimizer.initialize([tf.TensorSpec(s, tf.float32) for s in _SHAPES])
    tff_state = tf.nest.map_structure(tf.convert_to_tensor, tff_state)  # as TFF passes it
    hyperparameters = set(tff_optimizer.get_hparams(tff_state))
    tff_step = tf.function(tff_optimizer.next)
    tff_weights = [tf.constant(w) for w in initial]
    for g in grads:
        tff_state, tff_weights = tff_step(tff_state, tff_weights, [tf.constant(x) for x in g])

    rule = server_rule(optimizer, lr)
    native_state, native_weights = _native_steps(rule, grads, initial)

    for n, t in zip(native_weights, tff_weights):
        np.testing.assert_allclose(n, np.asarray(t), rtol=0, atol=1e-6)
    assert not np.allclose(native_weights[0], initial[0])
    # The slots: TFF's state keys less its hyper-parameters, with TFF's dtypes.
    slots = set(tff_state) - hyperparameters
    assert set(native_state) == slots == set(rule.slots())
    assert rule.num_hyperparameters() == len(hyperparameters)
    for slot in slots:
        want = tf.nest.flatten(tff_state[slot])
        have = tf.nest.flatten(native_state[slot])
        assert len(have) == len(want), slot
        for h, w in zip(have, want):
            assert tf.convert_to_tensor(h).dtype == tf.convert_to_tensor(w).dtype, slot
            np.testing.assert_allclose(np.asarray(h), np.asarray(w), rtol=1e-6, atol=1e-6)
    if "step" in slots:
        assert native_state["step"].dtype == tf.int32 and int(native_state["step"]) == 3


def test_every_registered_name_resolves_to_its_class():
    for name in SERVER_OPTIMIZER_NAMES:
        optimizer = resolve_server_optimizer(name)
        assert optimizer.name == name
        assert optimizer == type(optimizer)()  # defaults, comparable as values
    assert set(SERVER_OPTIMIZER_NAMES) == {"sgd", "adam", "yogi", "adagrad"}


def test_defaults_follow_reddi_et_al():
    assert ServerAdam() == ServerAdam(beta_1=0.9, beta_2=0.99, epsilon=1e-3)
    assert ServerYogi() == ServerYogi(0.9, 0.99, 1e-3, 1e-6)
    assert ServerSGD().momentum == 0.0


def test_instances_are_frozen_and_store_floats():
    optimizer = ServerSGD(momentum=0)
    assert isinstance(optimizer.momentum, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        optimizer.momentum = 0.5  # type: ignore[misc]


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(
        ServerOptimizerError, match=r"server_optimizer='lamb'.*\['sgd', 'adam', 'yogi', 'adagrad'\]"
    ):
        resolve_server_optimizer("lamb")


@pytest.mark.parametrize("spec", [None, 3, object()])
def test_wrong_spec_type_names_the_accepted_types(spec):
    message = r"name in \[.*or a ServerOptimizer \(ServerSGD"
    with pytest.raises(ServerOptimizerTypeError, match=message):
        resolve_server_optimizer(spec)


@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan"), float("inf")])
def test_rejects_a_non_positive_learning_rate(lr):
    message = r"`server_learning_rate` to be a positive float.*Received"
    with pytest.raises(ServerOptimizerError, match=message):
        check_server_learning_rate(lr)


@pytest.mark.parametrize("lr", ["1.0", None, True])
def test_rejects_a_learning_rate_that_is_not_a_number(lr):
    with pytest.raises(ServerOptimizerTypeError, match=r"server_learning_rate=.* of type"):
        check_server_learning_rate(lr)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ServerSGD(momentum=1.0), r"`momentum` of ServerSGD to be in \[0, 1\).*=1.0"),
        (lambda: ServerSGD(momentum=-0.1), r"`momentum` of ServerSGD to be in \[0, 1\)"),
        (lambda: ServerAdam(beta_1=1.0), r"`beta_1` of ServerAdam to be in \[0, 1\)"),
        (lambda: ServerAdam(beta_2=-0.5), r"`beta_2` of ServerAdam to be in \[0, 1\)"),
        (lambda: ServerAdam(epsilon=0.0), r"`epsilon` of ServerAdam to be > 0"),
        (lambda: ServerAdam(epsilon=float("nan")), r"`epsilon` of ServerAdam to be > 0"),
        (lambda: ServerYogi(beta_2=1.5), r"`beta_2` of ServerYogi"),
        (lambda: ServerYogi(epsilon=-1.0), r"`epsilon` of ServerYogi to be > 0"),
        (lambda: ServerYogi(initial_accumulator_value=-1.0), r"`initial_accum.*of ServerYogi"),
        (lambda: ServerAdagrad(initial_accumulator_value=-1.0), r"`initial_accum.*ServerAdagrad"),
        (lambda: ServerAdagrad(epsilon=-1e-6), r"`epsilon` of ServerAdagrad to be >= 0"),
        (lambda: ServerAdagrad(epsilon=0.0), r"both are 0.*epsilon=1e-6"),
    ],
)
def test_rejects_out_of_range_hyper_parameters(make, message):
    with pytest.raises(ServerOptimizerError, match=message):
        make()


@pytest.mark.parametrize("value", ["0.9", None, True])
def test_rejects_hyper_parameters_that_are_not_numbers(value):
    with pytest.raises(ServerOptimizerTypeError, match=r"`momentum` of ServerSGD to be a float"):
        ServerSGD(momentum=value)
