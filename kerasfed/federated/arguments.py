"""``fit_federated``'s arguments: every check, once, before any engine starts.

``check_arguments`` turns the call's arguments into a ``Plan``: the engine
(``engine="auto"`` asks the TFF engine what it can run,
``engines/tff/capabilities.py``), the ``EngineSetup`` the engine is built from
(built here, once), the clients as a ``ClientData`` and the round loop's
settings. Every bad value raises here, with what was expected, what was
received and how to fix it. It only checks: the checkpoint to resume and the
seed are settled where training starts (``fit._resume_point``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed._arguments import check_callbacks, check_verbose, user_stacklevel
from kerasfed._compat import KERAS_3, keras
from kerasfed._keras_model import ModelError, ModelRecipe, resolve_compiled_model
from kerasfed.errors import (  # noqa: F401  (defined with the family)
    FederatedArgumentError,
    FederatedArgumentTypeError,
)
from kerasfed.federated import checkpoint as ckpt
from kerasfed.federated import aggregators as agg
from kerasfed.federated.aggregators import accounting
from kerasfed.federated.algorithms import get_algorithm
from kerasfed.federated.asynchronous import check_asynchronous
from kerasfed.federated.algorithms.personal import PersonalLayers
from kerasfed.federated.attack import Attack
from kerasfed.federated.client_optimizers import client_optimizer_from_keras
from kerasfed.federated.engines.native.forward import keras_inputs
from kerasfed.federated.learning_rates import RoundSchedule, round_schedule
from kerasfed.federated.clients import ClientData, ClientDataError, as_client_data
from kerasfed.federated.clients.structure import to_tensors
from kerasfed.federated.compiled_parts import CompiledParts
from kerasfed.federated.devices import Devices, check_devices
from kerasfed.federated.local_work import LocalWork, check_local_work
from kerasfed.federated.engines import EngineSetup, resolve_engine
from kerasfed.federated.engines.tff import capabilities as tff_capabilities
from kerasfed.federated.model_outputs import OutputLayout
from kerasfed.federated.personal_layers import resolve_personal_layers
from kerasfed.federated.personalization import check_personalization
from kerasfed.federated.progress import resolve_verbose
from kerasfed.federated.server_optimizers import resolve_server_optimizer
from kerasfed.federated.strategy_argument import engine_for_strategy, resolve_replicas

_CALLER = "fit_federated"

BATCHNORM_WARNING = (
    "fit_federated: the model has BatchNormalization layers. TFF 0.87 trains their "
    "gamma and beta, but never updates their moving mean and variance: clients "
    "normalise each batch with its own statistics while training, but the global "
    "model keeps the moving statistics it has now (for a new layer mean 0 and "
    "variance 1), and evaluate/predict use those. Use engine='native' (it averages "
    "the moving statistics over the clients), or keras.layers.GroupNormalization / "
    "LayerNormalization instead."
)



def _of_setup(name: str) -> property:
    return property(lambda plan: getattr(plan.setup, name), doc=f"``setup.{name}``.")


@dataclasses.dataclass
class Plan:
    """Checked arguments and everything derived from them.

    What the engine is built from is held once, in ``setup`` (the
    ``EngineSetup`` handed to the engine); the round loop reads those settings
    through it (``plan.model`` is ``plan.setup.model``, ...).
    """

    engine: str
    setup: EngineSetup
    clients: ClientData
    eval_clients: ClientData | None
    eval_clients_per_round: int | None
    validation: tuple[np.ndarray, np.ndarray] | None
    rounds: int
    clients_per_round: int | None
    validation_batch_size: int
    shuffle: bool
    evaluate_every: int
    client_sampling: str
    label_rule: tuple[int | None, bool | None]
    callbacks: list
    checkpoint_dir: str | None
    fingerprint: dict[str, str]
    verbose: int
    # Set where training starts (fit.py), from the checkpoint and the other
    # workers, with ``setup.seed`` (None until then unless given) and ``setup.attackers``:
    checkpoint: ckpt.Checkpoint | None = None
    # ``personalization=``, checked (``personalization.CheckedFineTune``), or None.
    personalization: Any = None
    # Each client's local epochs and the step cap (``local_work.LocalWork``).
    local_work: LocalWork | None = None
    # ``devices=``: simulated dropout, speeds and deadlines, or None.
    devices: Devices | None = None

    model = _of_setup("model")
    recipe = _of_setup("recipe")
    parts = _of_setup("parts")
    algorithm = _of_setup("algorithm")
    client_optimizer = _of_setup("client_optimizer")
    server_optimizer = _of_setup("server_optimizer")
    server_learning_rate = _of_setup("server_learning_rate")
    client_learning_rate = _of_setup("client_learning_rate")
    batch_size = _of_setup("batch_size")
    local_epochs = _of_setup("local_epochs")
    max_parallel_clients = _of_setup("max_parallel_clients")
    aggregator = _of_setup("aggregator")
    expected_clients = _of_setup("expected_clients")
    attack = _of_setup("attack")
    attackers = _of_setup("attackers")
    seed = _of_setup("seed")
    replicas = _of_setup("replicas")
    layout = _of_setup("layout")

    @property
    def sampled_per_round(self) -> int | None:
        """Clients sampled per round: ``clients_per_round``, more with over-selection."""
        if self.devices is None or self.clients_per_round is None:
            return self.clients_per_round
        return self.devices.sampled(self.clients_per_round, len(self.clients))

    @property
    def chief(self) -> bool:
        """Whether this process writes files (always, without a multi-worker strategy)."""
        return self.replicas is None or self.replicas.chief


def check_arguments(model: Any, clients: Any, **args: Any) -> Plan:
    """Checks every argument of ``fit_federated``; returns the ``Plan``.

    Raises: see ``fit_federated``.
    """
    engine = resolve_engine(engine_for_strategy(args["engine"], args["strategy"]))
    # First: a multi-worker strategy is best created before the model function runs.
    replicas = resolve_replicas(args["strategy"], engine)
    rounds = _check_int("rounds", args["rounds"], 1)
    local_epochs = args["local_epochs"]  # an int, or a function of the client id
    if not callable(local_epochs):
        local_epochs = _check_int("local_epochs", local_epochs, 1)
    devices = check_devices(args.get("devices"))
    batch_size = _check_int("batch_size", args["batch_size"], 1)
    validation_batch_size = args["validation_batch_size"]
    if validation_batch_size is not None:
        validation_batch_size = _check_int("validation_batch_size", validation_batch_size, 1)
    evaluate_every = _check_int("evaluate_every", args["evaluate_every"], 1)
    seed = args["seed"] if args["seed"] is None else _check_int("seed", args["seed"], 0)
    shuffle = _check_bool("shuffle", args["shuffle"])
    max_parallel = args["max_parallel_clients"]
    if max_parallel is not None:
        max_parallel = _check_int("max_parallel_clients", max_parallel, 1)
    verbose = check_verbose(args["verbose"], caller=_CALLER)
    # Workers other than the chief train silently unless asked (as fit_distributed).
    quiet_worker = replicas is not None and not replicas.chief and verbose == "auto"
    verbose = 0 if quiet_worker else resolve_verbose(verbose)
    callbacks = check_callbacks(args["callbacks"], caller=_CALLER)
    checkpoint_dir = _check_checkpoint_dir(args["checkpoint_dir"])

    model = resolve_compiled_model(model, caller=_CALLER)
    algorithm = get_algorithm(args["algorithm"])
    personal = resolve_personal_layers(args.get("personal_layers"), model)
    if personal is not None:
        algorithm = PersonalLayers(algorithm, personal.trainable)
    server_optimizer = resolve_server_optimizer(args["server_optimizer"])
    server_learning_rate = round_schedule(args["server_learning_rate"],
                                          name="server_learning_rate", rounds=rounds)
    client_learning_rate = args["client_learning_rate"]
    if client_learning_rate is not None:
        client_learning_rate = round_schedule(client_learning_rate,
                                              name="client_learning_rate", rounds=rounds)
    client_data = as_client_data(clients, what="clients")
    eval_data = (None if args["evaluation_clients"] is None else
                 as_client_data(args["evaluation_clients"], what="evaluation_clients"))
    chain = agg.resolve_chain(args["aggregator"])
    if engine == "tff":
        requested = args["engine"]
        auto = (isinstance(requested, str) and requested.lower() == "auto"
                and args["strategy"] is None)
        engine = _tff_or_native(auto, model=model, clients=client_data,
                                evaluation_clients=eval_data,
                                validation_data=args["validation_data"], aggregator=chain,
                                algorithm=algorithm, attack=args["attack"],
                                personalization=args.get("personalization"))
    # The TFF engine rebuilds the model from its config inside TFF's graphs; the
    # native engine trains the model itself, so subclassed models need no config.
    recipe = ModelRecipe.from_model(model, caller=_CALLER, rebuild=engine == "tff")
    if engine == "native":
        _check_native_model(model)
    layout = OutputLayout.of(model)
    client_opt = (
        _client_optimizer(recipe, client_learning_rate)
        if algorithm.uses_client_optimizer
        else None
    )
    client_data = _canonical_clients(client_data, layout, "clients")
    output_shape = _output_shape(model, client_data, layout)
    num_classes, sparse = _label_rule(recipe, output_shape) if layout.single else (None, None)
    label_rules = None if layout.single else _label_rules(recipe, layout, output_shape)
    cpr = args["clients_per_round"]
    if cpr is not None:
        cpr = _check_int("clients_per_round", cpr, 1, len(client_data))
    _check_features(model, client_data, "clients")
    sampling = _check_client_sampling(args["client_sampling"])
    local_work = check_local_work(local_epochs, args.get("local_steps"), client_data.client_ids,
                                  trains_locally=algorithm.trains_locally)
    local_epochs = local_work.max_epochs
    if devices is not None:
        _check_devices(devices, client_data, cpr=cpr, sampling=sampling)
    if getattr(algorithm, "asynchronous", False):
        check_asynchronous(algorithm, replicas=replicas, chain=chain, devices=devices,
                           clients_per_round=cpr, sampling=sampling,
                           num_clients=len(client_data), attack=args["attack"],
                           personal=personal)
    expected = cpr if cpr is not None else len(client_data)
    attack = _check_attack(args["attack"], num_classes)
    if attack is not None and attack.kind == "label_flip" and not layout.single:
        raise FederatedArgumentError(
            f"{_CALLER}: Attack('label_flip') flips one array of class labels; this model has "
            f"{len(layout.names)} outputs {list(layout.names)}. Use an update attack "
            f"('sign_flip', 'scale', ...) with several outputs.")
    _check_aggregation(chain, sampling=sampling, expected=expected)
    parts = CompiledParts.of(recipe, client_data.element_spec[1], output_shape,
                             layout=layout, structured=engine == "native")
    rules = _label_check(num_classes, sparse, client_data, label_rules)
    client_data.validate(**rules)

    eval_clients = None
    if eval_data is not None:
        eval_clients = _canonical_clients(eval_data, layout, "evaluation_clients")
        _check_same_spec(client_data, eval_clients)
        eval_clients.validate(**_label_check(num_classes, sparse, eval_clients, label_rules))
    eval_per_round = args["evaluation_clients_per_round"]
    if eval_per_round is not None:
        if eval_clients is None:
            raise FederatedArgumentError(
                f"{_CALLER}: evaluation_clients_per_round={eval_per_round!r} needs "
                f"`evaluation_clients` to sample from. Pass evaluation_clients=..., or drop it.")
        eval_per_round = _check_int("evaluation_clients_per_round", eval_per_round, 1,
                                    len(eval_clients))
    validation = _check_validation_data(args["validation_data"], model, num_classes, sparse,
                                        layout=layout, label_rules=label_rules, engine=engine)

    if engine == "tff":
        _warn_ignored_compile_settings(recipe)
    _warn_settings_without_effect(
        algorithm, 1 if local_work.varies else local_epochs, evaluate_every,
        has_evaluation=validation is not None or eval_clients is not None,
        client_learning_rate=client_learning_rate,
    )
    if validation_batch_size is not None and validation is None:
        warnings.warn(
            f"{_CALLER}: validation_batch_size={validation_batch_size} has no effect without "
            f"`validation_data` (federated evaluation batches each client's data with "
            f"batch_size, as its training does).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    if engine == "tff" and any(
        "BatchNormalization" in type(m).__name__ for m in model.submodules
    ):
        warnings.warn(BATCHNORM_WARNING, UserWarning, stacklevel=user_stacklevel())

    fingerprint = ckpt.training_fingerprint(
        model=model, recipe=recipe, algorithm=algorithm, server_optimizer=server_optimizer,
        server_learning_rate=server_learning_rate.constant or 1.0, clients=client_data,
        clients_per_round=cpr, local_epochs=local_epochs, batch_size=batch_size,
        shuffle=shuffle, aggregator=chain, client_sampling=sampling, attack=attack,
    )
    fingerprint.update(_rates_fingerprint(server_optimizer, server_learning_rate,
                                          client_learning_rate))
    fingerprint.update(local_work.fingerprint())
    if devices is not None:
        fingerprint["devices"] = ", ".join(f"{k}={v}" for k, v in devices.describe().items())

    if args.get("personalization") is not None and (
            personal is not None or algorithm.trains_personal_model):
        raise FederatedArgumentError(
            f"{_CALLER}: personalization=FineTune(...) fine-tunes the global model, and this "
            f"run's clients keep weights of their own ("
            f"{'personal_layers' if personal is not None else algorithm.name}), which are "
            f"evaluated on the evaluation clients that are training clients instead "
            f"(fed_eval_personalized_<metric>). Pass one or the other.")
    setup = EngineSetup(
        model=model, recipe=recipe, parts=parts, algorithm=algorithm,
        client_optimizer=client_opt, server_optimizer=server_optimizer,
        server_learning_rate=server_learning_rate, client_learning_rate=client_learning_rate,
        batch_size=batch_size, element_spec=client_data.element_spec,
        federated_evaluation=eval_clients is not None, max_parallel_clients=max_parallel,
        largest_client=max(client_data.num_examples(c) for c in client_data.client_ids),
        num_clients=len(client_data.client_ids), local_epochs=local_epochs, aggregator=chain,
        attack=attack, seed=seed, expected_clients=expected, replicas=replicas, layout=layout,
        personal=personal, local_steps=local_work.steps,
    )
    return Plan(
        engine=engine, setup=setup, clients=client_data, eval_clients=eval_clients,
        eval_clients_per_round=eval_per_round, validation=validation, rounds=rounds,
        clients_per_round=cpr, validation_batch_size=validation_batch_size or batch_size,
        shuffle=shuffle, evaluate_every=evaluate_every, client_sampling=sampling,
        label_rule=(num_classes, sparse), callbacks=callbacks, checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint, verbose=verbose,
        personalization=check_personalization(
            args.get("personalization"), recipe=recipe, evaluation_clients=eval_clients,
            batch_size=batch_size, engine=engine),
        local_work=local_work, devices=devices,
    )


def _client_optimizer(recipe: ModelRecipe, client_learning_rate: RoundSchedule | None) -> Any:
    """The compiled optimizer's rule; its learning rate replaced by round 0's of
    ``client_learning_rate`` when given (the engines set later rounds' rates)."""
    config = recipe.optimizer_config()
    if client_learning_rate is not None:
        # Replaced before the rule is read: a compiled per-step schedule, which
        # federated clients cannot follow, is then no reason to refuse the model.
        config = {**config, "config": {**config["config"],
                                       "learning_rate": client_learning_rate(0) or 1.0}}
    spec = client_optimizer_from_keras(config, caller=_CALLER)
    if client_learning_rate is not None:
        spec = dataclasses.replace(spec, learning_rate=client_learning_rate(0))
    return spec


def _rates_fingerprint(server_optimizer: Any, server_learning_rate: RoundSchedule,
                       client_learning_rate: RoundSchedule | None) -> dict[str, str]:
    """Fingerprint entries of the learning rates that ``training_fingerprint``
    does not describe: schedules, and a client rate that replaces the compiled one.
    Constant server rates keep their old entry, so older checkpoints resume."""
    entries = {}
    if server_learning_rate.constant is None:
        entries["server_optimizer"] = (
            f"{server_optimizer!r}, learning_rate={server_learning_rate.description}")
    if client_learning_rate is not None:
        entries["client_learning_rate"] = client_learning_rate.description
    return entries


SAMPLINGS = ("uniform", "poisson")


def _check_client_sampling(value: Any) -> str:
    if value not in SAMPLINGS:
        raise FederatedArgumentError(
            f"{_CALLER}: expected `client_sampling` to be one of {list(SAMPLINGS)}. Received: "
            f"client_sampling={value!r}. 'uniform' takes exactly `clients_per_round` "
            f"clients each round; 'poisson' lets each client join with probability "
            f"clients_per_round / number of clients (what DP-FedAvg's analysis assumes)."
        )
    return value


def _check_attack(attack: Any, num_classes: int | None) -> Attack | None:
    if attack is None:
        return None
    if not isinstance(attack, Attack):
        raise FederatedArgumentTypeError(
            f"{_CALLER}: expected `attack` to be None or a kerasfed.Attack, e.g. "
            f"kerasfed.Attack('sign_flip', fraction=0.3, scale=10). Received: {attack!r} "
            f"of type {type(attack).__name__}."
        )
    if attack.kind == "label_flip" and num_classes is None:
        raise FederatedArgumentError(
            f"{_CALLER}: attack kind 'label_flip' needs class labels, which the model's "
            f"loss does not say it has (use a Keras classification loss such as "
            f"sparse_categorical_crossentropy), or choose another kind."
        )
    return attack


def _check_devices(devices: Devices, clients: ClientData, *, cpr: int | None,
                   sampling: str) -> None:
    """Over-selection needs a number of clients to keep; every client needs a
    speed and a bandwidth (a dict or function is asked for each one now)."""
    if devices.over_selection > 0 and (cpr is None or sampling != "uniform"):
        why = ("clients_per_round=None takes every client" if cpr is None
               else "client_sampling='poisson' has no fixed number of clients")
        raise FederatedArgumentError(
            f"{_CALLER}: Devices(over_selection={devices.over_selection}) samples more "
            f"clients than `clients_per_round` and keeps that many, and {why}. Pass "
            f"clients_per_round=<n> with client_sampling='uniform', or drop over_selection.")
    devices.check_clients(clients.client_ids)


def _check_aggregation(chain: Any, *, sampling: str, expected: int) -> None:
    need = chain.combiner.min_clients()
    if sampling == "uniform" and expected < need:
        raise FederatedArgumentError(
            f"{_CALLER}: aggregator {chain.combiner!r} needs at least {need} clients per "
            f"round (Krum: more than 2 x byzantine + 2; Bulyan: at least 4 x byzantine + 3), "
            f"but rounds have {expected}. Raise `clients_per_round` or lower `byzantine`."
        )
    dp = chain.dp
    if dp is not None:
        dp.noise_parameters(expected)
        accounting.check_supported(dp.accountant, sampling=sampling,
                                   noise_multiplier=dp.noise_multiplier)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise FederatedArgumentTypeError(
            f"{_CALLER}: expected `{name}` to be True or False. Received: {name}={value!r} "
            f"of type {type(value).__name__}."
        )
    return bool(value)


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


def _tff_or_native(auto: bool, **training: Any) -> str:
    """``"tff"`` when the TFF engine can run ``training`` (see
    ``engines/tff/capabilities.why_not``), else ``"native"`` for ``engine="auto"``.

    Raises:
      ModelError, AlgorithmError, FederatedArgumentError: ``engine="tff"`` was
        asked for a training it cannot run (the message names engine='native').
    """
    attack = training["attack"]
    # A wrong `attack` type is reported by its own check, on either engine.
    training["attack"] = attack if isinstance(attack, Attack) else None
    problem = tff_capabilities.why_not(**training)
    if problem is None:
        return "tff"
    if not auto or not _native_takes(training["model"]):
        raise problem
    return "native"


def _native_takes(model: keras.Model) -> bool:
    """Whether the native engine trains ``model``: under Keras 2 its stateless form
    needs a Sequential or functional model (several inputs and outputs are fine);
    under Keras 3 any model."""
    try:
        model.input_shape, model.output_shape  # noqa: B018  (raise for subclassed models)
    except (AttributeError, ValueError):  # a subclassed model: no fixed input/output shape
        return KERAS_3
    return True


def _check_native_model(model: keras.Model) -> None:
    if not _native_takes(model):
        raise ModelError(
            f"{_CALLER}: the model {model.name!r} of class {type(model).__name__} has no "
            f"fixed input and output shape (a subclassed model). Under Keras 2 kerasfed "
            f"trains Sequential and functional models only; rebuild it with "
            f"keras.Sequential or keras.Model(inputs, outputs)."
        )


def _canonical_clients(data: ClientData, layout: OutputLayout, what: str) -> ClientData:
    """The clients with labels in the model's output order (a tuple for several outputs)."""
    if data.on_disk or (layout.single and not data.structured):
        return data
    return ClientData({
        cid: (entry[0], layout.canonical_labels(
            entry[1], where=f"`{what}`" if cid == f"`{what}`" else f"`{what}`, client {cid!r}"),
            *entry[2:])
        for cid, entry in data.items()
    })


def _label_rules(recipe: ModelRecipe, layout: OutputLayout,
                 output_shapes: tuple) -> list[tuple[str, int | None, bool | None]]:
    """(output name, number of classes, sparse labels?) for each output, from its loss."""
    from kerasfed.federated.output_parts import _per_output_losses  # noqa: PLC0415

    losses = _per_output_losses(recipe, list(layout.names))
    rules = []
    for name, loss, shape in zip(layout.names, losses, output_shapes):
        rule = (None, None) if loss is None else _label_rule(_FixedLoss(loss), shape)
        rules.append((name, *rule))
    return rules


class _FixedLoss:
    """A stand-in recipe whose ``new_loss`` is one output's loss (for ``_label_rule``)."""

    def __init__(self, loss: Any):
        self._loss = loss

    def new_loss(self) -> Any:
        return self._loss


def _loss_kinds() -> dict[Any, str]:
    losses = keras.losses
    kinds: dict[Any, str] = {}
    for names, kind in (
        (("SparseCategoricalCrossentropy", "sparse_categorical_crossentropy"), "sparse"),
        (("CategoricalCrossentropy", "categorical_crossentropy", "CategoricalFocalCrossentropy",
          "categorical_focal_crossentropy", "CategoricalHinge", "categorical_hinge"), "one_hot"),
        (("BinaryCrossentropy", "binary_crossentropy", "BinaryFocalCrossentropy",
          "binary_focal_crossentropy"), "binary"),
    ):
        for name in names:
            if hasattr(losses, name):
                kinds[getattr(losses, name)] = kind
    return kinds


def _label_rule(recipe: ModelRecipe, output_shape: Any) -> tuple[int | None, bool | None]:
    """(number of classes, sparse labels?) that the loss implies, or (None, None).

    Read from the loss object itself: Keras' own classification losses by class
    (exactly, not subclasses) or function; anything else is not checked.
    """
    loss = recipe.new_loss()
    fn = getattr(loss, "fn", None)  # LossFunctionWrapper around a loss function
    kinds = _loss_kinds()
    kind = kinds.get(type(loss)) or kinds.get(fn) or (kinds.get(loss) if callable(loss) else None)
    units = output_shape[-1] if output_shape else None
    # Outputs with more than one axis per example (a class per time step, per
    # pixel) take labels of many shapes; Keras checks those itself.
    if units is None or kind is None or len(output_shape) > 2:
        return None, None
    if kind == "sparse":
        return units, True
    if kind == "one_hot":
        return units, False
    if units == 1:
        return 2, True
    return None, None


def _label_check(num_classes: int | None, sparse: bool | None, data: ClientData,
                 label_rules: list | None = None) -> dict:
    if label_rules is not None:
        dtypes = [a.dtype for a in tf.nest.flatten(data[data.client_ids[0]][1])]
        return {"label_rules": [
            (name, None, None) if classes == 2 and sparse_ and dtype.kind == "f"
            else (name, classes, sparse_)
            for (name, classes, sparse_), dtype in zip(label_rules, dtypes)]}
    # Soft 0..1 targets are valid for binary cross-entropy: check integer labels only.
    if num_classes == 2 and sparse and data.label_dtype.kind == "f":
        return {}
    return {"num_classes": num_classes, "sparse_labels": sparse}


def _output_shape(model: keras.Model, data: ClientData, layout: OutputLayout) -> tuple:
    """The model's output shape (a tuple of them in ``layout`` order for several
    outputs); a subclassed model's, and several outputs', read off one example."""
    if layout.single and not data.structured and not data.has_strings:
        try:
            return tuple(model.output_shape)
        except (AttributeError, ValueError):
            pass
    x = data[data.client_ids[0]][0]
    # Two copies of one example: Keras 2's one-hot lookup layers squeeze a batch of one.
    one = to_tensors(tf.nest.map_structure(lambda a: np.repeat(a[:1], 2, axis=0), x))
    pred = layout.flatten(model(keras_inputs(one), training=False))
    if layout.single:
        return (None, *tuple(pred.shape[1:]))
    return tuple((None, *tuple(p.shape[1:])) for p in pred)


def _check_features(model: keras.Model, data: ClientData, what: str) -> None:
    if data.structured or data.has_strings:
        _check_structured_features(model, data, what)
        return
    try:
        expected = tuple(model.input_shape[1:])
    except (AttributeError, ValueError):  # a subclassed model: checked when it runs
        return
    if isinstance(model.input_shape, list) or (
            expected and isinstance(expected[0], (tuple, list))):
        _check_structured_features(model, data, what)
        return
    got = tuple(data.feature_shape)
    if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise ClientDataError(
            f"{_CALLER}: the model {model.name!r} takes inputs of per-example shape "
            f"{expected}, but `{what}` has features of shape {got}. Reshape the data "
            f"or change the model's input shape."
        )


def _check_structured_features(model: keras.Model, data: ClientData, what: str) -> None:
    """Several inputs: as many arrays as inputs (by name when a dict)."""
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError, TypeError):
        return
    x = data[data.client_ids[0]][0]
    names = [getattr(t, "name", "").split(":")[0] for t in inputs]
    got = tf.nest.flatten(x)
    if isinstance(x, dict):
        unknown = [k for k in x if k not in names and len(inputs) > 1]
        if unknown or len(got) != len(inputs):
            raise ClientDataError(
                f"{_CALLER}: the model {model.name!r} has inputs {names}, but `{what}` has "
                f"features keyed {sorted(x)}. Key the features by input name, one array each."
            )
    elif len(got) != len(inputs):
        raise ClientDataError(
            f"{_CALLER}: the model {model.name!r} has {len(inputs)} input(s) {names}, but "
            f"`{what}` has {len(got)} feature array(s). Pass one array per input (a list in "
            f"input order, or a dict by input name)."
        )


