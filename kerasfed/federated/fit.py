"""``fit_federated``: train a compiled Keras model by federated learning.

The call checks every argument (``arguments.py``), then runs the rounds: the
clients are sampled and their batches ordered here, from one seed, and handed to
an engine (``engines/``: TFF or native) that trains them and returns the new
server state. Rounds are Keras epochs for callbacks and ``History``; checkpoints
hold the engine-neutral state, so a run may resume on the other engine.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasfed._arguments import checked_call, user_stacklevel
from kerasfed._compat import keras
from kerasfed.distributed.paths import WorkerPaths
from kerasfed.federated import checkpoint as ckpt
from kerasfed.federated.arguments import (  # noqa: F401  (re-exported names)
    BATCHNORM_WARNING,
    FederatedArgumentError,
    FederatedArgumentTypeError,
    Plan,
    check_arguments,
)
from kerasfed.federated.aggregators import accounting
from kerasfed.federated import personalization
from kerasfed.federated.attack import flip_labels
from kerasfed.federated.client_metrics import spread
from kerasfed.federated.asynchronous import AsyncState, BufferedRounds
from kerasfed.federated.client_state import ClientStateStore
from kerasfed.federated.devices import device_logs, schedule_round
from kerasfed.federated.clients import ClientData, client_shuffle_seed, epoch_orders, sample_clients
from kerasfed.federated.clients.structure import has_strings, num_rows, to_tensors
from kerasfed.federated.engines import ClientRound, make_engine
from kerasfed.federated.progress import RoundProgress, quiet_tensorflow
from kerasfed.federated.strategy_argument import agree_between_workers
from kerasfed.federated.signature_hints import SIGNATURE_HINTS, too_many_positionals

_CALLER = "fit_federated"
LOG = logging.getLogger("kerasfed")


@checked_call(keyword_hints=SIGNATURE_HINTS, positional_hint=too_many_positionals)
def fit_federated(
    model: Any,
    clients: Any,
    *,
    rounds: int,
    clients_per_round: int | None = None,
    local_epochs: Any = 1,
    local_steps: int | None = None,
    batch_size: int = 32,
    shuffle: bool = True,
    algorithm: Any = "fedavg",
    server_optimizer: Any = "sgd",
    server_learning_rate: Any = 1.0,
    client_learning_rate: Any = None,
    validation_data: tuple[Any, Any] | None = None,
    validation_batch_size: int | None = None,
    evaluate_every: int = 1,
    evaluation_clients: Any = None,
    evaluation_clients_per_round: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    engine: str = "auto",
    max_parallel_clients: int | None = None,
    aggregator: Any = "mean",
    client_sampling: str = "uniform",
    devices: Any = None,
    attack: Any = None,
    strategy: Any = None,
    personalization: Any = None,
    personal_layers: Any = None,
    verbose: int | str = "auto",
) -> keras.callbacks.History:
    """Trains a compiled Keras model by federated learning, simulated in one process.

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
    epochs); ``round_seconds`` (sampling, data and the engine's round);
    ``bytes_to_clients`` / ``bytes_from_clients`` (dense, uncompressed sizes of
    the values a round broadcasts to / aggregates from each client, times the
    clients in the round). On
    evaluated rounds (see ``evaluate_every``) also ``val_<metric>`` (Keras
    ``evaluate`` of ``validation_data``) and ``fed_eval_<metric>`` (federated
    evaluation over ``evaluation_clients``, averaged over all their examples) with,
    for each such metric, its spread over the evaluated clients:
    ``fed_eval_<metric>_min``, ``_p10``, ``_p50``, ``_p90``, ``_max`` (each client
    counts once, whatever its size; ``numpy.percentile``'s default interpolation).
    With an ``aggregator`` that reports them: ``clip_norm`` (the norm this round
    clipped to), ``clipped_fraction``, ``zeroed_fraction``, ``noise_std`` (of the
    aggregate); with ``DPMean``: ``epsilon`` (after this round, from
    dp-accounting) and ``dp_delta``; with ``attack``: ``attackers`` (malicious
    clients in the round); with Poisson sampling: ``clients`` (in the round);
    with ``devices``: ``dropped`` (sampled clients that dropped out),
    ``stragglers`` (clients whose update came after the deadline, or after
    ``clients_per_round`` others with over-selection), with
    ``stragglers="partial"`` ``partial_clients`` (clients that sent the steps they
    finished), and with a ``speed``: ``simulated_seconds`` (the round's time on
    the simulated clock) and ``simulated_seconds_total`` (since round 1).
    As with Keras' ``validation_freq``, rounds without evaluation have no
    ``val_``/``fed_eval_`` entries, so those lists are shorter than ``loss``.

    ``History.participants`` lists, per round, the ids of the clients whose
    updates were aggregated (clients whose update had NaN or infinite values are
    left out; on the TFF engine, which cannot tell which ones, a round with such
    clients lists all of its clients, and a round where every update was left
    out lists none). It is saved with checkpoints: a resumed run lists every round.

    ``History.client_metrics`` has, per round (index = round from 0), each
    evaluation client's values, ``{client_id: {metric: value}}`` with the
    ``fed_eval_`` metrics' names (``loss`` first): what Keras ``evaluate`` gives
    on that client's examples alone with the round's global weights (batches of
    ``batch_size``), or ``{}`` on rounds without federated evaluation (only the
    clients evaluated that round appear, see ``evaluation_clients_per_round``).
    ``History.client_train_metrics`` has, per round, each aggregated client's own
    training loss and metrics during its local training, the same way (``{}`` on
    the TFF engine, which cannot tell its clients apart). Both are saved with
    checkpoints like ``participants`` (a round saved by an older kerasfed: None).

    Args:
      model: A compiled, built Keras model (Sequential or functional; on the
        native engine under Keras 3 also subclassed), or a zero-argument
        function returning one. On the native engine it may have several
        inputs and outputs (lists or dicts), per-output losses, metrics and
        ``loss_weights``, ``weighted_metrics``, and layers that take strings
        or integer ids (``TextVectorization``, ``StringLookup``, ``Embedding``);
        the TFF engine takes one input and one output (see docs/models.md).
      clients: Training clients: ``{client_id: (x, y)}`` or ``{client_id: (x, y,
        sample_weight)}`` (``x``/``y`` arrays, or dicts/lists of arrays as the
        model's inputs/outputs take them; numpy string arrays allowed),
        ``{client_id: tf.data.Dataset}`` with such elements, a
        ``kerasfed.ClientData`` or a TFF ``ClientData``.
      rounds: Number of rounds, >= 1 (the total, counting resumed rounds).
      clients_per_round: Clients sampled per round, in [1, number of clients];
        None (default) takes all clients every round.
      local_epochs: Passes of each client over its data per round (default 1),
        or a function of the client id returning its own number (unequal work).
      local_steps: The most local steps (batches) a client takes per round
        (default None: all of its ``local_epochs``' batches).
      batch_size: Client batch size (default 32); also ``validation_data``'s unless
        ``validation_batch_size`` is given.
      shuffle: Reshuffle each client's examples every local epoch, from
        ``(seed, round, client)`` (default True); False keeps each client's order,
        as Keras ``fit(shuffle=False)`` does.
      algorithm: ``"fedavg"`` (default), ``"fedavg_unweighted"``, ``"fedsgd"``,
        ``"fedprox"``, ``"mime"``, ``"scaffold"``, ``"ditto"``, ``"fednova"``, or an
        instance such as ``FedProx(mu=0.1)``; ``FedBuff(buffer_size, concurrency)``
        trains asynchronously (each round is one server update, see
        docs/devices.md).
      server_optimizer: ``"sgd"`` (default), ``"adam"``, ``"yogi"``, ``"adagrad"``,
        or an instance such as ``ServerSGD(momentum=0.9)``.
      server_learning_rate: The server optimizer's learning rate (default 1.0:
        FedAvg's plain averaging with server SGD): a positive float, a function
        of the round index (from 0) returning the round's rate, or a
        ``keras.optimizers.schedules.LearningRateSchedule`` evaluated at the round.
      client_learning_rate: The clients' learning rate, the same kinds of value
        (default None: the compiled optimizer's). It replaces the compiled
        optimizer's learning rate only; its other settings (momentum, betas...)
        stay. A client keeps one rate for all its local steps of a round.
      validation_data: ``(x_val, y_val)`` or ``(x_val, y_val, sample_weight)``
        (structures as for ``clients``) evaluated centrally with the global
        weights on evaluated rounds (default None).
      validation_batch_size: Batch size for ``validation_data`` (default None:
        ``batch_size``, as in ``Model.fit``). Evaluation does not train, so a
        larger batch only makes it faster (a small client batch makes the
        per-round evaluation of a large test set take longer than the round).
      evaluate_every: Evaluate every this many rounds, and always on the last
        round (default 1).
      evaluation_clients: Held-out clients (same types as ``clients``) evaluated
        with TFF's federated evaluation on evaluated rounds (default None).
      evaluation_clients_per_round: Evaluate only this many of the
        ``evaluation_clients``, sampled anew on each evaluated round from
        ``(seed, round)`` (default None: all of them).
      callbacks: Keras callbacks; each round is an epoch (``History``,
        ``CSVLogger``, ``EarlyStopping``, ``ModelCheckpoint``, ``TensorBoard`` work
        unchanged; ``model.stop_training = True`` stops after the round).
      checkpoint_dir: If set (default None), the server state is saved there after
        every round, and a later call with the same arguments resumes after the
        last saved round (its ``History`` lists every round). A checkpoint of a
        different configuration raises ``CheckpointMismatchError``.
      seed: Seed of client sampling and client data shuffling (default None:
        drawn at random, and kept in the checkpoint). Client training is otherwise
        deterministic unless the model draws random numbers (Dropout). The same
        seed gives the same clients and batches on either engine.
      engine: ``"auto"`` (default: ``"tff"`` where TensorFlow Federated is
        installed, otherwise ``"native"``), ``"tff"`` (TFF 0.87 computations in a
        TFF worker process; TF 2.14 only) or ``"native"`` (pure TensorFlow in this
        process, a round's clients trained in lockstep; any TensorFlow).
      max_parallel_clients: Most clients trained at once (default None: the
        native engine picks what fits in a quarter of the free memory; TFF runs
        all). Never changes the result.
      aggregator: How the round's updates are combined (default ``"mean"``: the
        algorithm's mean): a name (``"median"``, ``"trimmed_mean"``, ``"krum"``,
        ...), an aggregator (``kerasfed.Median()``, ``kerasfed.DPMean(...)``, ...),
        or a chain, client-side transforms first (``[kerasfed.ClipNorm(1.0),
        kerasfed.Quantize(bits=8), "mean"]``). The TFF engine runs the mean,
        ``ClipNorm``, ``Zeroing``, ``Quantize`` (no rotation) and ``DPMean``.
      client_sampling: ``"uniform"`` (default: exactly ``clients_per_round``
        clients, without replacement) or ``"poisson"`` (each client joins with
        probability ``clients_per_round / number of clients``).
      devices: None (default) or a ``kerasfed.Devices(dropout=..., speed=...,
        bandwidth=..., deadline=..., stragglers=..., over_selection=...)``:
        sampled clients that drop out, a simulated clock, a deadline and
        over-selection (see docs/devices.md). Both engines.
      attack: None (default) or a ``kerasfed.Attack``: a seeded fraction of the
        clients is malicious for the whole run (update attacks: native engine).
      personalization: None (default) or ``kerasfed.FineTune(...)``: on evaluated
        rounds each evaluation client fine-tunes a copy of the global model on
        part of its examples and tests it on the rest, adding
        ``fed_eval_personalized_<metric>`` and ``fed_eval_baseline_<metric>``
        (unweighted means over the clients, with the same quantile keys) to
        ``History``; needs ``evaluation_clients``; native engine only (see
        docs/personalization.md).
      personal_layers: None (default), a layer name, a list of names, a function
        of a layer returning True for personal ones, or ``"batch_norm"`` (every
        BatchNormalization layer: FedBN). Every weight of those layers (moving
        statistics included) is kept by each client, trained locally and never
        sent or averaged: their global values stay the initial ones, a client
        starts from those the first time it takes part, and the bytes counted
        leave them out. FedPer is the model's head made personal. Native engine
        only; one process (see docs/personalization.md).
      verbose: 0 (silent), 1 (progress bar), 2 (one line per round) or ``"auto"``
        (default: 1 in a terminal or notebook, else 2).

    Returns:
      A ``keras.callbacks.History``: ``.history`` as above, ``.model`` is ``model``
      (holding the final global weights), ``.params`` has ``rounds`` and ``seed``,
      ``.participants`` the client ids aggregated in each round,
      ``.client_metrics`` and ``.client_train_metrics`` each client's metrics
      per round (see above).

    Raises:
      FederatedUnavailableError: ``engine="tff"`` where TFF is not installed.
      EngineError, EngineTypeError: An unknown ``engine``.
      FederatedArgumentError, FederatedArgumentTypeError: A bad argument.
      VerboseError, CallbacksTypeError: A bad ``verbose`` or ``callbacks``.
      ModelError, ModelTypeError: An unusable model (whichever check fails).
      ClientDataError, ClientDataTypeError: Unusable client data (names the client).
      AlgorithmError, ServerOptimizerError, ClientOptimizerError: Unknown names or
        settings kerasfed cannot reproduce (and their ``...TypeError``s).
      CheckpointMismatchError: ``checkpoint_dir`` holds a different training.

    Example:
      >>> clients = kerasfed.partition(x, y, num_clients=30, scheme="dirichlet")  # doctest: +SKIP
      >>> history = kerasfed.fit_federated(model, clients, rounds=30,
      ...                                  clients_per_round=10)  # doctest: +SKIP
    """
    plan = check_arguments(
        model, clients, rounds=rounds, clients_per_round=clients_per_round,
        local_epochs=local_epochs, local_steps=local_steps, batch_size=batch_size,
        shuffle=shuffle, algorithm=algorithm, server_optimizer=server_optimizer,
        server_learning_rate=server_learning_rate,
        client_learning_rate=client_learning_rate, validation_data=validation_data,
        validation_batch_size=validation_batch_size, evaluate_every=evaluate_every, evaluation_clients=evaluation_clients,
        evaluation_clients_per_round=evaluation_clients_per_round, callbacks=callbacks, checkpoint_dir=checkpoint_dir, seed=seed, engine=engine,
        max_parallel_clients=max_parallel_clients, aggregator=aggregator,
        client_sampling=client_sampling, devices=devices, attack=attack, strategy=strategy,
        verbose=verbose,
        personalization=personalization, personal_layers=personal_layers,
    )
    plan = _resume_point(plan)
    # Only the chief writes: other workers' file-writing callbacks write to a temp
    # dir that is removed at the end (as fit_distributed's), and they save no checkpoint.
    with WorkerPaths(is_chief=plan.chief,
                     rank=0 if plan.replicas is None else plan.replicas.rank) as paths:
        paths.redirect(plan.callbacks)
        return _train(plan)


# -- Training ------------------------------------------------------------------------------


def _resume_point(plan: Plan) -> Plan:
    """``plan`` with where training starts: the checkpoint to resume (checked
    against this training), the seed (the checkpoint's, the given one, or drawn),
    agreed between the workers of a multi-worker strategy, and the attackers it draws.

    Raises:
      CheckpointError, CheckpointMismatchError: An unreadable checkpoint, or one of
        a different training.
    """
    checkpoint, seed = None, plan.seed
    if plan.checkpoint_dir is not None:
        checkpoint = ckpt.load_checkpoint(plan.checkpoint_dir)
        if checkpoint is not None:
            ckpt.check_resumable(checkpoint, directory=plan.checkpoint_dir,
                                 fingerprint=plan.fingerprint, seed=seed, rounds=plan.rounds)
            seed = checkpoint.seed
    if seed is None:
        seed = secrets.randbelow(2**31)  # recorded in History.params and checkpoints
    seed = agree_between_workers(
        plan.replicas, seed=seed,
        rounds_completed=checkpoint.rounds_completed if checkpoint else 0,
        checkpoint_dir=plan.checkpoint_dir)
    attackers = (plan.attack.attackers(plan.clients.client_ids, seed)
                 if plan.attack else frozenset())
    return dataclasses.replace(plan, checkpoint=checkpoint, setup=dataclasses.replace(
        plan.setup, seed=seed, attackers=attackers))


def _train(plan: Plan) -> keras.callbacks.History:
    model = plan.model
    saved = plan.checkpoint
    start = saved.rounds_completed if saved else 0
    round_logs: list[dict] = list(saved.round_logs) if saved else []
    if saved:
        model.set_weights(saved.state.weights)

    history = keras.callbacks.History()
    progress = RoundProgress(plan.verbose, plan.rounds, initial_round=start)
    callbacks = keras.callbacks.CallbackList(
        [history, *plan.callbacks, progress], model=model,
        verbose=plan.verbose, epochs=plan.rounds, steps=None,
    )
    history.params = dict(history.params or {}, rounds=plan.rounds, seed=plan.seed,
                          engine=plan.engine, aggregator=plan.aggregator.describe(),
                          evaluate_every=plan.evaluate_every)  # which rounds val_/fed_eval_ are
    if plan.replicas is not None:
        history.params["replicas"] = plan.replicas.num_replicas
        history.params["workers"] = plan.replicas.workers
    if plan.devices is not None:
        history.params["devices"] = plan.devices.describe()
    if plan.aggregator.dp is not None:
        history.params["dp_delta"] = plan.aggregator.dp.default_delta(len(plan.clients))
    model.stop_training = False
    engine = None
    client_states = ClientStateStore()  # per-client state, shared by the engine and aggregators
    try:
        state = None
        if start < plan.rounds:
            with quiet_tensorflow():
                engine, state = _start_engine(plan, client_states)
            history.params["engine_form"] = engine.describe()
            LOG.info("fit_federated: %s", engine.describe())
            progress.note(f"fit_federated: {engine.describe()}")
        callbacks.on_train_begin()
        _restore_history(history, round_logs)
        logs: dict = _numbers(round_logs[-1]) if round_logs else {}
        clock = float(logs.get("simulated_seconds_total", 0.0))
        buffered = None
        if engine is not None and getattr(plan.algorithm, "asynchronous", False):
            buffered = BufferedRounds(
                plan, engine, functools.partial(client_round, plan),
                AsyncState.from_saved(*saved.pending) if saved and saved.pending else None)
        for round_num in range(start, plan.rounds):
            callbacks.on_epoch_begin(round_num)
            with quiet_tensorflow():  # callbacks run outside: their logs stay visible
                if buffered is not None:
                    state, logs, per_client = _run_buffered_round(plan, engine, buffered,
                                                                  state, round_num)
                else:
                    state, logs, per_client = _run_round(plan, engine, state, round_num, clock)
            clock = float(logs.get("simulated_seconds_total", clock))
            for key, attribute in _PER_CLIENT.items():
                getattr(history, attribute).append(per_client[key])
            # Saved with the round's logs, so a resumed run lists every round's.
            round_logs.append(dict(logs, **per_client))
            if plan.checkpoint_dir is not None and plan.chief:
                ckpt.save_checkpoint(plan.checkpoint_dir, ckpt.Checkpoint(
                    rounds_completed=round_num + 1, seed=plan.seed,
                    fingerprint=plan.fingerprint, round_logs=round_logs,
                    state=engine.to_neutral(state),
                    pending=buffered.state.to_saved() if buffered is not None else None,
                ), client_states=client_states)
            callbacks.on_epoch_end(round_num, logs)
            if model.stop_training:
                break
        callbacks.on_train_end(dict(logs))
    finally:
        progress.close()
        client_states.close()
        if engine is not None:
            engine.close()
    model.history = history
    return history


def _start_engine(plan: Plan, client_states: ClientStateStore) -> tuple[Any, Any]:
    # The run's per-client store is the one thing the setup gets here.
    setup = dataclasses.replace(plan.setup, client_states=client_states)
    engine = make_engine(plan.engine, setup)
    try:
        if plan.checkpoint is None:
            return engine, engine.initial_state(plan.model.get_weights())
        ckpt.restore_client_states(plan.checkpoint_dir, plan.checkpoint, client_states)
        try:
            return engine, engine.from_neutral(plan.checkpoint.state)
        except ValueError as e:
            raise ckpt.CheckpointMismatchError(
                f"checkpoint_dir={plan.checkpoint_dir!r} holds a server state that does not "
                f"fit this training ({e}). It was written by another kerasfed version or "
                f"configuration; pass a new `checkpoint_dir` to start over."
            ) from e
    except BaseException:
        engine.close()
        raise


def round_clients(plan: Plan, round_num: int) -> list[ClientRound]:
    """The clients of round ``round_num`` with their examples' order in each local epoch.

    Depends only on ``(seed, round_num)`` and the client ids, so both engines, and a
    resumed run, see the same clients and batches.
    """
    cids = sample_clients(plan.clients.client_ids, plan.sampled_per_round, round_num, plan.seed,
                          poisson=plan.client_sampling == "poisson")
    return [client_round(plan, cid, round_num) for cid in cids]


def client_round(plan: Plan, cid: str, round_num: int) -> ClientRound:
    """Client ``cid``'s work in round ``round_num``: its examples (labels flipped
    for a label-flipping attacker), their order in each local epoch, its step cap."""
    x, y, *w = plan.clients[cid]
    if plan.attack is not None and plan.attack.kind == "label_flip" and cid in plan.attackers:
        num_classes, sparse = plan.label_rule
        y = flip_labels(y, num_classes=num_classes, sparse=sparse)
    work = plan.local_work
    order = epoch_orders(
        num_rows(x), epochs=work.epochs_of(cid) if work else plan.local_epochs,
        shuffle=plan.shuffle,
        seed=client_shuffle_seed(plan.seed, round_num, cid) if plan.shuffle else None,
    )
    return ClientRound(cid=cid, x=x, y=y, order=order, w=w[0] if w else None,
                       max_steps=work.steps if work else None)


def _whole_clients(data: ClientData) -> list[ClientRound]:
    return [
        ClientRound(cid=cid, x=x, y=y, order=np.arange(num_rows(x))[None],
                    w=w[0] if w else None)
        for cid, (x, y, *w) in data.items()
    ]


def _run_round(plan: Plan, engine: Any, state: Any, round_num: int,
               clock: float = 0.0) -> tuple[Any, dict, dict]:
    """Trains (and on evaluated rounds evaluates) round ``round_num``; ``clock``
    is the simulated time before it (with ``devices``).

    Returns:
      The new state, the round's ``History`` logs, and what it records per client
      (``_PER_CLIENT``'s keys: participants, training and evaluation metrics).
    """
    started = time.perf_counter()
    sampled = clients = round_clients(plan, round_num)
    devices = None
    if plan.devices is not None:  # who reports, and when (before anything trains)
        devices = schedule_round(
            plan.devices, sampled, round_num=round_num, seed=plan.seed,
            batch_size=plan.batch_size,
            target=plan.clients_per_round if plan.devices.over_selection else None,
            bytes_to=engine.bytes_to_client, bytes_from=engine.bytes_from_client)
        clients = devices.reporting
    state, result = engine.train_round(state, clients, round_num,
                                       dropped=devices.dropped if devices else ())
    seconds = time.perf_counter() - started
    expected = sum(sum(c.step_sizes(plan.batch_size)) for c in clients)
    if result.skipped and sampled and not clients:
        result = dataclasses.replace(result, skipped=(
            f"none of the {len(sampled)} sampled clients reported (dropped out or too late)"))
    if result.skipped:
        warnings.warn(f"{_CALLER}: round {round_num + 1}: {result.skipped}; the global "
                      f"weights were kept.", RuntimeWarning, stacklevel=user_stacklevel())
    elif clients:
        _warn_non_finite(round_num, result, expected)
    plan.model.set_weights(engine.get_weights(state))
    # TFF reports 0.0 when no client's metrics were kept; there is no value then.
    logs = dict(result.metrics) if result.num_examples else {k: float("nan") for k in result.metrics}
    logs.update(
        num_examples=result.num_examples,
        round_seconds=seconds,
        # Every sampled client downloads the model; only those that report upload.
        bytes_to_clients=engine.bytes_to_client * len(sampled),
        bytes_from_clients=engine.bytes_from_client * len(clients),
    )
    logs.update(result.aggregation)
    logs.update(_round_extras(plan, sampled, clients, round_num))
    if devices is not None:
        logs.update(device_logs(plan.devices, devices, clock))
    evaluation_logs, evaluated = _evaluate_if_due(plan, engine, state, round_num)
    logs.update(evaluation_logs)
    return state, logs, {
        _PARTICIPANTS: _participants(clients, result),
        _CLIENT_TRAIN_METRICS: _plain(result.client_metrics or {}),
        _CLIENT_METRICS: evaluated,
    }


def _run_buffered_round(plan: Plan, engine: Any, buffered: BufferedRounds, state: Any,
                        round_num: int) -> tuple[Any, dict, dict]:
    """One FedBuff server update (``asynchronous.py``), then evaluation as usual."""
    started = time.perf_counter()
    state, logs, per_client = buffered.round(state, round_num)
    plan.model.set_weights(engine.get_weights(state))
    clients = len(per_client[_PARTICIPANTS])
    logs.update(round_seconds=time.perf_counter() - started,
                bytes_to_clients=engine.bytes_to_client * clients,
                bytes_from_clients=engine.bytes_from_client * clients)
    evaluation_logs, evaluated = _evaluate_if_due(plan, engine, state, round_num)
    logs.update(evaluation_logs)
    return state, logs, {_PARTICIPANTS: per_client[_PARTICIPANTS],
                         _CLIENT_TRAIN_METRICS: _plain(per_client[_CLIENT_TRAIN_METRICS]),
                         _CLIENT_METRICS: evaluated}


def _participants(clients: Sequence[ClientRound], result: Any) -> list[str]:
    """The ids of the clients whose updates were aggregated this round."""
    if result.participants is not None:
        return [str(cid) for cid in result.participants]
    # The engine cannot tell which clients it left out: none were aggregated
    # when the round was skipped or every update was left out, else all.
    if result.skipped or result.update_non_finite or result.num_examples == 0:
        return []
    return [str(c.cid) for c in clients]


def _round_extras(plan: Plan, sampled: Sequence[ClientRound], clients: Sequence[ClientRound],
                  round_num: int) -> dict:
    extras: dict[str, float] = {}
    if plan.client_sampling == "poisson":
        extras["clients"] = len(sampled)
    if plan.attack is not None:
        extras["attackers"] = sum(c.cid in plan.attackers for c in clients)
    dp = plan.aggregator.dp
    if dp is not None:
        delta = dp.default_delta(len(plan.clients))
        # The accountant takes the sampling that happened: with over-selection more
        # clients are sampled; dropouts and deadlines (which do not depend on the
        # data) only remove clients, so counting them stays an upper bound.
        sampled_per_round = plan.sampled_per_round
        extras["epsilon"] = accounting.epsilon(
            dp.noise_multiplier, round_num + 1, delta=delta, sampling=plan.client_sampling,
            num_clients=len(plan.clients),
            clients_per_round=(plan.expected_clients if sampled_per_round is None
                               or plan.client_sampling == "poisson" else sampled_per_round),
            accountant=dp.accountant)
        extras["dp_delta"] = delta
    return extras


def _warn_non_finite(round_num: int, result: Any, expected_examples: int) -> None:
    # A client whose update has NaN/inf values is dropped (weight 0, metrics reset,
    # as TFF does), and the global weights are kept when every client was: say so.
    if result.update_non_finite or result.num_examples == 0:
        what = ("every client's update had NaN or infinite values, so the previous "
                "global weights were kept")
    elif result.num_examples < expected_examples:
        what = (f"some clients' updates had NaN or infinite values and were left out "
                f"of the average and the metrics ({result.num_examples} of "
                f"{expected_examples} examples counted)")
    else:
        return
    warnings.warn(
        f"{_CALLER}: round {round_num + 1}: {what}. Lower the client or server learning "
        f"rate, or check the data.",
        RuntimeWarning,
        stacklevel=user_stacklevel(),
    )


def _evaluate_if_due(plan: Plan, engine: Any, state: Any,
                     round_num: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``_evaluate`` on evaluated rounds (every ``evaluate_every``-th and the last)."""
    if (round_num + 1) % plan.evaluate_every == 0 or round_num == plan.rounds - 1:
        return _evaluate(plan, engine, state, round_num)
    return {}, {}


def _evaluate(plan: Plan, engine: Any, state: Any,
              round_num: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The evaluation logs of round ``round_num`` (``val_``, ``fed_eval_`` and its
    quantiles over clients), and each evaluation client's values."""
    logs: dict[str, float] = {}
    per_client: dict[str, dict[str, float]] = {}
    if plan.validation is not None:
        x, y, *w = plan.validation
        if has_strings(x) or has_strings(y):  # Keras 3's evaluate refuses numpy strings
            x, y = to_tensors(x), to_tensors(y)
        results = plan.model.evaluate(
            x, y, sample_weight=w[0] if w else None, batch_size=plan.validation_batch_size,
            verbose=0, return_dict=True
        )
        logs.update({f"val_{k}": float(v) for k, v in results.items()})
    if plan.eval_clients is not None:
        data = plan.eval_clients
        if plan.eval_clients_per_round is not None:
            data = data.subset(sample_clients(data.client_ids, plan.eval_clients_per_round,
                                              round_num, plan.seed, stream=2))
        evaluation = engine.evaluate(state, _whole_clients(data))
        logs.update({f"fed_eval_{k}": v for k, v in evaluation.pooled.items()})
        per_client = _plain(evaluation.per_client)
        logs.update(spread("fed_eval_", per_client))
        if plan.personalization is not None:  # FineTune: personalized and baseline, per client
            tuned = personalization.evaluate_round(plan, engine, state, data, round_num)
            logs.update(tuned.logs)
            for cid, values in tuned.per_client.items():
                per_client.setdefault(cid, {}).update(values)
        elif getattr(engine, "keeps_personal_weights", False):
            # Personal layers / models: evaluation clients that are training clients
            # are evaluated with their own weights, beside the global model.
            training = set(plan.clients.client_ids)
            mine = [c for c in _whole_clients(data) if c.cid in training]
            if mine:
                own = engine.evaluate_personal(state, mine)
                logs.update(personalization.round_logs(own))
                for cid, values in own.items():
                    per_client.setdefault(cid, {}).update(values)
    return logs, per_client


def _plain(per_client: dict) -> dict[str, dict[str, float]]:
    """``{client_id: {metric: value}}`` with str ids and float values (JSON in checkpoints)."""
    return {str(cid): {str(k): float(v) for k, v in values.items()}
            for cid, values in per_client.items()}


# The keys of what a saved round records per client, and their `History` attributes.
_PARTICIPANTS = "participants"
_CLIENT_METRICS = "client_metrics"
_CLIENT_TRAIN_METRICS = "client_train_metrics"
_PER_CLIENT = {_PARTICIPANTS: "participants", _CLIENT_METRICS: "client_metrics",
               _CLIENT_TRAIN_METRICS: "client_train_metrics"}


def _numbers(logs: dict) -> dict:
    """A saved round's logs without its per-client records (what ``History.history`` holds)."""
    return {k: v for k, v in logs.items() if k not in _PER_CLIENT}


def _restore_history(history: keras.callbacks.History, round_logs: list[dict]) -> None:
    # History.on_train_begin resets `epoch`; refill it with the resumed rounds.
    # Per-client records go to their own attributes: Keras callbacks expect numbers
    # in `history.history`. (None for rounds saved before kerasfed recorded them.)
    for attribute in _PER_CLIENT.values():
        setattr(history, attribute, [])
    for round_num, logs in enumerate(round_logs):
        history.epoch.append(round_num)
        for key, attribute in _PER_CLIENT.items():
            getattr(history, attribute).append(logs.get(key))
        for key, value in _numbers(logs).items():
            history.history.setdefault(key, []).append(value)
