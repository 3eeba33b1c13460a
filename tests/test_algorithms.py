"""Federated algorithms: registry, errors, and rounds against Keras/numpy references.

TFF processes are slow to build (seconds each), so every process is built once per
module (``processes`` fixture) and every TFF computation runs inside one
``federated_runtime`` that the module owns and stops at the end.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.federated
tff = pytest.importorskip("tensorflow_federated")

import tensorflow as tf  # noqa: E402

from kerasfed._compat import keras  # noqa: E402
from kerasfed.federated.algorithms import (  # noqa: E402
    ALGORITHM_NAMES,
    Algorithm,
    AlgorithmError,
    AlgorithmTypeError,
    FedAvg,
    FedProx,
    FedSGD,
    MimeLite,
    Scaffold,
    get_algorithm,
)
from kerasfed.federated.client_optimizers import client_optimizer_from_keras  # noqa: E402
from kerasfed.federated.engines.tff.algorithms import build_learning_process  # noqa: E402
from kerasfed.federated.engines.tff.capabilities import TFF_ALGORITHMS  # noqa: E402
from kerasfed.federated.engines.tff.optimizers import (  # noqa: E402
    tff_client_optimizer,
    tff_server_optimizer,
)
from kerasfed.federated.engines.tff.runtime import federated_runtime  # noqa: E402
from kerasfed.federated.server_optimizers import ServerAdam, resolve_server_optimizer  # noqa: E402

_RNG = np.random.default_rng(0)
_KERNEL = _RNG.normal(size=(3, 2)).astype(np.float32)
_BIAS = np.array([0.1, -0.2], np.float32)
# Two clients of different sizes, so that weighted and uniform means differ.
_CLIENTS = [
    (_RNG.normal(size=(n, 3)).astype(np.float32), _RNG.normal(size=(n, 2)).astype(np.float32))
    for n in (4, 6)
]
_CLIENT_LR, _MOMENTUM = 0.1, 0.9


def _keras_model() -> keras.Model:
    init = keras.initializers.Constant
    dense = keras.layers.Dense(2, kernel_initializer=init(_KERNEL), bias_initializer=init(_BIAS))
    return keras.Sequential([keras.Input((3,)), dense])


def _model_fn():
    return tff.learning.models.from_keras_model(
        _keras_model(),
        loss=keras.losses.MeanSquaredError(),
        input_spec=(tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None, 2], tf.float32)),
    )


# The compiled optimizers the tests use; "sgd_momentum" unless a test says otherwise.
_KERAS_OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(_CLIENT_LR, momentum=_MOMENTUM),
    # The two rules kerasfed implements itself (TFF lacks them), inside a real process.
    "sgd_nesterov": lambda: keras.optimizers.SGD(_CLIENT_LR, momentum=_MOMENTUM, nesterov=True),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True),
}


def _datasets(batch_size: int | None = None, clients=_CLIENTS) -> list:
    return [
        tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size or len(x)) for x, y in clients
    ]


def _initial() -> list[np.ndarray]:
    return [_KERNEL, _BIAS]


@pytest.fixture(scope="module")
def runtime():
    with federated_runtime():
        yield


@pytest.fixture(scope="module")
def processes():
    """``get(algorithm, server=("sgd", 1.0), client="sgd_momentum")`` -> the built
    process, cached."""
    cache: dict = {}

    def get(algorithm: Algorithm, server=("sgd", 1.0), client="sgd_momentum"):
        key = (algorithm, server, client)
        if key not in cache:
            compiled = _KERAS_OPTIMIZERS[client]()
            config = {"class_name": type(compiled).__name__, "config": compiled.get_config()}
            spec, lr = server
            cache[key] = build_learning_process(
                algorithm,
                model_fn=_model_fn,
                client_optimizer=tff_client_optimizer(client_optimizer_from_keras(config)),
                server_optimizer=tff_server_optimizer(resolve_server_optimizer(spec), lr),
            )
        return cache[key]

    return get


def _run(process, rounds: int, data: list) -> list[np.ndarray]:
    state = process.initialize()
    for _ in range(rounds):
        state = process.next(state, data).state
    return [np.asarray(w) for w in process.get_model_weights(state).trainable]


def _keras_client_update(
    x, y, weights, mu: float = 0.0, batch_size: int | None = None, optimizer: str = "sgd_momentum"
):
    """One client's local epoch in plain Keras (proximal term added by hand)."""
    model = _keras_model()
    model.set_weights(weights)
    optimizer = _KERAS_OPTIMIZERS[optimizer]()
    start = [v.numpy() for v in model.trainable_variables]
    batch_size = batch_size or len(x)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(yb, model(xb))
        grads = tape.gradient(loss, model.trainable_variables)
        grads = [g + mu * (v - s) for g, v, s in zip(grads, model.trainable_variables, start)]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return [v.numpy() for v in model.trainable_variables]


