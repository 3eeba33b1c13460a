"""kerasfed's one error family: every class, one class per kind of mistake, messages that name the fix.

The checks of the family itself (classes, aliases, the docs table) involve no TensorFlow
and are marked ``tf_independent``: one suite runs them.
"""

from __future__ import annotations

import inspect
import pathlib
import re

import numpy as np
import pytest

import kerasfed
from kerasfed import errors

# The built-in each exported class derives from (so `except ValueError` keeps working).
BUILTIN = {
    "KerasfedError": Exception,
    "ArgumentError": ValueError,
    "ArgumentTypeError": TypeError,
    "SignatureError": TypeError,
    "VerboseError": ValueError,
    "CallbacksTypeError": TypeError,
    "StrategyError": ValueError,
    "EngineError": ValueError,
    "EngineTypeError": TypeError,
    "AlgorithmError": ValueError,
    "AlgorithmTypeError": TypeError,
    "AggregatorError": ValueError,
    "AggregatorTypeError": TypeError,
    "ServerOptimizerError": ValueError,
    "ServerOptimizerTypeError": TypeError,
    "ModelError": ValueError,
    "ModelTypeError": TypeError,
    "ClientOptimizerError": ValueError,
    "ClientOptimizerTypeError": TypeError,
    "DataError": ValueError,
    "DataTypeError": TypeError,
    "LabelError": ValueError,
    "IdxFormatError": ValueError,
    "TFConfigError": ValueError,
    "CheckpointError": ValueError,
    "CheckpointMismatchError": ValueError,
    "MissingDependencyError": ImportError,
    "FederatedUnavailableError": ImportError,
    "StrategyInitError": RuntimeError,
    "DeviceConfigError": RuntimeError,
    "WorkerStartError": RuntimeError,
    "WorkerDiedError": RuntimeError,
    # Older names: aliases of the class of their kind.
    "FitArgumentError": ValueError,
    "FederatedArgumentError": ValueError,
    "FederatedArgumentTypeError": TypeError,
    "PartitionError": ValueError,
    "LaunchArgumentError": ValueError,
    "ClientDataError": ValueError,
    "ClientDataTypeError": TypeError,
}

# Old name -> (module it was defined in, the class it is now).
OLD_HOMES = {
    "FitArgumentError": ("kerasfed.distributed.arguments", "ArgumentError"),
    "FederatedArgumentError": ("kerasfed.federated.arguments", "ArgumentError"),
    "FederatedArgumentTypeError": ("kerasfed.federated.arguments", "ArgumentTypeError"),
    "PartitionError": ("kerasfed.federated.partition", "ArgumentError"),
    "LaunchArgumentError": ("kerasfed.launch", "ArgumentError"),
    "ClientDataError": ("kerasfed.federated.clients", "DataError"),
    "ClientDataTypeError": ("kerasfed.federated.clients", "DataTypeError"),
    "VerboseError": ("kerasfed._arguments", "VerboseError"),
    "TFConfigError": ("kerasfed.distributed.tf_config", "TFConfigError"),
    "FederatedUnavailableError": ("kerasfed._compat", "FederatedUnavailableError"),
    "WorkerStartError": ("kerasfed.federated.engines.tff.runtime", "WorkerStartError"),
    "IdxFormatError": ("kerasfed.datasets", "IdxFormatError"),
}

EXPORTED_ERRORS = sorted(
    name for name in kerasfed.__all__
    if isinstance(getattr(kerasfed, name), type) and issubclass(getattr(kerasfed, name), BaseException)
)


# -- The family ----------------------------------------------------------------------------


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_every_exported_exception_is_listed_here():
    assert set(EXPORTED_ERRORS) == set(BUILTIN)


@pytest.mark.distributed
@pytest.mark.tf_independent
@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_exported_exception_is_a_kerasfed_error_and_its_builtin(name):
    cls = getattr(kerasfed, name)
    assert issubclass(cls, kerasfed.KerasfedError)
    assert issubclass(cls, BUILTIN[name])
    assert cls is getattr(errors, name)  # one place defines them all
    assert cls.__module__ == "kerasfed.errors"