def _check_same_spec(clients: ClientData, eval_clients: ClientData) -> None:
    if clients.structured or eval_clients.structured or clients.has_sample_weights or (
            eval_clients.has_sample_weights):
        def signature(data):
            return str(tf.nest.map_structure(lambda sp: (tuple(sp.shape[1:]), sp.dtype.name),
                                             data.element_spec[:2]))

        if signature(clients) != signature(eval_clients):
            raise ClientDataError(
                f"{_CALLER}: `evaluation_clients` must have features and labels of the same "
                f"structure, per-example shapes and dtypes as `clients`. `clients`: "
                f"{signature(clients)}; `evaluation_clients`: {signature(eval_clients)}."
            )
        return
    ours = (clients.feature_shape, clients.feature_dtype, clients.label_shape, clients.label_dtype)
    theirs = (
        eval_clients.feature_shape, eval_clients.feature_dtype,
        eval_clients.label_shape, eval_clients.label_dtype,
    )
    if ours != theirs:
        raise ClientDataError(
            f"{_CALLER}: `evaluation_clients` must have features and labels of the same "
            f"per-example shapes and dtypes as `clients` (the model is evaluated with the "
            f"training types). `clients`: x {ours[0]} {ours[1]}, y {ours[2]} {ours[3]}; "
            f"`evaluation_clients`: x {theirs[0]} {theirs[1]}, y {theirs[2]} {theirs[3]}. "
            f"Convert them, e.g. with .astype(...)."
        )


