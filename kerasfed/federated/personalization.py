"""Personalization evaluation: how good the global model is once each client fine-tunes it.

``fit_federated(..., evaluation_clients=..., personalization=FineTune(...))``: on
each evaluated round every evaluation client's examples are split, from
``(seed, round, client id)``, into a fine-tuning part (``fraction`` of them)
and a test part. A copy of the global model is trained on the fine-tuning part
(``epochs`` passes, ``batch_size``, the compiled optimizer or ``optimizer``,
its state fresh for every client) and evaluated on the test part; the global
model itself on the same test part is the baseline. ``History`` gets
``fed_eval_personalized_{m}`` and ``fed_eval_baseline_{m}`` (unweighted means
over the clients) with their spread over the clients
(``client_metrics.spread``: ``_min``, ``_p10``, ``_p50``, ``_p90``, ``_max``).

This is the evaluation of TFF's ``build_personalization_eval_computation``
(Wang et al. 2019, "Federated Evaluation of On-device Personalization",
arXiv:1910.10252) and of FedJAX / pfl-research's fine-tuning evaluation. The
native engine runs it (``engines/native/finetune.py``), all clients of a chunk
at once where the model allows.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from kerasfed._compat import keras
from kerasfed.errors import ArgumentError, ArgumentTypeError
from kerasfed.federated.client_metrics import spread
from kerasfed.federated.client_optimizers import ClientOptimizerSpec, client_optimizer_from_keras
from kerasfed.federated.clients.sampling import per_client_seed
from kerasfed.federated.clients.structure import num_rows

_OWNER = "FineTune"
# Added to (seed, round) so that the split draws from its own stream, not from
# the training shuffle's (client_shuffle_seed is [seed, round, crc32(cid)]).
_SPLIT_STREAM = 3


@dataclasses.dataclass(frozen=True)
class FineTune:
    """Evaluate each evaluation client's fine-tuned copy of the global model.

    Attributes:
      epochs: Passes over each client's fine-tuning part (default 1), an int >= 1.
      batch_size: Fine-tuning batch size (default None: ``fit_federated``'s
        ``batch_size``), an int >= 1.
      fraction: Share of each client's examples used for fine-tuning, in (0, 1)
        (default 0.5); the rest is its test part. A client gets
        ``round(fraction * n)`` fine-tuning examples, at least 1 and at most
        ``n - 1`` (a client of one example is only tested: its personalized
        values equal its baseline).
      optimizer: None (default: the compiled optimizer, as compiled: its own
        learning rate, not ``client_learning_rate``'s) or a Keras optimizer
        (instance or name) that ``fit_federated`` supports as a client optimizer
        (SGD, Adam, AdamW, Adagrad, RMSprop). Its state starts afresh for every
        client, on every evaluated round.
      seed: Seed of the split (default None: the run's ``seed``), an int >= 0.
        The split is drawn from ``(seed, round, client id)``: it changes by
        round, never with the clients evaluated beside it.

    Example:
      >>> FineTune(epochs=2, fraction=0.25).fraction
      0.25
    """

    epochs: int = 1
    batch_size: int | None = None
    fraction: float = 0.5
    optimizer: Any = None
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1)
        if self.batch_size is not None:
            _check_int("batch_size", self.batch_size, 1, none_ok=True)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, none_ok=True)
        _check_fraction(self.fraction)
        if self.optimizer is not None:
            self.optimizer_spec()  # an optimizer kerasfed cannot reproduce fails here

    def optimizer_spec(self, compiled: Mapping | None = None) -> ClientOptimizerSpec:
        """The fine-tuning update rule: ``optimizer``'s, else ``compiled``'s
        (``{"class_name": ..., "config": ...}`` of the compiled optimizer).

        Raises:
          ClientOptimizerError, ClientOptimizerTypeError: an optimizer kerasfed
            cannot reproduce (the message lists those it can).
        """
        if self.optimizer is None:
            return client_optimizer_from_keras(dict(compiled), caller=_OWNER)
        return client_optimizer_from_keras(_optimizer_config(self.optimizer), caller=_OWNER)


def _optimizer_config(optimizer: Any) -> dict:
    if isinstance(optimizer, str):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except ValueError as e:
            raise ArgumentError(
                f"{_OWNER}: expected `optimizer` to be None, a Keras optimizer or the name of "
                f"one. Received: optimizer={optimizer!r} ({e}). Pass e.g. "
                f"keras.optimizers.SGD(learning_rate=0.05) or 'sgd'.") from e
    if not hasattr(optimizer, "get_config"):
        raise ArgumentTypeError(
            f"{_OWNER}: expected `optimizer` to be None, a Keras optimizer or the name of "
            f"one. Received: optimizer={optimizer!r} of type {type(optimizer).__name__}. Pass "
            f"e.g. keras.optimizers.SGD(learning_rate=0.05), or None for the compiled one.")
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def _check_int(name: str, value: Any, minimum: int, *, none_ok: bool = False) -> int:
    allowed = f"None or an int >= {minimum}" if none_ok else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(
            f"{_OWNER}: expected `{name}` to be {allowed}. Received: {name}={value!r} of type "
            f"{type(value).__name__}. Pass e.g. {name}={max(minimum, 1)}.")
    if value < minimum:
        raise ArgumentError(
            f"{_OWNER}: expected `{name}` to be {allowed}. Received: {name}={value}. "
            f"Pass e.g. {name}={max(minimum, 1)}.")
    return int(value)


def _check_fraction(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(
            f"{_OWNER}: expected `fraction` to be a float in (0, 1). Received: "
            f"fraction={value!r} of type {type(value).__name__}. Pass e.g. fraction=0.5.")
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ArgumentError(
            f"{_OWNER}: expected `fraction` to be a float in (0, 1) (the share of each "
            f"client's examples used for fine-tuning; the rest are its test examples). "
            f"Received: fraction={value!r}. Pass e.g. fraction=0.5.")


# -- the split -----------------------------------------------------------------------------


def split_seed(seed: int, round_num: int, cid: str) -> list[int]:
    """The seed of client ``cid``'s split on round ``round_num``:
    ``[seed, round_num, 3, crc32(cid)]`` (stable across processes and runs).

    Example:
      >>> split_seed(7, 3, "a")
      [7, 3, 3, 3904355907]
    """
    return per_client_seed([int(seed), int(round_num), _SPLIT_STREAM], str(cid))


def split_examples(num_examples: int, fraction: float,
                   seed: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(tune, test)``: a client's example indices cut in two, seeded.

    ``tune`` holds ``round(fraction * n)`` indices (clipped to [1, n - 1]; 0 when
    ``n == 1``) in a random order, the order fine-tuning goes through them;
    ``test`` holds the others, ascending. Together they are ``0 .. n-1``, each once.

    Example:
      >>> tune, test = split_examples(5, 0.4, seed=[0, 0, 3, 1])
      >>> sorted([*tune, *test])
      [0, 1, 2, 3, 4]
    """
    n = int(num_examples)
    k = int(math.floor(fraction * n + 0.5))
    k = min(max(k, 1 if n >= 2 else 0), max(n - 1, 0))
    order = np.random.default_rng(seed).permutation(n)
    return order[:k].astype(np.int64), np.sort(order[k:]).astype(np.int64)


# -- checking the argument (arguments.py) ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckedFineTune:
    """A ``FineTune`` checked against the run: the rule and batch size it trains with."""

    finetune: FineTune
    rule: ClientOptimizerSpec
    batch_size: int


def check_personalization(personalization: Any, *, recipe: Any, evaluation_clients: Any,
                          batch_size: int, engine: str) -> CheckedFineTune | None:
    """``fit_federated``'s ``personalization`` checked (None stays None).

    Raises:
      ArgumentTypeError: not a ``FineTune``.
      ArgumentError: no ``evaluation_clients``, or ``engine="tff"``.
      ClientOptimizerError: a compiled optimizer that cannot be reproduced.
    """
    if personalization is None:
        return None
    if not isinstance(personalization, FineTune):
        raise ArgumentTypeError(
            f"fit_federated: expected `personalization` to be None or a kerasfed.FineTune. "
            f"Received: personalization={personalization!r} of type "
            f"{type(personalization).__name__}. Pass e.g. "
            f"personalization=kerasfed.FineTune(epochs=1).")
    if evaluation_clients is None:
        raise ArgumentError(
            "fit_federated: personalization=FineTune(...) fine-tunes and tests the global "
            "model on held-out clients, and this call has none (evaluation_clients=None). "
            "Pass evaluation_clients=..., or drop `personalization`.")
    if engine != "native":
        raise ArgumentError(
            f"fit_federated: personalization=FineTune(...) runs on the native engine only; "
            f"this call runs on engine={engine!r}. Pass engine='native' (or engine='auto').")
    return CheckedFineTune(
        finetune=personalization, rule=personalization.optimizer_spec(recipe.optimizer_config()),
        batch_size=personalization.batch_size or batch_size)


# -- one evaluated round (fit.py) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PersonalizationResult:
    """One evaluated round's personalization evaluation.

    Attributes:
      logs: ``History`` entries: ``fed_eval_personalized_{m}`` and
        ``fed_eval_baseline_{m}`` (unweighted means over the clients) and their
        quantile keys (``..._{m}_min``, ``_p10``, ``_p50``, ``_p90``, ``_max``).
      per_client: ``{cid: {"personalized_{m}": ..., "baseline_{m}": ...}}``.
    """

    logs: dict[str, float]
    per_client: dict[str, dict[str, float]]


def round_logs(per_client: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``History`` entries from each client's values (see ``PersonalizationResult``)."""
    logs: dict[str, float] = {}
    for kind in ("personalized", "baseline"):
        mine = {cid: {k[len(kind) + 1:]: v for k, v in values.items() if k.startswith(kind + "_")}
                for cid, values in per_client.items()}
        if not mine:
            continue
        names = list(next(iter(mine.values())))
        for name in names:
            # Unweighted: every client counts once (NaN-free: empty clients were refused).
            logs[f"fed_eval_{kind}_{name}"] = float(np.mean([m[name] for m in mine.values()]))
        logs.update(spread(f"fed_eval_{kind}_", mine))
    return logs


# One fine-tuning evaluation per engine (its compiled functions are reused every round).
_EVALUATIONS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def evaluate_round(plan: Any, engine: Any, state: Any, data: Any,
                   round_num: int) -> PersonalizationResult:
    """Fine-tunes and evaluates the global model on each client of ``data``.

    Args:
      plan: The run's ``Plan`` (``plan.personalization`` is a ``CheckedFineTune``).
      engine: The native engine (its ``get_weights(state)`` is the global model).
      state: The engine's state after the round.
      data: The evaluation clients of this round (a ``ClientData``).
      round_num: The round, from 0 (seeds the split).
    """
    from kerasfed.federated.engines.native import forward as fwd  # noqa: PLC0415
    from kerasfed.federated.engines.native.finetune import (  # noqa: PLC0415
        FineTuneEvaluation,
        SplitClient,
    )
    from kerasfed.federated.engines.native.optimizers import client_rule  # noqa: PLC0415

    checked = plan.personalization
    model = plan.model
    evaluation = _EVALUATIONS.get(engine)
    if evaluation is None:
        evaluation = FineTuneEvaluation(
            model, loss=plan.parts.loss_per_example(),
            flatten=plan.layout.flatten if plan.layout is not None else None,
            metrics=plan.parts.metrics, rule=client_rule(checked.rule),
            batch_size=checked.batch_size, epochs=checked.finetune.epochs,
            max_parallel_clients=plan.max_parallel_clients)
        _EVALUATIONS[engine] = evaluation
    seed = checked.finetune.seed if checked.finetune.seed is not None else plan.seed
    clients = []
    for cid, (x, y, *w) in data.items():
        tune, test = split_examples(num_rows(x), checked.finetune.fraction,
                                    split_seed(seed, round_num, cid))
        clients.append(SplitClient(cid=cid, x=x, y=y, w=w[0] if w else None, tune=tune,
                                   test=test))
    weights = engine.get_weights(state)
    position = {id(v): i for i, v in enumerate(model.weights)}
    trainable = [tf.constant(weights[position[id(v)]])
                 for v in fwd.variables(model.trainable_variables)]
    # Keras 3 seed generators' states are no weights: they ride along as they are.
    non_trainable = [tf.constant(weights[position[id(v)]]) if id(v) in position
                     else tf.identity(v) for v in fwd.variables(model.non_trainable_variables)]
    try:
        per_client = evaluation(trainable, non_trainable, clients)
    finally:
        # The sequential form may have used the model's variables as scratch.
        model.set_weights(weights)
    return PersonalizationResult(logs=round_logs(per_client), per_client=per_client)
