"""The native engine against independent references: plain Keras, numpy, and the TFF engine.

Runs in both environments (TF 2.14 / Keras 2 and TF 2.21 / Keras 3); the tests
that compare with the TFF engine need TFF and are skipped where it is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import kerasfed
from kerasfed._compat import KERAS_3, keras, tff_available
from kerasfed.federated.engines import ClientRound, EngineSetup
from kerasfed.federated.engines.native.engine import NativeEngine

pytestmark = pytest.mark.native
needs_tff = pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")

SIZES = (7, 23, 50)
FEATURES, CLASSES = 5, 3


def _clients(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"c{i}": (rng.normal(size=(n, FEATURES)).astype("float32"),
                  rng.integers(0, CLASSES, n).astype("int32"))
        for i, n in enumerate(sizes)
    }


def _model(optimizer=None, seed=1, batchnorm=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(CLASSES, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _keras_fedavg(make_model, clients, *, epochs, batch_size, weighted=True):
    """Each client trained alone with model.fit from the same start, then the mean."""
    start = make_model().get_weights()
    finals, sizes = [], []
    for x, y in clients.values():
        model = make_model()
        model.set_weights(start)
        model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
        finals.append(model.get_weights())
        sizes.append(len(x))
    w = np.asarray(sizes, np.float64) if weighted else np.ones(len(sizes))
    return [sum(wi * f[i] for wi, f in zip(w, finals)) / w.sum() for i in range(len(start))]


def _max_diff(a, b):
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("weighted", [True, False])
def test_one_round_equals_each_client_trained_alone_with_keras(weighted):
    clients = _clients()
    history = kerasfed.fit_federated(
        _model(), clients, rounds=1, local_epochs=2, batch_size=8, shuffle=False,
        algorithm="fedavg" if weighted else "fedavg_unweighted", engine="native", verbose=0,
    )
    reference = _keras_fedavg(_model, clients, epochs=2, batch_size=8, weighted=weighted)
    assert _max_diff(history.model.get_weights(), reference) < 1e-5
    assert history.params["engine"] == "native"
    assert history.history["num_examples"] == [2 * sum(SIZES)]


def _engine(model, form, *, max_parallel=None, algorithm=None):
    from kerasfed._keras_model import ModelRecipe
    from kerasfed.federated.client_optimizers import client_optimizer_from_keras
    from kerasfed.federated.compiled_parts import CompiledParts

    recipe = ModelRecipe.from_model(model, caller="test", rebuild=False)
    spec = (tf.TensorSpec((None, FEATURES), tf.float32), tf.TensorSpec((None,), tf.int32))
    setup = EngineSetup(
        model=model, recipe=recipe,
        parts=CompiledParts.of(recipe, spec[1], model.output_shape),
        algorithm=algorithm or kerasfed.FedAvg(),
        client_optimizer=client_optimizer_from_keras(recipe.optimizer_config()),
        server_optimizer=kerasfed.ServerSGD(), server_learning_rate=1.0, batch_size=8,
        element_spec=spec, federated_evaluation=True, max_parallel_clients=max_parallel,
    )
    return NativeEngine(setup, form=form)


@pytest.mark.parametrize("form", ["lockstep+xla", "lockstep", "sequential", "sequential-2"])
def test_every_form_equals_keras(form, monkeypatch):
    if form == "sequential-2":  # two clients side by side, as with one thread per op
        import kerasfed.federated.engines.native.engine as native

        monkeypatch.setattr(native, "_clients_in_flight", lambda: 2)
        form = "sequential"
    clients = _clients()
    model = _model(keras.optimizers.SGD(0.1, momentum=0.9))
    engine = _engine(model, form)
    rounds = [ClientRound(c, x, y, np.tile(np.arange(len(x)), (2, 1)))
              for c, (x, y) in clients.items()]
    state, result = engine.train_round(engine.initial_state(model.get_weights()), rounds, 0)
    reference = _keras_fedavg(lambda: _model(keras.optimizers.SGD(0.1, momentum=0.9)),
                              clients, epochs=2, batch_size=8)
    assert engine.form == form
    assert _max_diff(engine.get_weights(state), reference) < 1e-5
    assert result.metrics["accuracy"] >= 0  # the deferred metric updates ran
    assert result.num_examples == 2 * sum(SIZES)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_chunk_size_never_changes_the_result(in_flight, monkeypatch):
    if in_flight > 1:  # the sequential form, two clients side by side (one thread per op)
        import kerasfed.federated.engines.native.engine as native

        monkeypatch.setattr(native, "_clients_in_flight", lambda: in_flight)
        monkeypatch.setattr(native, "_choose_form", lambda model, requested: ("sequential", "test"))
    clients = _clients((7, 23, 50, 11, 3, 30, 9))
    weights = []
    for chunk in (1, 3, None):
        history = kerasfed.fit_federated(
            _model(), clients, rounds=2, clients_per_round=5, batch_size=8, seed=4,
            max_parallel_clients=chunk, engine="native", verbose=0,
        )
        assert ("2 clients at a time" in history.params["engine_form"]) == (in_flight > 1)
        weights.append(history.model.get_weights())
        losses = history.history["loss"]
    assert _max_diff(weights[0], weights[1]) < 1e-6
    assert _max_diff(weights[0], weights[2]) < 1e-6
    assert all(np.isfinite(losses))


@pytest.mark.parametrize(
    "engine", ["native", pytest.param("tff", marks=[needs_tff, pytest.mark.federated])]
)
def test_fedsgd_over_all_clients_is_full_batch_gradient_descent(engine):
    clients = _clients()
    lr = 0.5
    history = kerasfed.fit_federated(
        _model(), clients, rounds=1, batch_size=8, algorithm="fedsgd",
        server_learning_rate=lr, engine=engine, verbose=0,
    )
    model = _model()
    x = np.concatenate([c[0] for c in clients.values()])
    y = np.concatenate([c[1] for c in clients.values()])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x)))
    grads = tape.gradient(loss, model.trainable_variables)
    expected = [w.numpy() - lr * g.numpy() for w, g in zip(model.trainable_variables, grads)]
    assert _max_diff(history.model.get_weights(), expected) < 1e-5


def _listening_sockets_of_this_process() -> set:
    """Inodes of the TCP sockets this process listens on (other processes' are not ours)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[len("socket:["):-1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            parts = row.split()
            if parts[3] == "0A" and parts[9] in mine:  # LISTEN, and one of our sockets
                listening.add(parts[9])
    return listening


def test_a_native_run_starts_no_process_and_opens_no_socket(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the native engine started a process")

    before = _listening_sockets_of_this_process()
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(socket.socket, "listen", refuse)
    history = kerasfed.fit_federated(_model(), _clients(), rounds=2, batch_size=8,
                                     engine="native", verbose=0)
    assert len(history.history["loss"]) == 2
    assert _listening_sockets_of_this_process() <= before


def test_batchnorm_moving_statistics_are_averaged_over_clients():
    clients = _clients()
    history = kerasfed.fit_federated(
        _model(batchnorm=True), clients, rounds=1, batch_size=8, shuffle=False,
        engine="native", verbose=0,
    )
    assert "sequential" in history.params["engine_form"]
    reference = _keras_fedavg(lambda: _model(batchnorm=True), clients, epochs=1, batch_size=8)
    assert _max_diff(history.model.get_weights(), reference) < 1e-5
    start = _model(batchnorm=True).get_weights()
    moving_mean = [i for i, w in enumerate(start) if w.shape == (8,)][2]  # after gamma, beta
    assert not np.allclose(history.model.get_weights()[moving_mean], start[moving_mean])


@pytest.mark.skipif(not KERAS_3, reason="subclassed models train on the native engine under Keras 3")
def test_keras3_subclassed_model_trains():
    class TwoLayers(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.out = keras.layers.Dense(CLASSES, activation="softmax")

        def call(self, x):
            return self.out(self.hidden(x))

    keras.utils.set_random_seed(1)
    model = TwoLayers()
    model(np.zeros((1, FEATURES), np.float32))  # creates the weights
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = model.get_weights()
    clients = _clients()
    history = kerasfed.fit_federated(model, clients, rounds=1, batch_size=8, shuffle=False,
                                     engine="native", verbose=0)

    def same_model():
        m = TwoLayers()
        m(np.zeros((1, FEATURES), np.float32))
        m.set_weights(start)
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        return m

    reference = _keras_fedavg(same_model, clients, epochs=1, batch_size=8)
    assert _max_diff(history.model.get_weights(), reference) < 1e-5


# -- errors --------------------------------------------------------------------------


def test_unknown_engine_lists_the_choices():
    with pytest.raises(kerasfed.EngineError, match=r"'auto'.*'tff'.*'native'"):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="fast")
    with pytest.raises(kerasfed.EngineTypeError, match="engine=3"):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine=3)


@pytest.mark.skipif(tff_available(), reason="TFF is installed here")
def test_tff_engine_where_tff_is_missing_names_the_environment():
    with pytest.raises(kerasfed.FederatedUnavailableError, match=r"dev.py demo.*native"):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="tff")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_parallel_clients": 0}, kerasfed.FederatedArgumentError, "max_parallel_clients"),
        ({"max_parallel_clients": 2.5}, kerasfed.FederatedArgumentTypeError, "max_parallel_clients"),
        ({"shuffle": "yes"}, kerasfed.FederatedArgumentTypeError, "shuffle"),
    ],
)
def test_bad_new_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        kerasfed.fit_federated(_model(), _clients(), rounds=1, engine="native", **kwargs)


