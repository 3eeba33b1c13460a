"""Learning rates by round on the TFF engine, through TFF's own hyper-parameters.

TFF 0.87 keeps each optimizer's hyper-parameters in the learning process's
state: the server optimizer's in ``state.finalizer`` and the client optimizer's
in ``state.client_work`` (FedAvg and FedProx: the client work's state *is* its
optimizer's hyper-parameters, which every client's optimizer is set to before
it trains; Mime-lite: the global client optimizer state it broadcasts). This is
what ``LearningProcess.set_hparams`` writes; kerasfed writes the round's rate
there before each round, so one process serves every round, for every
algorithm, and a resumed run gets its rounds' rates from the round index
(``build_weighted_fed_avg_with_optimizer_schedule`` instead counts rounds in its
state from 0 and exists only for weighted FedAvg's client rate).
"""

from __future__ import annotations

import collections
import collections.abc
from typing import Any

import numpy as np

_RATE = "learning_rate"


def with_round_rates(state: Any, round_num: int, *, server_rate: Any, client_rate: Any,
                     mime: bool) -> Any:
    """``state`` (a ``LearningAlgorithmState``) with round ``round_num``'s rates.

    Args:
      state: The learning process's state.
      round_num: The round about to run (from 0).
      server_rate: The server's ``RoundSchedule``.
      client_rate: The clients' ``RoundSchedule``, or None (the compiled rate).
      mime: Whether the process is Mime-lite (its client optimizer state is the
        first entry of ``state.client_work``).

    Returns:
      The state, with the rates of the schedules that change by round set.
    """
    if server_rate.constant is None:
        state = state._replace(finalizer=_with_rate(state.finalizer, server_rate(round_num)))
    if client_rate is not None and client_rate.constant is None:
        work = state.client_work
        if mime:
            work = (_with_rate(work[0], client_rate(round_num)), *work[1:])
        elif isinstance(work, collections.abc.Mapping) and _RATE in work:
            work = _with_rate(work, client_rate(round_num))
        # FedSGD's clients have no optimizer (fit_federated warns about the setting).
        state = state._replace(client_work=work)
    return state


def _with_rate(hparams: Any, rate: float) -> collections.OrderedDict:
    updated = collections.OrderedDict(hparams)
    updated[_RATE] = np.asarray(rate, dtype=np.asarray(hparams[_RATE]).dtype)
    return updated