def _mean(weight_lists, coefficients):
    coefficients = np.asarray(coefficients, np.float64) / np.sum(coefficients)
    return [sum(c * w for c, w in zip(coefficients, layer)) for layer in zip(*weight_lists)]


def _assert_weights_close(got, expected, rtol=1e-5, atol=1e-6):
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


_SIZES = [len(x) for x, _ in _CLIENTS]


# ---- the contract every registered algorithm meets -------------------------------


# The registered algorithms TFF has builders for (SCAFFOLD runs on the native engine:
# tests/test_scaffold.py).
_TFF_NAMES = [n for n in ALGORITHM_NAMES if type(get_algorithm(n)) in TFF_ALGORITHMS]


@pytest.mark.parametrize("name", _TFF_NAMES)
def test_every_algorithm_trains_one_round(name, processes, runtime):
    algorithm = get_algorithm(name)
    assert algorithm.name == name
    process = processes(algorithm)
    assert isinstance(process, tff.learning.templates.LearningProcess)
    weights = _run(process, 1, _datasets(batch_size=2))
    for w, w0 in zip(weights, _initial()):
        assert np.all(np.isfinite(w))
        assert not np.allclose(w, w0)


# ---- numbers against independent references ---------------------------------------


def test_fedavg_is_the_example_weighted_mean_of_keras_clients(processes, runtime):
    got = _run(processes(FedAvg()), 1, _datasets())
    clients = [_keras_client_update(x, y, _initial()) for x, y in _CLIENTS]
    _assert_weights_close(got, _mean(clients, _SIZES))
    assert not np.allclose(got[0], _mean(clients, [1, 1])[0])


@pytest.mark.parametrize("client", ["sgd_nesterov", "rmsprop"])
def test_fedavg_with_kerasfeds_own_client_rules_matches_keras(client, processes, runtime):
    got = _run(processes(FedAvg(), client=client), 1, _datasets(batch_size=2))
    clients = [
        _keras_client_update(x, y, _initial(), batch_size=2, optimizer=client) for x, y in _CLIENTS
    ]
    _assert_weights_close(got, _mean(clients, _SIZES), rtol=1e-4, atol=1e-5)


def test_unweighted_fedavg_is_the_plain_mean_of_keras_clients(processes, runtime):
    # TFF's unweighted builder must give the plain mean.
    got = _run(processes(FedAvg(weighted=False)), 1, _datasets())
    clients = [_keras_client_update(x, y, _initial()) for x, y in _CLIENTS]
    _assert_weights_close(got, _mean(clients, [1, 1]))


@pytest.mark.parametrize("batch_size", [None, 2])
def test_fedsgd_steps_on_the_example_weighted_mean_gradient(batch_size, processes, runtime):
    process = processes(FedSGD(), server=("sgd", 0.5))
    got = _run(process, 1, _datasets(batch_size))
    model = _keras_model()
    grads = []
    for x, y in _CLIENTS:
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(y, model(x))
        grads.append([g.numpy() for g in tape.gradient(loss, model.trainable_variables)])
    mean_grad = _mean(grads, _SIZES)
    # The compiled optimizer (lr 0.1, momentum) plays no part: the server's lr 0.5 does.
    _assert_weights_close(got, [w - 0.5 * g for w, g in zip(_initial(), mean_grad)])


def test_fedprox_adds_the_proximal_gradient(processes, runtime):
    mu = 1.0
    got = _run(processes(FedProx(mu=mu)), 1, _datasets(batch_size=2))
    clients = [_keras_client_update(x, y, _initial(), mu=mu, batch_size=2) for x, y in _CLIENTS]
    _assert_weights_close(got, _mean(clients, _SIZES))
    plain = [_keras_client_update(x, y, _initial(), batch_size=2) for x, y in _CLIENTS]
    fedavg = _mean(plain, _SIZES)
    assert not np.allclose(got[0], fedavg[0], atol=1e-3)  # mu changed the result


def test_tff_fedprox_has_the_wrong_sign_so_kerasfed_does_not_use_it(runtime):
    # Guards the reason FedProx wraps the client optimizer: if TFF fixes its sign,
    # this fails and kerasfed can go back to tff.learning.algorithms.build_*_fed_prox.
    mu = 1.0
    process = tff.learning.algorithms.build_weighted_fed_prox(
        _model_fn,
        proximal_strength=mu,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(_CLIENT_LR, _MOMENTUM),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0),
    )
    got = _run(process, 1, _datasets(batch_size=2))
    flipped = [_keras_client_update(x, y, _initial(), mu=-mu, batch_size=2) for x, y in _CLIENTS]
    _assert_weights_close(got, _mean(flipped, _SIZES))


