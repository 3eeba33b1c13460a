"""Every bad argument of fit_federated fails with a clear error before any TFF work.

The ``no_tff_work`` fixture makes starting TFF's runtime fail the test, so each
error here is shown to come from the argument checks (fast), not from TFF.
"""

from __future__ import annotations

import numpy as np
import pytest

from kerasfed import _compat
from kerasfed._arguments import CallbacksTypeError, VerboseError
from kerasfed._compat import FederatedUnavailableError, keras
from kerasfed._keras_model import ModelError, ModelTypeError
from kerasfed.federated.algorithms import AlgorithmError
from kerasfed.federated.clients import ClientDataError, ClientDataTypeError
from kerasfed.federated.client_optimizers import ClientOptimizerError
from kerasfed.federated.fit import (
    FederatedArgumentError,
    FederatedArgumentTypeError,
    fit_federated,
)
from kerasfed.federated.server_optimizers import ServerOptimizerError

pytestmark = pytest.mark.federated


@pytest.fixture(autouse=True)
def no_tff_work(monkeypatch):
    # The TFF engine starts its runtime by this name when it is built.
    import kerasfed.federated.engines.tff.engine as tff_engine  # noqa: PLC0415

    def refuse(*args, **kwargs):
        raise AssertionError("fit_federated started TFF work before rejecting its arguments")

    monkeypatch.setattr(tff_engine, "federated_runtime", refuse)


def _model(optimizer="sgd", loss="sparse_categorical_crossentropy", compile=True):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    if compile:
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def _clients(sizes=(3, 4, 5)):
    rng = np.random.default_rng(0)
    return {
        f"c{i}": (rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n))
        for i, n in enumerate(sizes)
    }


def _fit(model=None, clients=None, **kwargs):
    kwargs.setdefault("rounds", 1)
    kwargs.setdefault("verbose", 0)
    return fit_federated(_model() if model is None else model,
                         _clients() if clients is None else clients, **kwargs)


# -- Counts and choices -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["rounds", "local_epochs", "batch_size", "evaluate_every", "validation_batch_size"])
def test_counts_below_one(name):
    with pytest.raises(FederatedArgumentError, match=f"`{name}` to be an int >= 1. Received: {name}=0"):
        _fit(**{name: 0})


@pytest.mark.parametrize("value", [2.5, "3", True, None])
def test_rounds_not_an_int(value):
    with pytest.raises(FederatedArgumentTypeError, match="expected `rounds` to be an int"):
        _fit(rounds=value)


@pytest.mark.parametrize("value", [0, 4])
def test_clients_per_round_out_of_range(value):
    with pytest.raises(
        FederatedArgumentError, match=rf"`clients_per_round` to be an int in \[1, 3\] \(the number of clients\)"
    ):
        _fit(clients_per_round=value)


def test_negative_seed():
    with pytest.raises(FederatedArgumentError, match="`seed` to be an int >= 0"):
        _fit(seed=-1)


def test_bad_verbose():
    with pytest.raises(VerboseError, match=r"`verbose` to be one of \['auto', 0, 1, 2\]"):
        _fit(verbose=3)


def test_callbacks_that_are_not_keras_callbacks():
    with pytest.raises(CallbacksTypeError, match=r"`callbacks` to hold keras.callbacks.Callback.*\[0\]"):
        _fit(callbacks=[print])


def test_a_single_callback_not_in_a_list():
    # Refused as model.fit refuses it (and fit_distributed).
    with pytest.raises(CallbacksTypeError, match=r"list of keras.callbacks.Callback.*callbacks=\[cb\]"):
        _fit(callbacks=keras.callbacks.History())


def test_checkpoint_dir_of_wrong_type_or_a_file(tmp_path):
    with pytest.raises(FederatedArgumentTypeError, match="`checkpoint_dir` to be None or a directory"):
        _fit(checkpoint_dir=3)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(FederatedArgumentError, match="exists and is not a directory"):
        _fit(checkpoint_dir=a_file)


def test_unknown_algorithm():
    with pytest.raises(AlgorithmError, match="Unknown federated algorithm: algorithm='fedfoo'"):
        _fit(algorithm="fedfoo")


def test_unknown_server_optimizer_and_bad_learning_rate():
    with pytest.raises(ServerOptimizerError, match="Unknown server optimizer"):
        _fit(server_optimizer="rmsprop")
    with pytest.raises(ServerOptimizerError, match="`server_learning_rate` to be a positive float"):
        _fit(server_learning_rate=0.0)


# -- The model ---------------------------------------------------------------------------


def test_uncompiled_model():
    with pytest.raises(ModelError, match="is not compiled"):
        _fit(model=_model(compile=False))


def test_not_a_model():
    with pytest.raises(ModelTypeError, match="expected `model` to be a compiled keras.Model"):
        _fit(model="model.keras")


def test_optimizer_without_tff_equivalent():
    with pytest.raises(ClientOptimizerError, match="'Nadam', which has no equivalent TFF client optimizer"):
        _fit(model=_model(optimizer=keras.optimizers.Nadam()))


def test_model_with_two_outputs():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(1)(inputs)])
    model.compile("sgd", loss=["sparse_categorical_crossentropy", "mse"])
    # One label array for two outputs: the message says how to give one per output.
    with pytest.raises(ClientDataError, match=r"the model has 2 outputs .* Pass a list of 2 "
                                              r"label arrays \(in that order\) or a dict"):
        _fit(model=model)
    # The TFF engine takes one output; it names the engine that takes several.
    with pytest.raises(ModelError, match="engine='native'"):
        _fit(model=model, engine="tff")


