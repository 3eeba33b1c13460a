"""fit_federated on models and data of every structure model.fit takes, against model.fit.

Several inputs and outputs (lists, dicts), per-output losses with loss_weights,
per-output and weighted metrics, sample weights, strings through TextVectorization
and StringLookup, integer ids through Embedding, Normalization. Each is trained
on the native engine in both forms (lockstep where it applies, sequential) and
compared with plain Keras: one client equals model.fit on the same batches, and
ragged clients' FedSGD step equals the example-weighted mean of their gradients
taken by Keras.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import kerasfed
from kerasfed._compat import KERAS_3, keras, tff_available
from kerasfed.federated.clients import ClientData

pytestmark = pytest.mark.native

ROWS = 10
BATCH = 4
RNG = np.random.default_rng(7)
WORDS = np.array(["red fox", "blue sky", "red sky", "green fox", "blue fox", "green sea",
                  "red sea", "blue sea", "green sky", "red red"] * 3)


def _seeded():
    keras.utils.set_random_seed(3)


def _sgd():
    return keras.optimizers.SGD(0.1)


# -- the cases: (model builder, clients' data builder(n, seed)) -----------------------------


def _two_inputs_list():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    out = keras.layers.Dense(3, activation="softmax", name="out")(
        keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    model.compile(_sgd(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _two_inputs_data(n, rng):
    x = [rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")]
    return x, rng.integers(0, 3, n)


def _dict_inputs():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    out = keras.layers.Dense(1, name="out")(keras.layers.Concatenate()([a, b]))
    model = keras.Model({"a": a, "b": b}, out)
    model.compile(_sgd(), loss="mse", metrics=["mae"])
    return model


def _dict_inputs_data(n, rng):
    x = {"a": rng.normal(size=(n, 3)).astype("float32"),
         "b": rng.normal(size=(n, 2)).astype("float32")}
    return x, rng.normal(size=(n, 1)).astype("float32")


def _two_outputs_list():
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(5, activation="relu")(x)
    o1 = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    o2 = keras.layers.Dense(1, name="reg")(h)
    model = keras.Model(x, [o1, o2])
    model.compile(_sgd(), loss=["sparse_categorical_crossentropy", "mse"], loss_weights=[1.0, 0.3],
                  metrics=[["accuracy"], ["mae"]])
    return model


def _two_outputs_data(n, rng):
    return (rng.normal(size=(n, 4)).astype("float32"),
            [rng.integers(0, 3, n), rng.normal(size=(n, 1)).astype("float32")])


def _dict_outputs():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Concatenate()([a, b])
    o1 = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    o2 = keras.layers.Dense(1, name="reg")(h)
    model = keras.Model({"a": a, "b": b}, {"cls": o1, "reg": o2})
    model.compile(_sgd(), loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5},
                  metrics={"cls": ["accuracy"], "reg": ["mae"]},
                  weighted_metrics={"cls": ["accuracy"]})
    return model


def _dict_outputs_data(n, rng):
    x, _ = _dict_inputs_data(n, rng)
    y = {"cls": rng.integers(0, 3, n), "reg": rng.normal(size=(n, 1)).astype("float32")}
    return x, y, rng.uniform(0.1, 1.0, n).astype("float32")


def _weighted_single():
    x = keras.Input((4,))
    model = keras.Sequential([x, keras.layers.Dense(3, activation="softmax")])
    model.compile(_sgd(), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  weighted_metrics=["accuracy"])
    return model


def _weighted_single_data(n, rng):
    return (rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, 3, n),
            rng.uniform(0.1, 1.0, n).astype("float32"))


def _text_vectorization():
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=3)
    vectorize.adapt(WORDS)
    x = keras.Input((), dtype="string")
    h = keras.layers.Embedding(20, 4)(vectorize(x))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(x, out)
    model.compile(_sgd(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _words_data(n, rng):
    words = rng.choice(WORDS, n)
    return words, np.array([int("red" in w) for w in words])


def _string_lookup():
    lookup = keras.layers.StringLookup(vocabulary=["red", "blue", "green"], output_mode="one_hot")
    x = keras.Input((1,), dtype="string")
    out = keras.layers.Dense(2, activation="softmax")(lookup(x))
    model = keras.Model(x, out)
    model.compile(_sgd(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _colours_data(n, rng):
    colours = rng.choice(np.array(["red", "blue", "green", "pink"]), (n, 1))
    return colours, (colours[:, 0] == "red").astype(np.int64)


def _embedding_ids():
    x = keras.Input((3,), dtype="int32")
    h = keras.layers.Flatten()(keras.layers.Embedding(12, 2)(x))
    model = keras.Model(x, keras.layers.Dense(2, activation="softmax")(h))
    model.compile(_sgd(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _ids_data(n, rng):
    ids = rng.integers(0, 12, (n, 3)).astype(np.int32)
    return ids, (ids[:, 0] > 5).astype(np.int64)


def _normalization():
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(1).normal(3.0, 2.0, (50, 4)).astype("float32"))
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(1)(norm(x)))
    model.compile(_sgd(), loss="mse", metrics=["mae"])
    return model


def _normalization_data(n, rng):
    return rng.normal(3.0, 2.0, (n, 4)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


CASES = {
    "two_inputs_list": (_two_inputs_list, _two_inputs_data, True),
    "dict_inputs": (_dict_inputs, _dict_inputs_data, True),
    "two_outputs_list": (_two_outputs_list, _two_outputs_data, True),
    "dict_outputs_weighted": (_dict_outputs, _dict_outputs_data, True),
    "sample_weights": (_weighted_single, _weighted_single_data, True),
    "text_vectorization": (_text_vectorization, _words_data, False),
    "string_lookup": (_string_lookup, _colours_data, False),
    "embedding_ids": (_embedding_ids, _ids_data, True),
    "normalization": (_normalization, _normalization_data, True),
}
RUNS = [(name, form) for name, (_, _, lockstep) in CASES.items()
        for form in (["lockstep", "sequential"] if lockstep else ["sequential"])]
# The ragged-clients check once per case (in its default form), to keep the suite fast.
RAGGED_RUNS = [(name, "lockstep" if lockstep else "sequential")
               for name, (_, _, lockstep) in CASES.items()]


def _model(name):
    _seeded()
    return CASES[name][0]()


def _data(name, n, seed):
    return CASES[name][1](n, np.random.default_rng(seed))


def _keras_inputs(data):
    """What model.fit takes: Keras 3 refuses numpy strings, so those go as tensors."""
    def tensor(a):
        a = np.asarray(a)
        return tf.constant(a) if a.dtype.kind in "USO" else a
    return tf.nest.map_structure(tensor, data)


def _force_form(monkeypatch, form):
    import kerasfed.federated.engines.native.engine as native

    monkeypatch.setattr(native, "_choose_form", lambda model, requested: (form, "test"))
    monkeypatch.setattr(native, "_FALLBACK", {})  # a failing form must fail the test


def _max_diff(a, b):
    pairs = [(np.asarray(u), np.asarray(v)) for u, v in zip(a, b)]
    # Keras 2 lookup layers' vocabularies (strings) are among get_weights(): equal or not.
    assert all(np.array_equal(u, v) for u, v in pairs if u.dtype.kind in "USO")
    return max(float(np.max(np.abs(u - v))) for u, v in pairs if u.dtype.kind not in "USO")


@pytest.mark.parametrize("name,form", RUNS)
def test_one_client_equals_model_fit(name, form, monkeypatch):
    _force_form(monkeypatch, form)
    data = _data(name, ROWS, 0)
    reference = _model(name)
    x, y, *w = _keras_inputs(data)
    expected = reference.fit(x, y, sample_weight=w[0] if w else None, batch_size=BATCH,
                             epochs=1, shuffle=False, verbose=0).history
    model = _model(name)
    history = kerasfed.fit_federated(model, {"c": data}, rounds=1, batch_size=BATCH,
                                     shuffle=False, engine="native", verbose=0)
    assert form in history.params["engine_form"]
    assert _max_diff(model.get_weights(), reference.get_weights()) < 1e-5
    got = history.history
    keras_keys = set(expected)
    if KERAS_3:  # Keras 3's per-output loss trackers: compared by key only (see docs/models.md)
        keras_keys = {k for k in keras_keys if not (k.endswith("_loss") and k != "loss")}
    for key in keras_keys:
        assert key in got, (key, sorted(got))
        assert got[key][0] == pytest.approx(expected[key][0], rel=1e-4, abs=1e-5), key


def _keras_gradient(name, data):
    """The gradient of the client's mean loss at the initial weights, taken by Keras
    (one model.fit step of plain SGD with learning rate 1 over the whole client)."""
    model = _model(name)
    model.compile(keras.optimizers.SGD(1.0), **_compile_args(model))
    before = [np.array(w) for w in model.trainable_weights]
    x, y, *w = _keras_inputs(data)
    model.fit(x, y, sample_weight=w[0] if w else None, batch_size=len(tf.nest.flatten(x)[0]),
              epochs=1, shuffle=False, verbose=0)
    return [b - np.array(a) for a, b in zip(model.trainable_weights, before)]


def _compile_args(model):
    if KERAS_3:
        config = dict(model._compile_config.config)  # noqa: SLF001
    else:
        config = model._get_compile_args(user_metrics=True)  # noqa: SLF001
    return {k: config.get(k) for k in ("loss", "loss_weights")}


@pytest.mark.parametrize("name,form", RAGGED_RUNS)
def test_ragged_clients_fedsgd_is_the_weighted_mean_of_keras_gradients(name, form, monkeypatch):
    _force_form(monkeypatch, form)
    sizes = (3, 7, 5)
    clients = {f"c{i}": _data(name, n, 10 + i) for i, n in enumerate(sizes)}
    model = _model(name)
    before = [np.array(w) for w in model.trainable_weights]
    kerasfed.fit_federated(model, clients, rounds=1, batch_size=8, algorithm="fedsgd",
                           engine="native", shuffle=False, verbose=0)
    step = [b - np.array(a) for a, b in zip(model.trainable_weights, before)]
    grads = [_keras_gradient(name, data) for data in clients.values()]
    expected = [sum(n * g[i] for n, g in zip(sizes, grads)) / sum(sizes)
                for i in range(len(before))]
    # FedSGD's server step with server SGD(1.0): w - mean gradient.
    assert _max_diff(step, expected) < 1e-5


def test_datasets_with_structures_equal_arrays(monkeypatch):
    _force_form(monkeypatch, "lockstep")
    x, y, w = _dict_outputs_data(ROWS, np.random.default_rng(0))
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(3)
    from_arrays, from_dataset = _model("dict_outputs_weighted"), _model("dict_outputs_weighted")
    for model, clients in ((from_arrays, {"c": (x, y, w)}), (from_dataset, {"c": dataset})):
        kerasfed.fit_federated(model, clients, rounds=1, batch_size=BATCH, shuffle=False,
                               engine="native", verbose=0)
    assert _max_diff(from_arrays.get_weights(), from_dataset.get_weights()) == 0.0


def test_string_dataset_and_numpy_strings_train_alike():
    words, labels = _words_data(ROWS, np.random.default_rng(0))
    a, b = _model("text_vectorization"), _model("text_vectorization")
    kerasfed.fit_federated(a, {"c": (words, labels)}, rounds=1, batch_size=BATCH,
                           shuffle=False, engine="native", verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(words), labels))
    history = kerasfed.fit_federated(b, {"c": dataset}, rounds=1, batch_size=BATCH,
                                     shuffle=False, engine="native", verbose=0)
    assert "sequential" in history.params["engine_form"]
    assert _max_diff(a.get_weights(), b.get_weights()) == 0.0


def test_validation_data_and_evaluation_clients_with_structures():
    x, y, w = _dict_outputs_data(ROWS, np.random.default_rng(0))
    model = _model("dict_outputs_weighted")
    history = kerasfed.fit_federated(model, {"c": (x, y, w)}, rounds=1, batch_size=BATCH,
                                     engine="native", verbose=0, validation_data=(x, y, w),
                                     evaluation_clients={"e": (x, y, w)})
    expected = model.evaluate(x, y, sample_weight=w, batch_size=BATCH, verbose=0,
                              return_dict=True)
    logs = {k: v[-1] for k, v in history.history.items()}
    for key in ("loss", "cls_accuracy", "cls_weighted_accuracy", "reg_mae"):
        assert logs[f"val_{key}"] == pytest.approx(expected[key], rel=1e-5)
        assert logs[f"fed_eval_{key}"] == pytest.approx(expected[key], rel=1e-5)


def test_label_checks_name_the_client_and_the_output():
    x, y, w = _dict_outputs_data(ROWS, np.random.default_rng(0))
    bad = dict(y, cls=np.where(np.arange(ROWS) == 2, 7, y["cls"]))
    with pytest.raises(ValueError, match=r"Client 'b' \(output 'cls'\) has label 7; sparse "
                                         r"labels must be class indices in \[0, 3\)"):
        kerasfed.fit_federated(_model("dict_outputs_weighted"),
                               {"a": (x, y, w), "b": (x, bad, w)}, rounds=1, engine="native")
    one_hot = dict(y, cls=np.eye(3)[y["cls"]])
    with pytest.raises(ValueError, match=r"Client 'a' \(output 'cls'\) has labels of "
                                         r"per-example shape \(3,\); sparse \(integer\)"):
        kerasfed.fit_federated(_model("dict_outputs_weighted"), {"a": (x, one_hot, w)},
                               rounds=1, engine="native")
    with pytest.raises(ValueError, match=r"`validation_data` \(output 'cls'\) has label 7"):
        kerasfed.fit_federated(_model("dict_outputs_weighted"), {"a": (x, y, w)}, rounds=1,
                               engine="native", validation_data=(x, bad))


def test_labels_that_do_not_match_the_outputs_are_refused():
    x, y, w = _dict_outputs_data(ROWS, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"client 'a': its labels are a dict with keys "
                                              r"\['cls'\], but the model's outputs are "
                                              r"\['cls', 'reg'\] \(missing \['reg'\]\)"):
        kerasfed.fit_federated(_model("dict_outputs_weighted"), {"a": (x, {"cls": y["cls"]})},
                               rounds=1, engine="native")
    with pytest.raises(ValueError, match=r"the model has 2 outputs \['cls', 'reg'\], but "
                                              r"its labels are"):
        kerasfed.fit_federated(_model("dict_outputs_weighted"), {"a": (x, y["cls"])},
                               rounds=1, engine="native")
    with pytest.raises(ValueError, match=r"has 2 input\(s\) .* but `clients` has 1 feature"):
        kerasfed.fit_federated(_model("two_inputs_list"), {"a": (x["a"], y["cls"])}, rounds=1,
                               engine="native")


def test_client_data_structure_errors():
    x, y, w = _dict_outputs_data(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"Some clients have sample weights"):
        ClientData({"a": (x, y, w), "b": (x, y)})
    with pytest.raises(ValueError, match=r"Client 'a': its sample weights have shape "
                                              r"\(4, 1\)"):
        ClientData({"a": (x, y, w[:, None])})
    with pytest.raises(ValueError, match=r"Client 'a' has arrays with different numbers "
                                              r"of examples"):
        ClientData({"a": (dict(x, b=x["b"][:2]), y)})
    with pytest.raises(ValueError, match=r"Client 'a' has negative sample weights"):
        ClientData({"a": (x, y, -w)}).validate()
    with pytest.raises(ValueError, match=r"Client 'b' has features structured as"):
        ClientData({"a": (x, y), "b": ([x["a"], x["b"]], y)}).validate()
    with pytest.raises(ValueError, match=r"its features have dtype object holding int values"):
        ClientData({"a": (np.array(["a", 1], dtype=object), np.zeros(2))})
    with pytest.raises(ValueError, match=r"write_client_data: these clients have sample "
                                              r"weights"):
        kerasfed.write_client_data({"a": (x["a"], y["cls"], w)}, "/nonexistent/never-written")


@pytest.mark.federated
@pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")
def test_tff_engine_refuses_structures_and_names_the_native_engine():
    x, y, w = _weighted_single_data(ROWS, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"engine='native'"):
        kerasfed.fit_federated(_model("dict_outputs_weighted"),
                               {"a": _dict_outputs_data(ROWS, np.random.default_rng(0))},
                               rounds=1, engine="tff")
    with pytest.raises(ValueError, match=r"`clients` have sample weights, which the TFF engine "
                                         r"cannot train on .* Use engine='native'"):
        kerasfed.fit_federated(_model("sample_weights"), {"a": (x, y, w)}, rounds=1, engine="tff")


@pytest.mark.federated
@pytest.mark.skipif(not tff_available(), reason="needs TensorFlow Federated (.venv)")
def test_auto_engine_picks_native_for_what_tff_cannot_take():
    x, y, w = _weighted_single_data(ROWS, np.random.default_rng(0))
    history = kerasfed.fit_federated(_model("sample_weights"), {"a": (x, y, w)}, rounds=1,
                                     verbose=0)
    assert history.params["engine"] == "native"
    history = kerasfed.fit_federated(_model("two_inputs_list"),
                                     {"a": _two_inputs_data(ROWS, np.random.default_rng(0))},
                                     rounds=1, verbose=0)
    assert history.params["engine"] == "native"


@pytest.mark.distributed
def test_fit_distributed_takes_dict_models_and_sample_weights():
    x, y, w = _dict_outputs_data(16, np.random.default_rng(0))
    reference = _model("dict_outputs_weighted")
    expected = reference.fit(x, y, sample_weight=w, batch_size=8, shuffle=False, verbose=0)
    model = _model("dict_outputs_weighted")
    history = kerasfed.fit_distributed(model, x, y, sample_weight=w, batch_size=8,
                                       shuffle=False, verbose=0)
    assert set(expected.history) <= set(history.history)
    assert _max_diff(model.get_weights(), reference.get_weights()) < 1e-5


def test_partition_keeps_structures_and_sample_weights():
    x, y, w = _dict_outputs_data(12, np.random.default_rng(0))
    clients = kerasfed.partition(x, y, 3, seed=0, sample_weight=w)
    rows = np.concatenate([np.flatnonzero((x["a"] == entry[0]["a"][:, None]).all(-1).any(0))
                           for entry in clients.values()])
    assert sorted(rows.tolist()) == list(range(12))  # every example in one client
    for xc, yc, wc in clients.values():
        index = [int(np.flatnonzero((x["a"] == row).all(1))[0]) for row in xc["a"]]
        np.testing.assert_array_equal(xc["b"], x["b"][index])
        np.testing.assert_array_equal(yc["cls"], y["cls"][index])
        np.testing.assert_array_equal(wc, w[index])
    with pytest.raises(ValueError, match=r"scheme='dirichlet' splits by class labels, but y "
                                         r"holds several label arrays"):
        kerasfed.partition(x, y, 3, "dirichlet", seed=0)