def _check_validation_data(
    validation_data: Any,
    model: keras.Model,
    num_classes: int | None,
    sparse: bool | None,
    *,
    layout: OutputLayout | None = None,
    label_rules: list | None = None,
    engine: str = "native",
) -> tuple | None:
    """``validation_data`` checked like a client; returned as the user gave it
    (``model.evaluate`` takes the labels in the user's structure)."""
    if validation_data is None:
        return None
    if isinstance(validation_data, tf.data.Dataset):
        validation_data = as_client_data({"validation_data": validation_data})["validation_data"]
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise FederatedArgumentTypeError(
            f"{_CALLER}: expected `validation_data` to be a tuple (x_val, y_val) or "
            f"(x_val, y_val, sample_weight) of arrays, or a tf.data.Dataset of such elements. "
            f"Received: {type(validation_data).__name__}"
            + (f" of length {len(validation_data)}" if isinstance(validation_data, (tuple, list)) else "")
            + ". Pass validation_data=(x_val, y_val); for held-out clients use "
            "`evaluation_clients`."
        )
    # Checked as one pseudo-client whose id, in backticks, makes the checks' messages
    # name the argument (clients.validation.client_name).
    data = ClientData({"`validation_data`": tuple(validation_data)})
    if engine == "tff" and tff_capabilities.needs_native(data):
        raise tff_capabilities.refusal(data, "validation_data")
    _check_features(model, data, "validation_data")
    if layout is not None:
        data = _canonical_clients(data, layout, "validation_data")
    data.validate(**_label_check(num_classes, sparse, data, label_rules))
    original = ClientData({"validation_data": tuple(validation_data)})
    return original["validation_data"]