def test_subclassed_model_without_config():
    class Custom(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Custom()
    model(np.zeros((1, 4), np.float32))
    model.compile("sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ModelError, match="cannot rebuild|Sequential and functional"):
        _fit(model=model)


def test_inputs_of_another_shape_than_the_model_takes():
    clients = {"a": (np.zeros((3, 5), np.float32), np.zeros(3, np.int64))}
    with pytest.raises(ClientDataError, match=r"per-example shape \(4,\), but `clients` has features of shape \(5,\)"):
        _fit(clients=clients)


# -- Client data --------------------------------------------------------------------------


def test_clients_of_unsupported_type():
    with pytest.raises(ClientDataTypeError, match="Expected `clients` to be"):
        _fit(clients=[np.zeros((3, 4)), np.zeros(3)])


def test_no_clients():
    with pytest.raises(ClientDataError, match="empty dict"):
        _fit(clients={})


def test_empty_client_is_named():
    clients = _clients()
    clients["silent"] = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ClientDataError, match="Client 'silent' has no examples"):
        _fit(clients=clients)


def test_client_with_other_dtype_is_named():
    clients = _clients()
    clients["odd"] = (np.zeros((2, 4), np.float64), np.zeros(2, np.int64))
    with pytest.raises(ClientDataError, match="Client 'odd' has features .* dtype float64"):
        _fit(clients=clients)


def test_client_with_nan_is_named():
    clients = _clients()
    clients["c1"][0][0, 0] = np.nan
    with pytest.raises(ClientDataError, match="Client 'c1' has 1 NaN"):
        _fit(clients=clients)


def test_label_outside_the_models_classes():
    clients = _clients()
    clients["c2"][1][0] = 3  # the model has 3 output units: classes 0..2
    with pytest.raises(ClientDataError, match=r"Client 'c2' has label 3; .* in \[0, 3\)"):
        _fit(clients=clients)


def test_sparse_labels_for_a_categorical_loss():
    with pytest.raises(ClientDataError, match=r"one-hot labels need shape \(3,\)"):
        _fit(model=_model(loss="categorical_crossentropy"))


# -- Evaluation data ------------------------------------------------------------------------


def test_validation_data_not_a_pair():
    with pytest.raises(FederatedArgumentTypeError, match=r"`validation_data` to be a tuple \(x_val, y_val\)"):
        _fit(validation_data=np.zeros((3, 4)))
    with pytest.raises(FederatedArgumentTypeError, match="tuple of length 4"):
        _fit(validation_data=(np.zeros((3, 4)), np.zeros(3), np.ones(3), np.ones(3)))


def test_weighted_validation_data_runs_on_native_and_is_refused_by_tff():
    weighted = (np.zeros((3, 4), np.float32), np.zeros(3, np.int64), np.ones(3, np.float32))
    assert _fit(validation_data=weighted).params["engine"] == "native"  # "auto" picks it
    assert _fit(evaluation_clients={"e": weighted}).params["engine"] == "native"
    with pytest.raises(FederatedArgumentError, match="sample weights.*engine='native'"):
        _fit(validation_data=weighted, engine="tff")


def test_validation_data_with_bad_labels_or_shapes():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ClientDataError, match=r"`validation_data` has label 7"):
        _fit(validation_data=(x, np.array([0, 1, 7])))
    with pytest.raises(ClientDataError, match=r"`validation_data` has features of shape \(2,\)"):
        _fit(validation_data=(np.zeros((3, 2)), np.zeros(3, np.int64)))
    with pytest.raises(ClientDataError, match="2 labels|different numbers|3 .* 2"):
        _fit(validation_data=(x, np.zeros(2, np.int64)))


def test_evaluation_clients_with_other_dtypes():
    evaluation = {"e": (np.zeros((2, 4), np.float32), np.zeros(2, np.int32))}
    with pytest.raises(ClientDataError, match="`evaluation_clients` must have .* same"):
        _fit(evaluation_clients=evaluation)


# -- Environment ------------------------------------------------------------------------------


def test_environment_without_tff(monkeypatch):
    # engine="auto" would choose the native engine there; asking for TFF is refused.
    monkeypatch.setattr(_compat, "TF_VERSION", (2, 21))
    with pytest.raises(FederatedUnavailableError, match="needs TensorFlow Federated 0.87"):
        _fit(engine="tff")


def test_subclassed_model_with_config():
    class Custom(keras.Model):
        def __init__(self, units=3, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.dense = keras.layers.Dense(units)

        def call(self, x):
            return self.dense(x)

        def get_config(self):
            return {"units": self.units}

    model = Custom()
    model(np.zeros((1, 4), np.float32))
    model.compile("sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ModelError, match="TFF engine trains Sequential and functional models only"):
        _fit(model=model)


# -- Settings without effect (warned, then training would start) ------------------------------


def test_evaluate_every_without_evaluation_data_warns():
    with pytest.warns(UserWarning, match="evaluate_every=3 has no effect without"), \
            pytest.raises(AssertionError, match="started TFF work"):
        _fit(evaluate_every=3)


def test_validation_batch_size_without_validation_data_warns():
    with pytest.warns(UserWarning, match="validation_batch_size=64 has no effect without"), \
            pytest.raises(AssertionError, match="started TFF work"):
        _fit(validation_batch_size=64)


def test_local_epochs_with_fedsgd_warns():
    with pytest.warns(UserWarning, match="local_epochs=2 has no effect with algorithm='fedsgd'"), \
            pytest.raises(AssertionError, match="started TFF work"):
        _fit(algorithm="fedsgd", local_epochs=2)
