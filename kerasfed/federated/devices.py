"""Simulated devices: dropout, speeds, bandwidth, deadlines and over-selection.

Real cross-device clients fail, are slow, and do unequal work (Bonawitz et al.
2019, "Towards Federated Learning at Scale", MLSys). ``Devices`` describes them
in one value; ``schedule_round`` decides, before a round trains, which of the
sampled clients report and how many local steps each finishes, and how long the
round takes on a simulated clock. Everything is drawn from ``(seed, round,
client id)`` (and the client's per-run speed from ``(seed, client id)``), so a
run repeats and a resumed run continues the same way.

A client's simulated time in a round is ``download + compute + upload``:
``bytes_to_client / bandwidth``, ``examples processed / speed`` and
``bytes_from_client / bandwidth``. The server waits for the clients that
report, up to ``deadline`` if one is set; clients that drop out are assumed
detected at once (they do not hold the round up).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from kerasfed.errors import FederatedArgumentError, FederatedArgumentTypeError

if TYPE_CHECKING:  # the engines' package imports TensorFlow; this module needs none
    from kerasfed.federated.engines.base import ClientRound

STRAGGLER_POLICIES = ("drop", "partial")

# Stream tags of the draws (any distinct constants: they keep the draws apart).
_DROPOUT_STREAM = 0xD809
_SPEED_STREAM = 0x5BEED


@dataclasses.dataclass(frozen=True)
class LogNormal:
    """A log-normal per-client value, drawn once per client from ``(seed, client id)``.

    ``median * exp(sigma * z)`` with ``z`` standard normal: the spread of device
    speeds FedScale's traces show is about log-normal (sigma around 1).

    Attributes:
      median: The median value (> 0).
      sigma: The standard deviation of its logarithm (>= 0; 0: every client the median).

    Example:
      >>> LogNormal(median=100.0, sigma=0.0).value(seed=0, cid="a", name="speed")
      100.0
    """

    median: float
    sigma: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("LogNormal", "median", self.median)
        _check_real("LogNormal", "sigma", self.sigma, minimum=0.0)

    def value(self, *, seed: int, cid: str, name: str) -> float:
        """Client ``cid``'s value of the quantity ``name`` (its own stream per name)."""
        rng = np.random.default_rng(
            [seed, _SPEED_STREAM, zlib.crc32(name.encode()), zlib.crc32(cid.encode())])
        return float(self.median * math.exp(self.sigma * rng.standard_normal()))


PerClient = Union[float, Mapping[str, float], Callable[[str], float], LogNormal]