def test_fedprox_with_mu_0_warns_and_equals_fedavg_after_two_rounds(processes, runtime):
    with pytest.warns(UserWarning, match=r"mu=0.0 has no proximal term: it is FedAvg") as record:
        fedprox = FedProx(mu=0.0)
    assert record[0].filename == __file__  # stacklevel points at the caller
    data = _datasets(batch_size=2)
    _assert_weights_close(_run(processes(fedprox), 2, data), _run(processes(FedAvg()), 2, data))


def test_fedadam_server_steps_match_numpy(processes, runtime):
    # One client, one local step per round: its delta is exactly a Keras step.
    lr, adam = 0.1, ServerAdam()
    process = processes(FedAvg(), server=(adam, lr))
    data = _datasets(clients=_CLIENTS[:1])
    got = _run(process, 2, data)
    x, y = _CLIENTS[0]
    w = [v.astype(np.float64) for v in _initial()]
    m = [np.zeros_like(v) for v in w]
    v2 = [np.zeros_like(v) for v in w]
    for t in (1, 2):
        # The client optimizer restarts every round, so each round is one fresh step.
        trained = _keras_client_update(x, y, [p.astype(np.float32) for p in w])
        g = [p - q for p, q in zip(w, trained)]  # pseudo-gradient: -delta
        lr_t = lr * np.sqrt(1 - adam.beta_2**t) / (1 - adam.beta_1**t)
        m = [adam.beta_1 * a + (1 - adam.beta_1) * b for a, b in zip(m, g)]
        v2 = [adam.beta_2 * a + (1 - adam.beta_2) * b**2 for a, b in zip(v2, g)]
        w = [p - lr_t * a / (np.sqrt(b) + adam.epsilon) for p, a, b in zip(w, m, v2)]
    _assert_weights_close(got, w, rtol=1e-4, atol=1e-5)


# ---- registry and errors -----------------------------------------------------------


def test_registry_names_and_values():
    assert ALGORITHM_NAMES == ("fedavg", "fedavg_unweighted", "fedsgd", "fedprox", "mime",
                               "scaffold", "ditto", "fednova")
    ditto = get_algorithm("ditto")
    assert type(ditto).__name__ == "Ditto" and ditto.lam == 0.1
    assert get_algorithm("scaffold") == Scaffold(weighted=False)
    assert get_algorithm("FedAvg") == FedAvg()
    assert get_algorithm("fedavg_unweighted") == FedAvg(weighted=False)
    assert get_algorithm("fedprox") == FedProx(mu=0.01)
    assert get_algorithm("mime") == MimeLite()
    custom = FedProx(mu=0.5, weighted=False)
    assert get_algorithm(custom) is custom
    assert custom.name == "fedprox_unweighted"
    assert MimeLite(weighted=False).name == "mime_unweighted"
    assert FedSGD.uses_client_optimizer is False and FedAvg.uses_client_optimizer is True


def test_unknown_algorithm_lists_the_valid_names():
    names = (r"\['fedavg', 'fedavg_unweighted', 'fedsgd', 'fedprox', 'mime', 'scaffold', "
             r"'ditto', 'fednova'\]")
    with pytest.raises(AlgorithmError, match=rf"algorithm='feddyn'.*{names}"):
        get_algorithm("feddyn")


@pytest.mark.parametrize("spec", [None, 1, FedAvg])
def test_wrong_algorithm_type_names_the_accepted_types(spec):
    accepted = (r"name in \[.*or an Algorithm \(FedAvg, FedProx, FedSGD, MimeLite, Scaffold, "
                r"Ditto, FedNova, FedBuff, or a subclass of kerasfed.Algorithm\)")
    with pytest.raises(AlgorithmTypeError, match=accepted):
        get_algorithm(spec)


@pytest.mark.parametrize("mu", [-0.1, float("nan"), float("inf")])
def test_fedprox_rejects_a_bad_mu(mu):
    with pytest.raises(AlgorithmError, match=r"`mu` of FedProx to be a finite float >= 0"):
        FedProx(mu=mu)


@pytest.mark.parametrize("mu", ["0.1", None, True])
def test_fedprox_rejects_a_mu_that_is_not_a_number(mu):
    with pytest.raises(AlgorithmTypeError, match=r"`mu` of FedProx to be a float"):
        FedProx(mu=mu)


def test_fedprox_with_positive_mu_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FedProx(mu=1).mu == 1.0


@pytest.mark.parametrize("cls", [FedAvg, FedProx, MimeLite])
def test_weighted_must_be_a_bool(cls):
    message = rf"`weighted` of {cls.__name__} to be True or False"
    with pytest.raises(AlgorithmTypeError, match=message):
        cls(weighted="yes")
