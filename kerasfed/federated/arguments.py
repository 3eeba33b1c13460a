"""``fit_federated``'s arguments: every check, once, before any engine starts.

``check_arguments`` turns the call's arguments into a ``Plan``: the resolved
model, engine, algorithm and optimizer settings, the clients as a ``ClientData``,
the checkpoint to resume, the seed. Every bad value raises here, with what was
expected, what was received and how to fix it.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
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
from kerasfed.federated.algorithms import FedSGD, get_algorithm
from kerasfed.federated.attack import Attack
from kerasfed.federated.client_optimizers import client_optimizer_from_keras
from kerasfed.federated.engines.native.forward import keras_inputs
from kerasfed.federated.clients import ClientData, ClientDataError, as_client_data
from kerasfed.federated.clients.structure import to_tensors
from kerasfed.federated.compiled_parts import CompiledParts
from kerasfed.federated.engines import resolve_engine
from kerasfed.federated.model_outputs import OutputLayout
from kerasfed.federated.progress import resolve_verbose
from kerasfed.federated.server_optimizers import (
    check_server_learning_rate,
    resolve_server_optimizer,
)
from kerasfed.federated.strategy_argument import (
    agree_between_workers,
    engine_for_strategy,
    resolve_replicas,
)

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



@dataclasses.dataclass
class Plan:
    """Checked arguments and everything derived from them."""

    engine: str
    model: keras.Model
    recipe: ModelRecipe
    parts: CompiledParts
    clients: ClientData
    eval_clients: ClientData | None
    eval_clients_per_round: int | None
    validation: tuple[np.ndarray, np.ndarray] | None
    rounds: int
    clients_per_round: int | None
    local_epochs: int
    batch_size: int
    validation_batch_size: int
    shuffle: bool
    evaluate_every: int
    algorithm: Any
    server_optimizer: Any
    server_learning_rate: float
    client_optimizer: Any
    max_parallel_clients: int | None
    aggregator: agg.Chain
    client_sampling: str
    expected_clients: int
    attack: Attack | None
    attackers: frozenset
    label_rule: tuple[int | None, bool | None]
    callbacks: list
    checkpoint_dir: str | None
    checkpoint: ckpt.Checkpoint | None
    fingerprint: dict[str, str]
    seed: int
    verbose: int
    replicas: Any = None
    layout: OutputLayout | None = None

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
    local_epochs = _check_int("local_epochs", args["local_epochs"], 1)
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
    # The TFF engine rebuilds the model from its config inside TFF's graphs; the
    # native engine trains the model itself, so subclassed models need no config.
    requested = args["engine"]
    auto = isinstance(requested, str) and requested.lower() == "auto" and args["strategy"] is None
    if engine == "tff" and auto and _has_several_inputs_or_outputs(model):
        engine = "native"  # TFF's Keras wrapper takes one input and one output
    recipe = ModelRecipe.from_model(model, caller=_CALLER, rebuild=engine == "tff")
    _check_single_input_output(model, engine)
    layout = OutputLayout.of(model)
    algorithm = get_algorithm(args["algorithm"])
    server_optimizer = resolve_server_optimizer(args["server_optimizer"])
    server_learning_rate = check_server_learning_rate(args["server_learning_rate"])
    client_opt = (
        client_optimizer_from_keras(recipe.optimizer_config(), caller=_CALLER)
        if algorithm.uses_client_optimizer
        else None
    )

    client_data = as_client_data(clients, what="clients")
    if engine == "tff" and _needs_native(client_data):
        if auto:
            engine = "native"
        else:
            _refuse_on_tff(client_data, "clients")
    eval_data = (None if args["evaluation_clients"] is None else
                 as_client_data(args["evaluation_clients"], what="evaluation_clients"))
    if engine == "tff" and auto and (
            (eval_data is not None and _needs_native(eval_data))
            or _validation_needs_native(args["validation_data"])):
        engine = "native"
    client_data = _canonical_clients(client_data, layout, "clients")
    output_shape = _output_shape(model, client_data, layout)
    num_classes, sparse = _label_rule(recipe, output_shape) if layout.single else (None, None)
    label_rules = None if layout.single else _label_rules(recipe, layout, output_shape)
    cpr = args["clients_per_round"]
    if cpr is not None:
        cpr = _check_int("clients_per_round", cpr, 1, len(client_data))
    _check_features(model, client_data, "clients")
    chain = agg.resolve_chain(args["aggregator"])
    sampling = _check_client_sampling(args["client_sampling"])
    expected = cpr if cpr is not None else len(client_data)
    attack = _check_attack(args["attack"], num_classes)
    if attack is not None and attack.kind == "label_flip" and not layout.single:
        raise FederatedArgumentError(
            f"{_CALLER}: Attack('label_flip') flips one array of class labels; this model has "
            f"{len(layout.names)} outputs {list(layout.names)}. Use an update attack "
            f"('sign_flip', 'scale', ...) with several outputs.")
    _check_aggregation(chain, engine=engine, algorithm=algorithm, sampling=sampling,
                       expected=expected, attack=attack)
    parts = CompiledParts.of(recipe, client_data.element_spec[1], output_shape,
                             layout=layout, structured=engine == "native")
    if engine == "tff":
        _check_weight_layout(model)
    rules = _label_check(num_classes, sparse, client_data, label_rules)
    client_data.validate(**rules)

    eval_clients = None
    if eval_data is not None:
        eval_clients = eval_data
        if engine == "tff" and _needs_native(eval_clients):
            _refuse_on_tff(eval_clients, "evaluation_clients")
        eval_clients = _canonical_clients(eval_clients, layout, "evaluation_clients")
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
        algorithm, local_epochs, evaluate_every,
        has_evaluation=validation is not None or eval_clients is not None,
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
        server_learning_rate=server_learning_rate, clients=client_data,
        clients_per_round=cpr, local_epochs=local_epochs, batch_size=batch_size,
        shuffle=shuffle, aggregator=chain, client_sampling=sampling, attack=attack,
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
    seed = agree_between_workers(
        replicas, seed=seed, rounds_completed=checkpoint.rounds_completed if checkpoint else 0,
        checkpoint_dir=checkpoint_dir)

    return Plan(
        engine=engine, model=model, recipe=recipe, parts=parts, clients=client_data,
        eval_clients=eval_clients, eval_clients_per_round=eval_per_round,
        validation=validation, rounds=rounds,
        clients_per_round=cpr, local_epochs=local_epochs, batch_size=batch_size,
        validation_batch_size=validation_batch_size or batch_size,
        shuffle=shuffle, evaluate_every=evaluate_every, algorithm=algorithm,
        server_optimizer=server_optimizer, server_learning_rate=server_learning_rate,
        client_optimizer=client_opt, max_parallel_clients=max_parallel, aggregator=chain,
        client_sampling=sampling, expected_clients=expected, attack=attack,
        attackers=attack.attackers(client_data.client_ids, seed) if attack else frozenset(),
        label_rule=(num_classes, sparse), callbacks=callbacks,
        checkpoint_dir=checkpoint_dir, checkpoint=checkpoint, fingerprint=fingerprint,
        seed=seed, verbose=verbose, replicas=replicas, layout=layout,
    )


SAMPLINGS = ("uniform", "poisson")
# What the TFF engine can translate into tff.aggregators (engines/tff/aggregators.py).
# TFF's SecureSumFactory builds, but its worker cannot run the secure-sum
# intrinsics ("Cannot embed a federated value"), so SecureSum is native only.
TFF_AGGREGATORS = (agg.Mean, agg.ClipNorm, agg.Zeroing, agg.Quantize, agg.DPMean)


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


def _check_aggregation(chain: Any, *, engine: str, algorithm: Any, sampling: str,
                       expected: int, attack: Attack | None) -> None:
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
    if engine != "tff":
        return
    native_only = [s for s in chain.steps if not isinstance(s, TFF_AGGREGATORS)
                   or (isinstance(s, agg.Quantize) and (s.rotation or s.clip_range))]
    if native_only:
        raise FederatedArgumentError(
            f"{_CALLER}: the TFF engine has no {', '.join(repr(s) for s in native_only)} "
            f"(TFF 0.87's aggregators cannot see every client's update at once, keep "
            f"client memories, or rotate, and its worker cannot run secure sums). Use "
            f"engine='native'."
        )
    if dp is not None and isinstance(algorithm, FedSGD):
        raise FederatedArgumentError(
            f"{_CALLER}: TFF's FedSGD takes only example-weighted aggregators, and "
            f"{chain.combiner.name} counts every client once. Use engine='native'."
        )
    if attack is not None and attack.on_updates:
        raise FederatedArgumentError(
            f"{_CALLER}: the TFF engine cannot alter clients' updates, so "
            f"Attack({attack.kind!r}) runs on engine='native' only (label_flip runs on both)."
        )


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise FederatedArgumentTypeError(
            f"{_CALLER}: expected `{name}` to be True or False. Received: {name}={value!r} "
            f"of type {type(value).__name__}."
        )
    return bool(value)


def _check_weight_layout(model: keras.Model) -> None:
    position = {id(v): i for i, v in enumerate(model.weights)}
    listed = [id(v) for v in [*model.trainable_weights, *model.non_trainable_weights]]
    if sorted(position.get(i, -1) for i in listed) != list(range(len(position))):
        raise ModelError(
            f"{_CALLER}: the model {model.name!r} lists some weights twice or outside its "
            f"trainable/non-trainable weights; TFF cannot map them. Use engine='native'."
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


def _check_single_input_output(model: keras.Model, engine: str) -> None:
    try:
        shapes = (("input", model.input_shape), ("output", model.output_shape))
    except (AttributeError, ValueError):  # a subclassed model: no fixed input/output shape
        if engine == "native" and KERAS_3:
            return  # trained as it is; its data's shapes are checked when it first runs
        raise ModelError(
            f"{_CALLER}: the model {model.name!r} of class {type(model).__name__} has no "
            f"fixed input and output shape (a subclassed model). "
            + ("The TFF engine trains Sequential and functional models only"
               if engine == "tff" else "Under Keras 2 kerasfed trains Sequential and "
               "functional models only")
            + "; rebuild it with keras.Sequential or keras.Model(inputs, outputs)"
            + (", or use engine='native' under Keras 3." if engine == "tff" else ".")
        ) from None
    if engine == "native":
        return  # several inputs and outputs: lists or dicts, as Keras takes them
    for what, shape in shapes:
        if not isinstance(shape, tuple) or (shape and isinstance(shape[0], (tuple, list))):
            raise ModelError(
                f"{_CALLER}: the model {model.name!r} has several {what}s ({shape}). "
                f"The TFF engine trains models with one input and one output; use "
                f"engine='native', which takes several inputs and outputs."
            )


def _has_several_inputs_or_outputs(model: keras.Model) -> bool:
    try:
        return len(model.inputs) > 1 or len(model.outputs) > 1 or isinstance(
            model.output, dict) or isinstance(model.input, dict)
    except (AttributeError, ValueError, TypeError):  # subclassed: no fixed inputs
        return False


def _needs_native(data: ClientData) -> bool:
    return data.structured or data.has_sample_weights or data.has_strings


def _validation_needs_native(value: Any) -> bool:
    """Whether ``validation_data`` holds what only the native engine takes (for
    ``engine="auto"``); data that does not convert is left to its full check."""
    if value is None or isinstance(value, tf.data.Dataset):  # a dataset: checked later
        return False
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        return False
    try:
        return _needs_native(ClientData({"validation_data": tuple(value)}))
    except (ValueError, TypeError):  # the family's classes derive from these
        return False


def _refuse_on_tff(data: ClientData, what: str) -> None:
    found = ("sample weights" if data.has_sample_weights else
             "string features or labels" if data.has_strings else
             "several arrays of features or labels (dicts, lists or tuples)")
    raise FederatedArgumentError(
        f"{_CALLER}: `{what}` have {found}, which the TFF engine cannot train on (TFF's "
        f"Keras wrapper takes one numeric input and one label array, unweighted). Use "
        f"engine='native'."
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
    if engine == "tff" and _needs_native(data):
        _refuse_on_tff(data, "validation_data")
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
    algorithm: Any, local_epochs: int, evaluate_every: int, *, has_evaluation: bool
) -> None:
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