# -- against the TFF engine --------------------------------------------------------------


def _run(engine, algorithm, server, **kwargs):
    return kerasfed.fit_federated(
        _model(keras.optimizers.SGD(0.1, momentum=0.9)), _clients((7, 23, 50, 12, 31)),
        rounds=3, clients_per_round=3, local_epochs=2, batch_size=8, seed=11,
        algorithm=algorithm, server_optimizer=server, engine=engine, verbose=0,
        evaluation_clients=_clients((9, 14), seed=5), **kwargs,
    )


@needs_tff
@pytest.mark.federated
@pytest.mark.parametrize("algorithm", ["fedavg", "fedavg_unweighted", "fedsgd", "fedprox", "mime"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_native_equals_tff_engine(algorithm, momentum):
    server = kerasfed.ServerSGD(momentum=momentum)
    kwargs = {"server_learning_rate": 0.3} if algorithm == "fedsgd" else {}
    with pytest.warns(UserWarning) if algorithm == "fedsgd" else _nothing():
        native = _run("native", algorithm, server, **kwargs)
    with pytest.warns(UserWarning) if algorithm == "fedsgd" else _nothing():
        reference = _run("tff", algorithm, server, **kwargs)
    assert _max_diff(native.model.get_weights(), reference.model.get_weights()) < 1e-5
    for key, values in reference.history.items():
        if key != "round_seconds":
            np.testing.assert_allclose(native.history[key], values, rtol=1e-5, err_msg=key)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@needs_tff
@pytest.mark.federated
def test_non_finite_clients_are_dropped_as_tff_drops_them():
    # A regression client whose targets are 1e25 overflows within a few steps;
    # labels of shape [n] against outputs [n, 1] also check Keras' rank rule.
    clients = {c: (x, y.astype("float32")) for c, (x, y) in _clients().items()}
    x, y = clients["c1"]
    clients["c1"] = (x, y * np.float32(1e25))

    def run(engine):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        with pytest.warns(RuntimeWarning, match="left out"):
            return kerasfed.fit_federated(model, clients, rounds=1, batch_size=8, seed=1,
                                          engine=engine, verbose=0)

    native, reference = run("native"), run("tff")
    assert native.history["num_examples"] == reference.history["num_examples"] == [57]
    np.testing.assert_allclose(native.history["loss"], reference.history["loss"], rtol=1e-6)
    assert _max_diff(native.model.get_weights(), reference.model.get_weights()) < 1e-5


@needs_tff
@pytest.mark.federated
@pytest.mark.parametrize(("first", "second"), [("tff", "native"), ("native", "tff")])
def test_checkpoint_on_one_engine_resumes_on_the_other(tmp_path, first, second):
    def run(engine, rounds, directory):
        return kerasfed.fit_federated(
            _model(keras.optimizers.SGD(0.1)), _clients((7, 23, 50, 12)), rounds=rounds,
            clients_per_round=2, batch_size=8, seed=2, engine=engine, verbose=0,
            server_optimizer=kerasfed.ServerAdam(), server_learning_rate=0.05,
            checkpoint_dir=directory,
        )

    run(first, 2, tmp_path / "ckpt")
    resumed = run(second, 4, tmp_path / "ckpt")
    uninterrupted = run(second, 4, None)
    assert len(resumed.history["loss"]) == 4
    assert _max_diff(resumed.model.get_weights(), uninterrupted.model.get_weights()) < 1e-5


def test_label_format_comes_from_the_loss_object_not_its_name():
    # A custom loss whose class name contains "Categorical" takes sparse labels here;
    # a rule reading the name would refuse them as not one-hot.
    class FocalCategoricalLoss(keras.losses.Loss):
        def call(self, y_true, y_pred):
            return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=FocalCategoricalLoss())
    history = kerasfed.fit_federated(model, _clients(), rounds=1, batch_size=8,
                                     engine="native", verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # Keras' own losses still check the labels: sparse labels against a one-hot loss.
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    with pytest.raises(kerasfed.ClientDataError, match="one-hot"):
        kerasfed.fit_federated(model, _clients(), rounds=1, engine="native", verbose=0)


def test_dropout_trains_in_the_sequential_form_and_a_seed_repeats_the_run():
    def run():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.5),
                                  keras.layers.Dense(CLASSES, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        return kerasfed.fit_federated(model, _clients((40, 60, 80)), rounds=3, batch_size=8,
                                      seed=0, engine="native", verbose=0)

    first, second = run(), run()
    assert "sequential" in first.params["engine_form"]
    assert first.history["loss"] == second.history["loss"]
    assert first.history["loss"][-1] < first.history["loss"][0]


@needs_tff
@pytest.mark.federated
def test_max_parallel_clients_caps_the_tff_worker_without_changing_the_result():
    def run(chunk):
        return kerasfed.fit_federated(_model(), _clients((7, 23, 50, 12)), rounds=1,
                                      batch_size=8, seed=3, engine="tff",
                                      max_parallel_clients=chunk, verbose=0)

    assert _max_diff(run(1).model.get_weights(), run(None).model.get_weights()) < 1e-6


def test_a_form_that_fails_to_build_falls_back_to_sequential(monkeypatch, caplog):
    from kerasfed.federated.engines.native import client_work

    def cannot_vectorize(self, *args):
        raise ValueError("no pfor converter for this op")

    monkeypatch.setattr(client_work.ClientWork, "_lockstep", cannot_vectorize)
    clients = _clients()
    model = _model()
    engine = _engine(model, "lockstep+xla")
    rounds = [ClientRound(c, x, y, np.arange(len(x))[None]) for c, (x, y) in clients.items()]
    with caplog.at_level("WARNING", logger="kerasfed"):
        state, _ = engine.train_round(engine.initial_state(model.get_weights()), rounds, 0)
    assert engine.form == "sequential"
    assert "lockstep+xla failed" in caplog.text and "using sequential" in caplog.text
    reference = _keras_fedavg(_model, clients, epochs=1, batch_size=8)
    assert _max_diff(engine.get_weights(state), reference) < 1e-5


def test_a_saved_state_that_does_not_fit_is_refused():
    model = _model()
    engine = _engine(model, "sequential")
    neutral = engine.to_neutral(engine.initial_state(model.get_weights()))
    neutral.weights[0] = neutral.weights[0][:, :3]
    with pytest.raises(ValueError, match=r"weights\[0\] was saved with shape \(5, 3\)"):
        engine.from_neutral(neutral)


def test_embedding_models_train_like_keras():
    # An Embedding's gradient is IndexedSlices; the native engine makes it dense.
    rng = np.random.default_rng(3)
    clients = {f"c{i}": (rng.integers(0, 12, (n, 6)).astype("int32"),
                         rng.integers(0, CLASSES, n).astype("int32"))
               for i, n in enumerate((9, 14))}

    def make_model():
        keras.utils.set_random_seed(2)
        model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(12, 4),
                                  keras.layers.LSTM(5),
                                  keras.layers.Dense(CLASSES, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.2),
                      loss="sparse_categorical_crossentropy")
        return model

    history = kerasfed.fit_federated(make_model(), clients, rounds=1, batch_size=4,
                                     shuffle=False, engine="native", verbose=0)
    reference = _keras_fedavg(make_model, clients, epochs=1, batch_size=4)
    assert _max_diff(history.model.get_weights(), reference) < 1e-5


class _BatchCount(keras.metrics.Metric):
    """Counts the batches it sees: how the validation data was batched."""

    def __init__(self, name="batches", **kwargs):
        super().__init__(name=name, **kwargs)
        self.count = self.add_weight(name="count", shape=(), initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.count.assign_add(1.0)

    def result(self):
        return self.count


@pytest.mark.parametrize("validation_batch_size, batches", [(None, 13), (40, 3), (1000, 1)])
def test_validation_batch_size_batches_the_validation_data(validation_batch_size, batches):
    # 100 validation examples: batch_size 8 (the default for them) gives 13 batches.
    x_val, y_val = _clients((100,), seed=5)["c0"]
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", _BatchCount()])
    history = kerasfed.fit_federated(
        model, _clients(), rounds=1, batch_size=8, validation_data=(x_val, y_val),
        validation_batch_size=validation_batch_size, engine="native", seed=0, verbose=0)
    assert history.history["val_batches"] == [batches]
    # The batching changes nothing else: the same loss as Keras over the whole set.
    expected = model.evaluate(x_val, y_val, batch_size=100, verbose=0, return_dict=True)
    assert abs(history.history["val_loss"][0] - expected["loss"]) < 1e-6
    assert history.history["val_accuracy"][0] == pytest.approx(expected["accuracy"])


def test_federated_evaluation_equals_keras_on_the_clients_union():
    # Held-out clients of 9, 14 and 1 examples at batch 8: each client's own
    # batches (2 + 2 + 1, the last ones partial), the sums over all of them.
    held_out = _clients((9, 14, 1), seed=5)
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", _BatchCount()])
    history = kerasfed.fit_federated(
        model, _clients(), rounds=2, batch_size=8, evaluation_clients=held_out,
        engine="native", seed=0, verbose=0)
    assert history.history["fed_eval_batches"] == [5, 5]
    x = np.concatenate([x for x, _ in held_out.values()])
    y = np.concatenate([y for _, y in held_out.values()])
    expected = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    assert abs(history.history["fed_eval_loss"][-1] - expected["loss"]) < 1e-6
    assert history.history["fed_eval_accuracy"][-1] == pytest.approx(expected["accuracy"])


def _memory_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's resettable peak RSS (/proc/self/clear_refs)")
@pytest.mark.parametrize("form", ["lockstep", "sequential"])
def test_a_mean_round_holds_one_chunk_of_client_updates_at_a_time(form):
    # 150 clients x 7.7 MiB of update (a 2.0M-weight model) = 1.1 GiB if the round
    # kept every update. Lockstep (Dense): chunks of 10 summed as they come, about
    # 80 MiB; before the sums were taken per chunk this round peaked 4.7 GiB above
    # its start. Sequential (a convolution first): the default chunks hold at most
    # 64 MiB of updates.
    rng = np.random.default_rng(0)
    shape = (1000,) if form == "lockstep" else (10, 10, 1)
    clients = {f"c{i}": (rng.random((4, *shape), np.float32), rng.integers(0, 10, 4).astype("int32"))
               for i in range(150)}
    keras.utils.set_random_seed(0)
    body = ([] if form == "lockstep" else
            [keras.layers.Conv2D(10, 1, activation="relu"), keras.layers.Flatten()])
    model = keras.Sequential([keras.Input(shape), *body, keras.layers.Dense(2000, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    run = dict(batch_size=4, engine="native", verbose=0, seed=0,
               max_parallel_clients=10 if form == "lockstep" else None)
    kerasfed.fit_federated(model, clients, rounds=1, clients_per_round=10, **run)  # traced
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS starts again from the current RSS
    start = _memory_mib("VmRSS")
    history = kerasfed.fit_federated(model, clients, rounds=1, clients_per_round=150, **run)
    assert history.params["engine_form"].startswith(f"native engine, {form}")
    assert history.history["num_examples"] == [600]
    assert _memory_mib("VmHWM") - start < 500


def _failing_run(error, *, after_calls=0):
    """A replacement for ClientWork.run that raises ``error`` after ``after_calls`` calls."""
    calls = []

    def wrap(run):
        def run_or_fail(*args):
            calls.append(1)
            if len(calls) > after_calls:
                raise error
            return run(*args)
        return run_or_fail
    return wrap


@pytest.mark.parametrize("when", ["first round", "later round"])
def test_running_out_of_memory_is_reported_not_turned_into_another_form(when, caplog):
    clients = _clients()
    engine = _engine(_model(), "lockstep")
    state = engine.initial_state(_model().get_weights())
    rounds = [ClientRound(cid, x, y, np.arange(len(x))[None]) for cid, (x, y) in clients.items()]
    if when == "later round":
        state, _ = engine.train_round(state, rounds, 0)
    oom = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    for work in engine._works:  # noqa: SLF001
        work.run = _failing_run(oom)(work.run)
    with pytest.raises(tf.errors.ResourceExhaustedError, match="OOM"):
        engine.train_round(state, rounds, 1)
    assert engine.form == "lockstep"
    assert "using sequential" not in caplog.text


def test_a_form_that_fails_in_the_first_round_falls_back_and_says_so(caplog):
    clients = _clients()
    model = _model()
    engine = _engine(model, "lockstep")
    state = engine.initial_state(model.get_weights())
    rounds = [ClientRound(cid, x, y, np.arange(len(x))[None]) for cid, (x, y) in clients.items()]
    failing = _failing_run(NotImplementedError("no vectorized kernel for this op"))
    for work in engine._works:  # noqa: SLF001
        work.run = failing(work.run)
    with caplog.at_level("WARNING", logger="kerasfed"):
        new, _ = engine.train_round(state, rounds, 0)
    assert engine.form == "sequential"
    assert "lockstep failed (NotImplementedError: no vectorized kernel" in caplog.text
    assert "NotImplementedError" in engine.describe()
    # A later failure of the same kind is the data's, not the form's: it is raised.
    for work in engine._works:  # noqa: SLF001
        work.run = _failing_run(NotImplementedError("later"))(work.run)
    with pytest.raises(NotImplementedError, match="later"):
        engine.train_round(new, rounds, 1)