@pytest.mark.distributed
@pytest.mark.tf_independent
@pytest.mark.parametrize("old", sorted(OLD_HOMES))
def test_old_names_stay_importable_from_their_modules(old):
    import importlib

    module, now = OLD_HOMES[old]
    assert getattr(importlib.import_module(module), old) is getattr(errors, now)


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_every_exception_kerasfed_defines_is_in_the_family():
    # No module defines an exception class of its own outside kerasfed/errors.py.
    root = pathlib.Path(kerasfed.__file__).parent
    own = re.compile(r"^class \w+\((?:\w+Error|Exception|\w*Warning)\b", re.M)
    outside = [
        f"{path.relative_to(root)}: {m.group(0)}"
        for path in root.rglob("*.py") if path.name != "errors.py"
        for m in own.finditer(path.read_text())
        if "Warning" not in m.group(0)
    ]
    assert outside == []


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_docs_table_lists_every_exported_exception():
    page = pathlib.Path(__file__).parents[1] / "docs" / "errors.md"
    listed = set(re.findall(r"^\| `(\w+)` \|", page.read_text(), re.M))
    assert listed == set(BUILTIN)


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_missing_dependency_is_an_import_error_naming_the_extra_kind():
    assert issubclass(kerasfed.FederatedUnavailableError, kerasfed.MissingDependencyError)
    with pytest.raises(ImportError):
        raise kerasfed.FederatedUnavailableError("x")


# -- Helpers -------------------------------------------------------------------------------


def _model(loss="sparse_categorical_crossentropy", units=3):
    from kerasfed._compat import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation="softmax")])
    model.compile(optimizer="sgd", loss=loss)
    return model


def _data(n=12, classes=3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), (np.arange(n) % classes).astype("int64")


def _clients():
    x, y = _data()
    return {"a": (x[:6], y[:6]), "b": (x[6:], y[6:])}


def _federated(**kwargs):
    kwargs = {"rounds": 1, "engine": "native", "verbose": 0, **kwargs}
    return kerasfed.fit_federated(_model(), _clients(), **kwargs)


def _distributed(**kwargs):
    x, y = _data()
    return kerasfed.fit_distributed(_model(), x, y, **{"verbose": 0, **kwargs})


# -- One class per kind of mistake, from every call -----------------------------------------

VERBOSE_MESSAGE = r"expected `verbose` to be one of \['auto', 0, 1, 2\]. Received: verbose=3"


@pytest.mark.native
def test_bad_verbose_is_a_verbose_error_from_fit_federated():
    with pytest.raises(kerasfed.VerboseError, match=f"^fit_federated: {VERBOSE_MESSAGE}") as info:
        _federated(verbose=3)
    assert type(info.value) is kerasfed.VerboseError


@pytest.mark.distributed
def test_bad_verbose_is_a_verbose_error_from_fit_distributed():
    with pytest.raises(kerasfed.VerboseError, match=f"^fit_distributed: {VERBOSE_MESSAGE}") as info:
        _distributed(verbose=3)
    assert type(info.value) is kerasfed.VerboseError


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_partition_and_launch_refuse_verbose_as_any_unknown_keyword():
    # They print nothing, so they take no `verbose`: the same SignatureError as any call.
    from kerasfed.launch import make_plan

    x, y = _data()
    with pytest.raises(kerasfed.SignatureError, match=r"partition\(\) got unexpected keyword argument\(s\) \['verbose'\]"):
        kerasfed.partition(x, y, 2, verbose=1)
    with pytest.raises(kerasfed.SignatureError, match=r"make_plan\(\) got unexpected keyword argument\(s\) \['verbose'\]"):
        make_plan("train.py", verbose=1)


def _bad_value_calls():
    from kerasfed.launch import make_plan

    x, y = _data()
    return {
        "fit_federated": (lambda: _federated(rounds=0), "`rounds` to be an int >= 1"),
        "fit_distributed": (lambda: _distributed(epochs=0), "`epochs` to be an int of at least 1"),
        "partition": (lambda: kerasfed.partition(x, y, 0), r"`num_clients` in \[1, 12\]"),
        "launch": (lambda: make_plan("train.py", workers=0), "--workers must be at least 1"),
    }


@pytest.mark.native
@pytest.mark.parametrize("call", ["fit_federated", "fit_distributed", "partition", "launch"])
def test_a_bad_value_is_an_argument_error_from_every_call(call):
    run, message = _bad_value_calls()[call]
    with pytest.raises(kerasfed.ArgumentError, match=message) as info:
        run()
    assert type(info.value) is kerasfed.ArgumentError
    assert isinstance(info.value, ValueError)


@pytest.mark.native
@pytest.mark.parametrize("call", ["fit_federated", "fit_distributed", "partition"])
def test_a_bad_type_is_an_argument_type_error_from_every_call(call):
    x, y = _data()
    run, message = {
        "fit_federated": (lambda: _federated(rounds="3"), "`rounds` to be an int"),
        "fit_distributed": (lambda: _distributed(epochs="3"), "epochs='3' of type str"),
        "partition": (lambda: kerasfed.partition(x, y, "3"), "`num_clients` to be an int"),
    }[call]
    with pytest.raises(kerasfed.ArgumentTypeError, match=message) as info:
        run()
    assert type(info.value) is kerasfed.ArgumentTypeError