def _warn_ignored_compile_settings(recipe: Any) -> None:
    for key in ("loss_weights", "weighted_metrics"):
        if recipe.compile_config.get(key):
            warnings.warn(
                f"{_CALLER}: the model is compiled with {key}=..., which federated "
                f"training ignores (as TFF's Keras wrapper does).",
                UserWarning,
                stacklevel=user_stacklevel(),
            )


def _warn_settings_without_effect(
    algorithm: Any, local_epochs: int, evaluate_every: int, *, has_evaluation: bool,
    client_learning_rate: RoundSchedule | None = None,
) -> None:
    if client_learning_rate is not None and not algorithm.uses_client_optimizer:
        warnings.warn(
            f"{_CALLER}: client_learning_rate has no effect with algorithm="
            f"{algorithm.name!r}: its clients compute one gradient and do not train (the "
            f"server applies it with `server_optimizer` at `server_learning_rate`).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    if evaluate_every != 1 and not has_evaluation:
        warnings.warn(
            f"{_CALLER}: evaluate_every={evaluate_every} has no effect without "
            f"`validation_data` or `evaluation_clients`.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    if local_epochs != 1 and not algorithm.uses_client_optimizer:
        warnings.warn(
            f"{_CALLER}: local_epochs={local_epochs} has no effect with "
            f"algorithm={algorithm.name!r}: its clients compute one gradient of their "
            f"mean loss (repeating the data leaves it unchanged) and do not train.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