@dataclasses.dataclass(frozen=True)
class Devices:
    """How the simulated clients' devices behave (``fit_federated(devices=...)``).

    Every field is optional; the defaults are reliable, equally fast devices
    without a clock. Checked when made.

    Attributes:
      dropout: Probability that a sampled client fails to return its update, in
        [0, 1), drawn independently per client and round from ``(seed, round,
        client)``. The round aggregates the others.
      speed: Examples per second each client trains: a number (every client), a
        dict ``{client_id: number}`` (every client of the run), a function of the
        client id, or a seeded distribution such as ``kerasfed.LogNormal(median,
        sigma)`` (one draw per client, fixed for the run). None (default): no
        simulated clock.
      bandwidth: Bytes per second to and from each client, the same kinds of
        value; payloads are the bytes ``History`` counts. None (default):
        communication takes no time. Needs ``speed``.
      deadline: Seconds a round waits for its clients (> 0), or None (default:
        every reporting client). Needs ``speed``.
      stragglers: What a client not done by ``deadline`` does: ``"drop"``
        (default: its update is lost) or ``"partial"`` (it sends the local steps
        it finished in time, FedProx's partial work; a client that finished none
        is dropped).
      over_selection: Sample this fraction more clients than
        ``clients_per_round`` (>= 0; 0.3 samples 30% more, as Bonawitz et al.
        2019) and keep the first ``clients_per_round`` to finish. Needs ``speed``.

    Example:
      >>> Devices(dropout=0.1, speed=LogNormal(median=50.0), deadline=60.0).deadline
      60.0
    """

    dropout: float = 0.0
    speed: PerClient | None = None
    bandwidth: PerClient | None = None
    deadline: float | None = None
    stragglers: str = "drop"
    over_selection: float = 0.0

    def __post_init__(self) -> None:
        dropout = _check_real("Devices", "dropout", self.dropout, minimum=0.0)
        if dropout >= 1.0:
            raise FederatedArgumentError(
                f"Devices: expected `dropout` in [0, 1): the probability that a sampled "
                f"client fails. Received: dropout={self.dropout!r}.")
        object.__setattr__(self, "dropout", dropout)
        for name in ("speed", "bandwidth"):
            _check_per_client(name, getattr(self, name))
        if self.deadline is not None:
            object.__setattr__(self, "deadline",
                               _check_positive("Devices", "deadline", self.deadline))
        if self.stragglers not in STRAGGLER_POLICIES:
            raise FederatedArgumentError(
                f"Devices: expected `stragglers` to be one of {list(STRAGGLER_POLICIES)}. "
                f"Received: stragglers={self.stragglers!r}. 'drop' loses a late client's "
                f"update; 'partial' keeps the local steps it finished by the deadline.")
        object.__setattr__(self, "over_selection", _check_real(
            "Devices", "over_selection", self.over_selection, minimum=0.0))
        needs_clock = [name for name, on in (
            ("bandwidth", self.bandwidth is not None), ("deadline", self.deadline is not None),
            ("over_selection", self.over_selection > 0)) if on]
        if needs_clock and self.speed is None:
            raise FederatedArgumentError(
                f"Devices: {', '.join(needs_clock)} need{'s' if len(needs_clock) == 1 else ''} "
                f"a simulated clock, which `speed` (examples per second per client) sets. "
                f"Pass speed=..., e.g. speed=kerasfed.LogNormal(median=100.0, sigma=1.0).")
        if self.stragglers == "partial" and self.deadline is None:
            raise FederatedArgumentError(
                "Devices: stragglers='partial' keeps the steps a client finished by the "
                "deadline, and no `deadline` is set. Pass deadline=<seconds>.")

    @property
    def has_clock(self) -> bool:
        """Whether rounds are timed (``speed`` is set)."""
        return self.speed is not None

    def describe(self) -> dict[str, str]:
        """The settings as strings (``History.params`` and the checkpoint's fingerprint)."""
        return {f.name: _describe(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def check_clients(self, client_ids: Sequence[str]) -> None:
        """Raises unless every client has a speed and a bandwidth (dicts, functions).

        Called before training, so a missing client or a bad function value fails
        before any round runs.
        """
        for name in ("speed", "bandwidth"):
            spec = getattr(self, name)
            if spec is None or isinstance(spec, (numbers.Real, LogNormal)):
                continue
            for cid in client_ids:
                per_client_value(spec, name, cid, seed=0)

    def sampled(self, clients_per_round: int, num_clients: int) -> int:
        """Clients sampled per round with over-selection (at most every client)."""
        return min(num_clients, math.ceil(clients_per_round * (1.0 + self.over_selection)))


@dataclasses.dataclass(frozen=True)
class DeviceRound:
    """What the devices make of one round's sampled clients.

    Attributes:
      reporting: The clients that send an update, in sampling order; a
        straggler's partial work has ``max_steps`` set.
      dropped: Ids of the sampled clients that dropped out (``dropout``).
      late: Ids of the sampled clients whose update came too late: after the
        deadline, or after ``clients_per_round`` others (over-selection).
      partial: Ids of the reporting clients that sent partial work.
      seconds: The round's simulated duration, or None without a clock.
      durations: Each sampled client's simulated time for all its work (ids of
        clients that dropped out are left out), without a clock ``{}``.
    """

    reporting: list[ClientRound]
    dropped: list[str]
    late: list[str]
    partial: list[str]
    seconds: float | None
    durations: dict[str, float]


def per_client_value(spec: PerClient, name: str, cid: str, *, seed: int) -> float:
    """Client ``cid``'s ``speed`` or ``bandwidth`` (checked to be a number > 0)."""
    if isinstance(spec, LogNormal):
        return spec.value(seed=seed, cid=cid, name=name)
    if isinstance(spec, Mapping):
        if cid not in spec:
            raise FederatedArgumentError(
                f"Devices: `{name}` is a dict without client {cid!r}. Give every client "
                f"a value, or pass a number, a function of the client id, or "
                f"kerasfed.LogNormal(...).")
        value = spec[cid]
    elif callable(spec):
        value = spec(cid)
    else:
        value = spec
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value > 0):
        raise FederatedArgumentError(
            f"Devices: expected `{name}` of client {cid!r} to be a finite number > 0. "
            f"Received: {value!r}.")
    return float(value)


def schedule_round(devices: Devices, clients: Sequence[ClientRound], *, round_num: int,
                   seed: int, batch_size: int, target: int | None, bytes_to: int,
                   bytes_from: int) -> DeviceRound:
    """Which of ``clients`` (sampled for round ``round_num``) report, and when.

    Args:
      devices: The ``Devices``.
      clients: The sampled clients (with over-selection, more than ``target``).
      round_num, seed: The round and the run's seed (every draw comes from them).
      batch_size: The clients' batch size (a step's examples).
      target: With over-selection, how many updates the round keeps
        (``clients_per_round``); else None.
      bytes_to, bytes_from: Bytes each client receives and sends.

    Returns:
      A ``DeviceRound``.
    """
    dropped, late, partial, alive = [], [], [], []
    for client in clients:
        if devices.dropout and _fails(devices.dropout, seed, round_num, client.cid):
            dropped.append(client.cid)
        else:
            alive.append(client)
    if not devices.has_clock:
        return DeviceRound(reporting=alive, dropped=dropped, late=[], partial=[],
                           seconds=None, durations={})
    finishing: list[tuple[float, int, ClientRound]] = []
    durations: dict[str, float] = {}
    for position, client in enumerate(alive):
        speed = per_client_value(devices.speed, "speed", client.cid, seed=seed)
        talk = 0.0
        if devices.bandwidth is not None:
            talk = (bytes_to + bytes_from) / per_client_value(
                devices.bandwidth, "bandwidth", client.cid, seed=seed)
        sizes = client.step_sizes(batch_size)
        done = talk + sum(sizes) / speed
        durations[client.cid] = done
        if devices.deadline is None or done <= devices.deadline:
            finishing.append((done, position, client))
            continue
        steps = _steps_by(sizes, speed, devices.deadline - talk)
        if devices.stragglers == "partial" and steps > 0:
            partial.append(client.cid)
            done = talk + sum(sizes[:steps]) / speed
            finishing.append((done, position, dataclasses.replace(client, max_steps=steps)))
        else:
            late.append(client.cid)
    if target is not None and len(finishing) > target:
        # Over-selection: the first `target` to finish are kept (ties: sampling order).
        first = sorted(finishing, key=lambda f: (f[0], f[1]))
        kept, extra = first[:target], first[target:]
        late.extend(c.cid for _, _, c in extra)
        partial = [cid for cid in partial if cid not in {c.cid for _, _, c in extra}]
        finishing = sorted(kept, key=lambda f: f[1])
        seconds = max(f[0] for f in kept)
    elif devices.deadline is not None and (late or partial):
        seconds = devices.deadline  # the server waited for the deadline
    else:
        seconds = max((f[0] for f in finishing), default=0.0)
    return DeviceRound(reporting=[c for _, _, c in finishing], dropped=dropped,
                       late=late, partial=partial, seconds=float(seconds), durations=durations)


def device_logs(devices: Devices, result: DeviceRound, clock: float) -> dict[str, float]:
    """The round's ``History`` entries: clients lost, and the simulated time."""
    logs: dict[str, float] = {"dropped": float(len(result.dropped)),
                              "stragglers": float(len(result.late))}
    if devices.stragglers == "partial":
        logs["partial_clients"] = float(len(result.partial))
    if result.seconds is not None:
        logs["simulated_seconds"] = result.seconds
        logs["simulated_seconds_total"] = clock + result.seconds
    return logs


def _steps_by(sizes: Sequence[int], speed: float, seconds: float) -> int:
    """How many of the steps (of ``sizes`` examples) finish within ``seconds``."""
    elapsed, steps = 0.0, 0
    for size in sizes:
        elapsed += size / speed
        if elapsed > seconds:
            break
        steps += 1
    return steps


def _fails(p: float, seed: int, round_num: int, cid: str) -> bool:
    rng = np.random.default_rng([seed, round_num, _DROPOUT_STREAM, zlib.crc32(cid.encode())])
    return bool(rng.random() < p)


def check_devices(value: Any) -> Devices | None:
    """``fit_federated``'s ``devices`` argument, checked."""
    if value is None or isinstance(value, Devices):
        return value
    raise FederatedArgumentTypeError(
        f"fit_federated: expected `devices` to be None or a kerasfed.Devices, e.g. "
        f"kerasfed.Devices(dropout=0.1, speed=kerasfed.LogNormal(median=100.0)). "
        f"Received: devices={value!r} of type {type(value).__name__}.")


def _check_per_client(name: str, spec: Any) -> None:
    if spec is None or isinstance(spec, LogNormal):
        return
    if isinstance(spec, Mapping):
        for cid, value in spec.items():
            per_client_value(spec, name, cid, seed=0)
        return
    if callable(spec):
        return  # checked for every client before training (Devices.check_clients)
    if isinstance(spec, bool) or not isinstance(spec, numbers.Real):
        raise FederatedArgumentTypeError(
            f"Devices: expected `{name}` to be a number > 0, a dict of client id to "
            f"number, a function of the client id, or kerasfed.LogNormal(...). Received: "
            f"{name}={spec!r} of type {type(spec).__name__}.")
    _check_positive("Devices", name, spec)


def _check_real(owner: str, name: str, value: Any, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FederatedArgumentTypeError(
            f"{owner}: expected `{name}` to be a number. Received: {name}={value!r} of type "
            f"{type(value).__name__}.")
    if not (math.isfinite(value) and value >= minimum):
        raise FederatedArgumentError(
            f"{owner}: expected `{name}` to be a finite number >= {minimum}. Received: "
            f"{name}={value!r}.")
    return float(value)


def _check_positive(owner: str, name: str, value: Any) -> float:
    value = _check_real(owner, name, value, minimum=0.0)
    if value <= 0:
        raise FederatedArgumentError(
            f"{owner}: expected `{name}` to be > 0. Received: {name}={value!r}.")
    return value


def _describe(value: Any) -> str:
    if callable(value) and not isinstance(value, LogNormal):
        return f"function {getattr(value, '__qualname__', type(value).__name__)}"
    if isinstance(value, Mapping):
        return repr(sorted((str(k), float(v)) for k, v in value.items()))
    return repr(value)