@pytest.mark.native
@pytest.mark.parametrize("call", ["fit_federated", "fit_distributed"])
def test_a_single_callback_is_a_callbacks_type_error_from_both_fit_calls(call):
    from kerasfed._compat import keras

    run = _federated if call == "fit_federated" else _distributed
    with pytest.raises(kerasfed.CallbacksTypeError, match=r"Wrap a single callback in a list: callbacks=\[cb\]"):
        run(callbacks=keras.callbacks.History())


# -- Messages that name the fix, before any training ---------------------------------------


@pytest.mark.native
def test_epochs_to_fit_federated_names_rounds_and_local_epochs():
    with pytest.raises(kerasfed.SignatureError, match=r"\['epochs'\].*use `rounds=` \(rounds of federated training.*`local_epochs=` \(epochs each client trains"):
        kerasfed.fit_federated(_model(), _clients(), epochs=3)


@pytest.mark.native
@pytest.mark.parametrize("rounds", [{}, {"rounds": 2}])
def test_x_and_y_to_fit_federated_names_partition(rounds):
    x, y = _data()
    with pytest.raises(kerasfed.SignatureError, match=r"takes 2 positional argument\(s\) \(model, clients\) but 3 were given.*kerasfed\.partition\(x, y, num_clients=\.\.\.\)"):
        kerasfed.fit_federated(_model(), x, y, **rounds)


@pytest.mark.native
def test_one_array_as_clients_names_partition():
    x, _ = _data()
    with pytest.raises(kerasfed.DataTypeError, match=r"Received: ndarray\. To split one \(x, y\) dataset into clients use kerasfed\.partition\(x, y, num_clients=\.\.\.\)"):
        _federated_with_clients(x)


def _federated_with_clients(clients):
    return kerasfed.fit_federated(_model(), clients, rounds=1, engine="native", verbose=0)


@pytest.mark.native
def test_clients_as_a_list_of_pairs_names_the_dict_and_partition():
    pairs = list(_clients().values())
    with pytest.raises(kerasfed.DataTypeError, match=r"`clients` is a list of 2 \(x, y\) pairs; .*pass a dict \{client_id: data\}.*kerasfed\.partition\(x, y, num_clients=\.\.\.\)"):
        _federated_with_clients(pairs)


@pytest.mark.native
def test_clients_as_a_list_of_datasets_names_the_dict():
    import tensorflow as tf

    datasets = [tf.data.Dataset.from_tensor_slices(pair) for pair in _clients().values()]
    with pytest.raises(kerasfed.DataTypeError, match=r"`clients` is a list of 2 datasets; .*pass a dict \{client_id: data\}"):
        _federated_with_clients(datasets)


@pytest.mark.native
def test_a_misspelt_keyword_names_the_close_matches():
    with pytest.raises(kerasfed.SignatureError, match=r"\['clients_per_rnd'\]\. `clients_per_rnd`: did you mean `clients_per_round`"):
        _federated(clients_per_rnd=1)


@pytest.mark.native
def test_a_missing_rounds_is_a_signature_error():
    with pytest.raises(kerasfed.SignatureError, match=r"fit_federated\(\) is missing the required argument\(s\) `rounds`"):
        kerasfed.fit_federated(_model(), _clients())


@pytest.mark.distributed
def test_fit_distributed_keywords_of_fit_federated_name_epochs():
    with pytest.raises(kerasfed.SignatureError, match=r"\['rounds'\]\. `rounds`: fit_distributed trains epochs: use `epochs=`"):
        _distributed(rounds=3)
    with pytest.raises(kerasfed.SignatureError, match=r"\['epoch'\]\. `epoch`: did you mean `epochs`"):
        _distributed(epoch=3)
    x, y = _data()
    with pytest.raises(kerasfed.SignatureError, match=r"takes 3 positional argument\(s\) \(model, x, y\) but 4 were given"):
        kerasfed.fit_distributed(_model(), x, y, 3)


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_checked_calls_keep_their_signature_and_docstring():
    for call in (kerasfed.fit_federated, kerasfed.fit_distributed, kerasfed.partition):
        params = inspect.signature(call).parameters
        assert "model" in params or "x" in params
        assert call.__doc__ and "Args:" in call.__doc__
    assert "rounds" in inspect.signature(kerasfed.fit_federated).parameters


# -- fit_distributed: labels against the loss ----------------------------------------------


