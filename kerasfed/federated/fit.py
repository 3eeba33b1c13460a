"""``fit_federated``: train a compiled Keras model by federated learning (TFF 0.87).

The call checks every argument, then (inside a kerasfed-owned TFF runtime) builds
the learning process once and runs it round by round. Rounds are Keras epochs for
callbacks and ``History``. Everything TFF-specific is in ``engine.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasfed._compat import keras, require_tff
from kerasfed.federated import checkpoint as ckpt
from kerasfed.federated.clients import ClientData, ClientDataError, as_client_data
from kerasfed.federated.progress import RoundProgress, quiet_tensorflow, resolve_verbose

_CALLER = "fit_federated"

BATCHNORM_WARNING = (
    "fit_federated: the model has BatchNormalization layers. TFF 0.87 trains their "
    "gamma and beta, but never updates their moving mean and variance: clients "
    "normalise each batch with its own statistics while training, but the global "
    "model keeps the moving statistics it has now (for a new layer mean 0 and "
    "variance 1), and evaluate/predict use those. Consider "
    "keras.layers.GroupNormalization or LayerNormalization instead."
)


class FederatedArgumentError(ValueError):
    """An argument of ``fit_federated`` has an invalid value."""


class FederatedArgumentTypeError(TypeError):
    """An argument of ``fit_federated`` has the wrong type."""


def fit_federated(
    model: Any,
    clients: Any,
    *,
    rounds: int,
    clients_per_round: int | None = None,
    local_epochs: int = 1,
    batch_size: int = 32,
    algorithm: Any = "fedavg",
    server_optimizer: Any = "sgd",
    server_learning_rate: float = 1.0,
    validation_data: tuple[Any, Any] | None = None,
    evaluate_every: int = 1,
    evaluation_clients: Any = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    verbose: int | str = "auto",
) -> keras.callbacks.History:
    """Trains a compiled Keras model by federated learning, simulated with TFF 0.87.

    Each round, ``clients_per_round`` clients are sampled; each trains a copy of
    the global model on its own data for ``local_epochs`` epochs with the compiled
    optimizer, loss and metrics; the server combines their updates with
    ``algorithm`` and applies them with ``server_optimizer``. With the defaults
    this is FedAvg (McMahan et al. 2017).

    Like ``Model.fit``, this trains ``model`` in place: after every round ``model``
    holds the global weights (before callbacks run), and at the end the final
    ones. Its compiled optimizer's own state is not used or changed.

    ``History.history`` has, per round: ``loss`` and the compiled metrics (TFF's
    averages over every example the round's clients trained on, during local
    training); ``num_examples`` (examples processed, over clients and local
    epochs); ``round_seconds`` (sampling, data pipelines and the TFF round);
    ``bytes_to_clients`` / ``bytes_from_clients`` (dense, uncompressed sizes of
    the values TFF's round broadcasts to / aggregates from each client, times the
    clients in the round; read from the round computation's TFF types). On
    evaluated rounds (see ``evaluate_every``) also ``val_<metric>`` (Keras
    ``evaluate`` of ``validation_data``) and ``fed_eval_<metric>`` (TFF federated
    evaluation over ``evaluation_clients``, averaged over all their examples).
    As with Keras' ``validation_freq``, rounds without evaluation have no
    ``val_``/``fed_eval_`` entries, so those lists are shorter than ``loss``.

    Args:
      model: A compiled, built Keras model (Sequential or functional, one input and
        one output), or a zero-argument function returning one.
      clients: Training clients: ``{client_id: (x, y)}``, ``{client_id:
        tf.data.Dataset}``, a ``kerasfed.ClientData`` or a TFF ``ClientData``.
      rounds: Number of rounds, >= 1 (the total, counting resumed rounds).
      clients_per_round: Clients sampled per round, in [1, number of clients];
        None (default) takes all clients every round.
      local_epochs: Passes of each client over its data per round (default 1).
      batch_size: Client batch size (default 32); also used for ``validation_data``.
      algorithm: ``"fedavg"`` (default), ``"fedavg_unweighted"``, ``"fedsgd"``,
        ``"fedprox"``, ``"mime"``, or an instance such as ``FedProx(mu=0.1)``.
      server_optimizer: ``"sgd"`` (default), ``"adam"``, ``"yogi"``, ``"adagrad"``,
        or an instance such as ``ServerSGD(momentum=0.9)``.
      server_learning_rate: The server optimizer's learning rate (default 1.0:
        FedAvg's plain averaging with server SGD).
      validation_data: ``(x_val, y_val)`` evaluated centrally with the global
        weights on evaluated rounds (default None).
      evaluate_every: Evaluate every this many rounds, and always on the last
        round (default 1).
      evaluation_clients: Held-out clients (same types as ``clients``) evaluated
        with TFF's federated evaluation on evaluated rounds (default None).
      callbacks: Keras callbacks; each round is an epoch (``History``,
        ``CSVLogger``, ``EarlyStopping``, ``ModelCheckpoint``, ``TensorBoard`` work
        unchanged; ``model.stop_training = True`` stops after the round).
      checkpoint_dir: If set (default None), the server state is saved there after
        every round, and a later call with the same arguments resumes after the
        last saved round (its ``History`` lists every round). A checkpoint of a
        different configuration raises ``CheckpointMismatchError``.
      seed: Seed of client sampling and client data shuffling (default None:
        drawn at random, and kept in the checkpoint). TFF's client training is
        otherwise deterministic unless the model draws random numbers (Dropout).
      verbose: 0 (silent), 1 (progress bar), 2 (one line per round) or ``"auto"``
        (default: 1 in a terminal or notebook, else 2).

    Returns:
      A ``keras.callbacks.History``: ``.history`` as above, ``.model`` is ``model``
      (holding the final global weights), ``.params`` has ``rounds`` and ``seed``.

    Raises:
      FederatedUnavailableError: TensorFlow Federated is not installed here.
      FederatedArgumentError, FederatedArgumentTypeError: A bad argument.
      ModelError, ModelTypeError, UnsupportedModelError: An unusable model.
      ClientDataError, ClientDataTypeError: Unusable client data (names the client).
      AlgorithmError, ServerOptimizerError, ClientOptimizerError: Unknown names or
        settings TFF cannot reproduce.
      CheckpointMismatchError: ``checkpoint_dir`` holds a different training.

    Example:
      >>> clients = kerasfed.partition(x, y, num_clients=30, scheme="dirichlet")  # doctest: +SKIP
      >>> history = kerasfed.fit_federated(model, clients, rounds=30,
      ...                                  clients_per_round=10)  # doctest: +SKIP
    """
    require_tff()
    plan = _check_arguments(
        model, clients, rounds=rounds, clients_per_round=clients_per_round,
        local_epochs=local_epochs, batch_size=batch_size, algorithm=algorithm,
        server_optimizer=server_optimizer, server_learning_rate=server_learning_rate,
        validation_data=validation_data, evaluate_every=evaluate_every,
        evaluation_clients=evaluation_clients, callbacks=callbacks,
        checkpoint_dir=checkpoint_dir, seed=seed, verbose=verbose,
    )
    return _train(plan)


# -- Argument checks (all before any TFF work) -------------------------------------------


@dataclasses.dataclass
class _Plan:
    """Checked arguments and everything derived from them."""

    model: keras.Model
    recipe: Any
    clients: ClientData
    eval_clients: ClientData | None
    validation: tuple[np.ndarray, np.ndarray] | None
    rounds: int
    clients_per_round: int | None
    local_epochs: int
    batch_size: int
    evaluate_every: int
    algorithm: Any
    server_optimizer: Any
    client_optimizer: Any
    callbacks: list
    checkpoint_dir: str | None
    checkpoint: ckpt.Checkpoint | None
    fingerprint: dict[str, str]
    seed: int
    verbose: int


def _check_arguments(model: Any, clients: Any, **args: Any) -> _Plan:
    # Deferred: these import TFF pieces, which only exist in the TFF environment.
    from kerasfed._keras_model import ModelRecipe, resolve_compiled_model  # noqa: PLC0415
    from kerasfed.federated.algorithms import get_algorithm  # noqa: PLC0415
    from kerasfed.federated.client_optimizers import client_optimizer_from_keras  # noqa: PLC0415
    from kerasfed.federated.engine import check_model  # noqa: PLC0415
    from kerasfed.federated.server_optimizers import (  # noqa: PLC0415
        get_server_optimizer,
        resolve_server_optimizer,
    )

    rounds = _check_int("rounds", args["rounds"], 1)
    local_epochs = _check_int("local_epochs", args["local_epochs"], 1)
    batch_size = _check_int("batch_size", args["batch_size"], 1)
    evaluate_every = _check_int("evaluate_every", args["evaluate_every"], 1)
    seed = args["seed"] if args["seed"] is None else _check_int("seed", args["seed"], 0)
    verbose = resolve_verbose(args["verbose"])
    callbacks = _check_callbacks(args["callbacks"])
    checkpoint_dir = _check_checkpoint_dir(args["checkpoint_dir"])

    model = resolve_compiled_model(model, caller=_CALLER)
    recipe = ModelRecipe.from_model(model, caller=_CALLER)
    _check_single_input_output(model)
    algorithm = get_algorithm(args["algorithm"])
    server_spec = resolve_server_optimizer(args["server_optimizer"])
    server_opt = get_server_optimizer(server_spec, args["server_learning_rate"])
    client_opt = (
        client_optimizer_from_keras(recipe.optimizer_config(), caller=_CALLER)
        if algorithm.uses_client_optimizer
        else None
    )

    num_classes, sparse = _label_rule(recipe, model.output_shape)
    client_data = as_client_data(clients, what="clients")
    cpr = args["clients_per_round"]
    if cpr is not None:
        cpr = _check_int("clients_per_round", cpr, 1, len(client_data))
    _check_features(model, client_data, "clients")
    check_model(model, recipe, client_data.element_spec)
    client_data.validate(**_label_check(num_classes, sparse, client_data))

    eval_clients = None
    if args["evaluation_clients"] is not None:
        eval_clients = as_client_data(args["evaluation_clients"], what="evaluation_clients")
        _check_same_spec(client_data, eval_clients)
        eval_clients.validate(**_label_check(num_classes, sparse, eval_clients))
    validation = _check_validation_data(args["validation_data"], model, num_classes, sparse)

    _warn_ignored_compile_settings(recipe)
    _warn_settings_without_effect(
        algorithm, local_epochs, evaluate_every,
        has_evaluation=validation is not None or eval_clients is not None,
    )
    if any(isinstance(m, keras.layers.BatchNormalization) for m in model.submodules):
        warnings.warn(BATCHNORM_WARNING, UserWarning, stacklevel=3)

    fingerprint = ckpt.training_fingerprint(
        model=model, recipe=recipe, algorithm=algorithm, server_optimizer=server_spec,
        server_learning_rate=args["server_learning_rate"], clients=client_data,
        clients_per_round=cpr, local_epochs=local_epochs, batch_size=batch_size,
    )
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = ckpt.load_checkpoint(checkpoint_dir)
        if checkpoint is not None:
            ckpt.check_resumable(
                checkpoint, directory=checkpoint_dir, fingerprint=fingerprint,
                seed=seed, rounds=rounds,
            )
            seed = checkpoint.seed
    if seed is None:
        seed = secrets.randbelow(2**31)  # recorded in History.params and checkpoints

    return _Plan(
        model=model, recipe=recipe, clients=client_data, eval_clients=eval_clients,
        validation=validation, rounds=rounds, clients_per_round=cpr,
        local_epochs=local_epochs, batch_size=batch_size, evaluate_every=evaluate_every,
        algorithm=algorithm, server_optimizer=server_opt, client_optimizer=client_opt,
        callbacks=callbacks, checkpoint_dir=checkpoint_dir, checkpoint=checkpoint,
        fingerprint=fingerprint, seed=seed, verbose=verbose,
    )


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise FederatedArgumentTypeError(
            f"{_CALLER}: expected `{name}` to be an int. Received: {name}={value!r} of "
            f"type {type(value).__name__}."
        )
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        hint = " (the number of clients)" if name == "clients_per_round" else ""
        raise FederatedArgumentError(
            f"{_CALLER}: expected `{name}` to be an int {bounds}{hint}. Received: "
            f"{name}={value}."
        )
    return value


def _check_callbacks(callbacks: Any) -> list:
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback):
        callbacks = [callbacks]
    if not isinstance(callbacks, (list, tuple)) or not all(
        isinstance(c, keras.callbacks.Callback) for c in callbacks
    ):
        raise FederatedArgumentTypeError(
            f"{_CALLER}: expected `callbacks` to be a list of keras.callbacks.Callback. "
            f"Received: callbacks={callbacks!r}."
        )
    return list(callbacks)


def _check_checkpoint_dir(directory: Any) -> str | None:
    if directory is None:
        return None
    if not isinstance(directory, (str, os.PathLike)):
        raise FederatedArgumentTypeError(
            f"{_CALLER}: expected `checkpoint_dir` to be None or a directory path. "
            f"Received: checkpoint_dir={directory!r} of type {type(directory).__name__}."
        )
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FederatedArgumentError(
            f"{_CALLER}: checkpoint_dir={directory!r} exists and is not a directory. "
            f"Pass a directory path (it is created if missing)."
        )
    return directory


def _check_single_input_output(model: keras.Model) -> None:
    try:
        shapes = (("input", model.input_shape), ("output", model.output_shape))
    except AttributeError:  # a subclassed model: Keras knows no input/output shape
        raise FederatedArgumentError(
            f"{_CALLER}: the model {model.name!r} of class {type(model).__name__} has no "
            f"fixed input and output shape (a subclassed model). TFF trains Sequential and "
            f"functional models only; rebuild it with keras.Sequential or keras.Model(inputs, "
            f"outputs)."
        ) from None
    for what, shape in shapes:
        if not isinstance(shape, tuple) or (shape and isinstance(shape[0], (tuple, list))):
            raise FederatedArgumentError(
                f"{_CALLER}: the model {model.name!r} has several {what}s ({shape}). "
                f"Federated training supports models with one input and one output."
            )


def _label_rule(recipe: Any, output_shape: tuple) -> tuple[int | None, bool | None]:
    """(number of classes, sparse labels?) that the loss implies, or (None, None)."""
    loss = recipe.new_loss()
    fn = getattr(loss, "fn", loss)  # Loss classes wrap the loss function
    name = getattr(fn, "__name__", type(loss).__name__).lower()
    units = output_shape[-1]
    if units is None:
        return None, None
    if "sparse_categorical" in name:
        return units, True
    if "categorical" in name:
        return units, False
    if "binary" in name and units == 1:
        return 2, True
    return None, None


def _label_check(num_classes: int | None, sparse: bool | None, data: ClientData) -> dict:
    # Soft 0..1 targets are valid for binary cross-entropy: check integer labels only.
    if num_classes == 2 and sparse and data.label_dtype.kind == "f":
        return {}
    return {"num_classes": num_classes, "sparse_labels": sparse}


def _check_features(model: keras.Model, data: ClientData, what: str) -> None:
    expected = tuple(model.input_shape[1:])
    got = tuple(data.feature_shape)
    if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise ClientDataError(
            f"{_CALLER}: the model {model.name!r} takes inputs of per-example shape "
            f"{expected}, but `{what}` has features of shape {got}. Reshape the data "
            f"or change the model's input shape."
        )


def _check_same_spec(clients: ClientData, eval_clients: ClientData) -> None:
    ours = (clients.feature_shape, clients.feature_dtype, clients.label_shape, clients.label_dtype)
    theirs = (
        eval_clients.feature_shape, eval_clients.feature_dtype,
        eval_clients.label_shape, eval_clients.label_dtype,
    )
    if ours != theirs:
        raise ClientDataError(
            f"{_CALLER}: `evaluation_clients` must have features and labels of the same "
            f"per-example shapes and dtypes as `clients` (TFF evaluates with the training "
            f"types). `clients`: x {ours[0]} {ours[1]}, y {ours[2]} {ours[3]}; "
            f"`evaluation_clients`: x {theirs[0]} {theirs[1]}, y {theirs[2]} {theirs[3]}. "
            f"Convert them, e.g. with .astype(...)."
        )


def _check_validation_data(
    validation_data: Any,
    model: keras.Model,
    num_classes: int | None,
    sparse: bool | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise FederatedArgumentTypeError(
            f"{_CALLER}: expected `validation_data` to be a tuple (x_val, y_val) of arrays. "
            f"Received: {type(validation_data).__name__}"
            + (f" of length {len(validation_data)}" if isinstance(validation_data, (tuple, list)) else "")
            + ". Pass validation_data=(x_val, y_val); for held-out clients use "
            "`evaluation_clients`."
        )
    try:
        data = ClientData({"validation_data": tuple(validation_data)})
        _check_features(model, data, "validation_data")
        data.validate(**_label_check(num_classes, sparse, data))
    except ClientDataError as e:
        message = str(e).replace("Client 'validation_data'", "`validation_data`")
        raise ClientDataError(message) from None
    return data["validation_data"]


def _warn_ignored_compile_settings(recipe: Any) -> None:
    for key in ("loss_weights", "weighted_metrics"):
        if recipe.compile_config.get(key):
            warnings.warn(
                f"{_CALLER}: the model is compiled with {key}=..., which federated "
                f"training ignores (TFF's Keras wrapper has no place for it).",
                UserWarning,
                stacklevel=4,
            )


def _warn_settings_without_effect(
    algorithm: Any, local_epochs: int, evaluate_every: int, *, has_evaluation: bool
) -> None:
    if evaluate_every != 1 and not has_evaluation:
        warnings.warn(
            f"{_CALLER}: evaluate_every={evaluate_every} has no effect without "
            f"`validation_data` or `evaluation_clients`.",
            UserWarning,
            stacklevel=4,
        )
    if local_epochs != 1 and not algorithm.uses_client_optimizer:
        warnings.warn(
            f"{_CALLER}: local_epochs={local_epochs} has no effect with "
            f"algorithm={algorithm.name!r}: its clients compute one gradient of their "
            f"mean loss (repeating the data leaves it unchanged) and do not train.",
            UserWarning,
            stacklevel=4,
        )


# -- Training ------------------------------------------------------------------------------


def _train(plan: _Plan) -> keras.callbacks.History:
    from kerasfed.federated.runtime import federated_runtime  # noqa: PLC0415  (imports TFF)

    model = plan.model
    saved = plan.checkpoint
    start = saved.rounds_completed if saved else 0
    round_logs: list[dict] = list(saved.round_logs) if saved else []
    if saved:
        model.set_weights(saved.weights)

    history = keras.callbacks.History()
    progress = RoundProgress(plan.verbose, plan.rounds, initial_round=start)
    callbacks = keras.callbacks.CallbackList(
        [history, *plan.callbacks, progress], model=model,
        verbose=plan.verbose, epochs=plan.rounds, steps=None,
    )
    history.params = dict(history.params or {}, rounds=plan.rounds, seed=plan.seed)
    model.stop_training = False
    try:
        with contextlib.ExitStack() as stack:
            engine = state = None
            if start < plan.rounds:
                stack.enter_context(federated_runtime(quiet=True))
                with quiet_tensorflow():
                    engine, state = _start_engine(plan)
            callbacks.on_train_begin()
            _restore_history(history, round_logs)
            logs: dict = round_logs[-1] if round_logs else {}
            for round_num in range(start, plan.rounds):
                callbacks.on_epoch_begin(round_num)
                with quiet_tensorflow():  # callbacks run outside: their logs stay visible
                    state, logs = _run_round(plan, engine, state, round_num)
                round_logs.append(dict(logs))
                if plan.checkpoint_dir is not None:
                    ckpt.save_checkpoint(plan.checkpoint_dir, ckpt.Checkpoint(
                        rounds_completed=round_num + 1, seed=plan.seed,
                        fingerprint=plan.fingerprint, round_logs=round_logs,
                        state=engine.state_to_arrays(state), weights=model.get_weights(),
                    ))
                callbacks.on_epoch_end(round_num, logs)
                if model.stop_training:
                    break
            callbacks.on_train_end(dict(logs))
    finally:
        progress.close()
    model.history = history
    return history


def _start_engine(plan: _Plan) -> tuple[Any, Any]:
    from kerasfed.federated.engine import FederatedEngine  # noqa: PLC0415  (imports TFF)

    engine = FederatedEngine(
        plan.model, plan.recipe,
        algorithm=plan.algorithm,
        client_optimizer=plan.client_optimizer,
        server_optimizer=plan.server_optimizer,
        element_spec=plan.clients.element_spec,
        federated_evaluation=plan.eval_clients is not None,
    )
    if plan.checkpoint is None:
        return engine, engine.initial_state(plan.model.get_weights())
    try:
        return engine, engine.state_from_arrays(plan.checkpoint.state)
    except ValueError as e:
        raise ckpt.CheckpointMismatchError(
            f"checkpoint_dir={plan.checkpoint_dir!r} holds a server state that does not "
            f"fit this training ({e}). It was written by another kerasfed/TFF version or "
            f"configuration; pass a new `checkpoint_dir` to start over."
        ) from e


def _run_round(plan: _Plan, engine: Any, state: Any, round_num: int) -> tuple[Any, dict]:
    from kerasfed.federated.clients import sample_clients  # noqa: PLC0415

    started = time.perf_counter()
    cids = sample_clients(plan.clients.client_ids, plan.clients_per_round, round_num, plan.seed)
    datasets = plan.clients.datasets(
        cids, batch_size=plan.batch_size, epochs=plan.local_epochs,
        shuffle_seed=[plan.seed, round_num],
    )
    state, result = engine.train_round(state, datasets)
    seconds = time.perf_counter() - started
    expected = plan.local_epochs * sum(plan.clients.num_examples(c) for c in cids)
    _warn_non_finite(round_num, result, expected)
    plan.model.set_weights(engine.get_weights(state))
    # TFF reports 0.0 when no client's metrics were kept; there is no value then.
    logs = dict(result.metrics) if result.num_examples else {k: float("nan") for k in result.metrics}
    logs.update(
        num_examples=result.num_examples,
        round_seconds=seconds,
        bytes_to_clients=engine.bytes_to_client * len(cids),
        bytes_from_clients=engine.bytes_from_client * len(cids),
    )
    if (round_num + 1) % plan.evaluate_every == 0 or round_num == plan.rounds - 1:
        logs.update(_evaluate(plan, engine, state))
    return state, logs


def _warn_non_finite(round_num: int, result: Any, expected_examples: int) -> None:
    # TFF drops a client whose update has NaN/inf values (weight 0, metrics reset),
    # and keeps the global weights when every client was dropped: say so.
    if result.update_non_finite or result.num_examples == 0:
        what = ("every client's update had NaN or infinite values, so TFF kept the "
                "previous global weights")
    elif result.num_examples < expected_examples:
        what = (f"some clients' updates had NaN or infinite values; TFF left them out "
                f"of the average and the metrics ({result.num_examples} of "
                f"{expected_examples} examples counted)")
    else:
        return
    warnings.warn(
        f"{_CALLER}: round {round_num + 1}: {what}. Lower the client or server learning "
        f"rate, or check the data.",
        RuntimeWarning,
        stacklevel=5,  # _warn_non_finite < _run_round < _train < fit_federated < caller
    )


def _evaluate(plan: _Plan, engine: Any, state: Any) -> dict[str, float]:
    logs: dict[str, float] = {}
    if plan.validation is not None:
        x, y = plan.validation
        results = plan.model.evaluate(
            x, y, batch_size=plan.batch_size, verbose=0, return_dict=True
        )
        logs.update({f"val_{k}": float(v) for k, v in results.items()})
    if plan.eval_clients is not None:
        datasets = plan.eval_clients.datasets(batch_size=plan.batch_size, shuffle=False)
        logs.update({f"fed_eval_{k}": v for k, v in engine.evaluate(state, datasets).items()})
    return logs


def _restore_history(history: keras.callbacks.History, round_logs: list[dict]) -> None:
    # History.on_train_begin resets `epoch`; refill it with the resumed rounds.
    for round_num, logs in enumerate(round_logs):
        history.epoch.append(round_num)
        for key, value in logs.items():
            history.history.setdefault(key, []).append(value)