@pytest.mark.distributed
def test_one_hot_labels_with_a_sparse_loss():
    x, y = _data()
    with pytest.raises(kerasfed.LabelError, match=r"`y` looks one-hot \(per-example shape \(3,\).*'sparse_categorical_crossentropy' expects class indices.*np\.argmax\(y, axis=-1\)"):
        kerasfed.fit_distributed(_model(), x, np.eye(3)[y], verbose=0)


@pytest.mark.distributed
def test_class_indices_with_a_categorical_loss():
    x, y = _data()
    with pytest.raises(kerasfed.LabelError, match=r"`y` holds class indices.*'categorical_crossentropy' expects one-hot labels of per-example shape \(3,\).*to_categorical\(y, 3\)"):
        kerasfed.fit_distributed(_model("categorical_crossentropy"), x, y, verbose=0)


@pytest.mark.distributed
def test_a_class_index_outside_the_output_units():
    from kerasfed._compat import keras

    x, y = _data()
    with pytest.raises(kerasfed.LabelError, match=r"`y` has the class index 3, but the output has 3 units"):
        kerasfed.fit_distributed(_model(keras.losses.SparseCategoricalCrossentropy()), x, y + 1, verbose=0)


@pytest.mark.distributed
def test_labels_of_a_dataset_are_read_from_its_element_spec():
    import tensorflow as tf

    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    with pytest.raises(kerasfed.LabelError, match="`y` holds class indices"):
        kerasfed.fit_distributed(_model("categorical_crossentropy"), dataset, verbose=0)


@pytest.mark.distributed
def test_validation_labels_are_checked_too():
    x, y = _data()
    with pytest.raises(kerasfed.LabelError, match="`validation_data` looks one-hot"):
        kerasfed.fit_distributed(_model(), x, y, validation_data=(x, np.eye(3)[y]), verbose=0)


def _two_outputs(loss):
    from kerasfed._compat import keras

    inputs = keras.Input((4,))
    a = keras.layers.Dense(3, activation="softmax", name="a")(inputs)
    b = keras.layers.Dense(2, activation="softmax", name="b")(inputs)
    model = keras.Model(inputs, [a, b])
    model.compile(optimizer="sgd", loss=loss)
    return model


@pytest.mark.distributed
@pytest.mark.parametrize("as_dict", [False, True])
def test_labels_are_checked_per_output(as_dict):
    x, y = _data()
    loss = {"a": "sparse_categorical_crossentropy", "b": "categorical_crossentropy"}
    labels = {"a": y, "b": y % 2} if as_dict else [y, y % 2]
    with pytest.raises(kerasfed.LabelError, match=r"`y` for the output 'b' holds class indices.*per-example shape \(2,\)"):
        kerasfed.fit_distributed(_two_outputs(loss), x, labels, verbose=0)


@pytest.mark.distributed
def test_matching_labels_train_as_model_fit_does():
    from kerasfed._compat import keras

    x, y = _data()
    loss = ["sparse_categorical_crossentropy", "categorical_crossentropy"]
    model = _two_outputs(loss)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    reference.compile(optimizer="sgd", loss=loss)
    labels = [y, np.eye(2)[y % 2]]
    history = kerasfed.fit_distributed(model, x, labels, strategy="default", shuffle=False, verbose=0)
    expected = reference.fit(x, labels, batch_size=32, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)


@pytest.mark.native
def test_warnings_from_inside_a_checked_call_point_at_the_callers_line():
    # checked_call adds a frame; user_stacklevel() counts to the first frame outside kerasfed.
    with pytest.warns(UserWarning, match="validation_batch_size=8 has no effect") as record:
        _federated(validation_batch_size=8)
    assert [w.filename for w in record if "validation_batch_size" in str(w.message)] == [__file__]


@pytest.mark.distributed
def test_labels_that_fit_are_not_refused():
    import tensorflow as tf

    x, y = _data()

    def custom_loss(y_true, y_pred):  # a custom loss may take any labels: not checked
        return tf.reduce_mean(tf.square(tf.cast(y_true, y_pred.dtype) - y_pred))

    for model, labels in [
        (_model(), y[:, None]),  # sparse labels of shape (n, 1)
        (_model("categorical_crossentropy"), np.eye(3)[y]),
        (_model(custom_loss), np.eye(3)[y]),
    ]:
        kerasfed.fit_distributed(model, x, labels, verbose=0)


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_the_aliases_are_listed_in_one_place():
    assert {old: cls.__name__ for old, cls in errors.ALIASES.items()} == {
        old: now for old, (_, now) in OLD_HOMES.items() if old != now and old in errors.ALIASES
    }
    assert set(errors.ALIASES) == {n for n in BUILTIN if getattr(errors, n).__name__ != n}
