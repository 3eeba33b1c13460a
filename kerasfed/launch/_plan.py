"""What to start: checked launch arguments and each worker's command and environment.

Three ways to give workers their ``TF_CONFIG``:

* ``local`` (``--workers N``): N workers on this machine, on free ports of
  127.0.0.1 picked anew for every (re)start.
* ``hosts`` (``--hosts h0:p0,h1:p1 --rank R``): one worker, rank R of the listed
  cluster; run one launcher per rank.
* ``keep`` (``--keep-tf-config``): one worker with the ``TF_CONFIG`` already in
  the environment (Kubernetes TFJob, Slurm wrappers), checked before starting.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
from typing import Literal, Mapping, Sequence

from kerasfed._arguments import checked_call
from kerasfed._tf_startup import LOG_LEVEL_VAR, QUIET_LOG_LEVEL
from kerasfed.distributed.tf_config import (
    TF_CONFIG_VAR,
    ClusterConfig,
    TFConfigError,
    build_tf_config,
    check_addresses,
    read_tf_config,
)
from kerasfed.errors import LaunchArgumentError  # noqa: F401  (defined with the family)
from kerasfed.launch._process_group import WorkerSpec

RANK_VAR = "KERASFED_RANK"
NUM_WORKERS_VAR = "KERASFED_NUM_WORKERS"
RESTART_COUNT_VAR = "KERASFED_RESTART_COUNT"

DEFAULT_GRACE_PERIOD_S = 5.0


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """Checked arguments of one launch; build it with :func:`make_plan`.

    Attributes:
        command: The worker command: ``(sys.executable, "-m",
            "kerasfed.launch.bootstrap", script, *script_args)``, or without the
            bootstrap (``--no-auto-strategy``) ``(sys.executable, script, ...)``.
        mode: ``"local"``, ``"hosts"`` or ``"keep"`` (see the module docstring).
        num_workers: Number of training processes in the whole cluster.
        hosts: ``"host:port"`` of every rank (``"hosts"`` mode), else empty.
        rank: The rank this launcher starts (``"hosts"`` mode), else ``None``.
        kept_config: The checked ``TF_CONFIG`` of the environment (``"keep"`` mode).
        max_restarts: How often the whole group may be restarted after a failure.
        grace_period: Seconds between SIGTERM and SIGKILL when stopping workers.
        notes: Remarks to print before starting, e.g. that TF_CONFIG is replaced.
    """

    command: tuple[str, ...]
    mode: Literal["local", "hosts", "keep"]
    num_workers: int
    hosts: tuple[str, ...] = ()
    rank: int | None = None
    kept_config: ClusterConfig | None = None
    max_restarts: int = 0
    grace_period: float = DEFAULT_GRACE_PERIOD_S
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        needs = {"keep": self.kept_config is not None, "hosts": self.rank is not None}
        if not needs.get(self.mode, self.mode == "local"):
            raise LaunchArgumentError(
                f"LaunchPlan(mode={self.mode!r}) is incomplete or unknown; "
                "build it with make_plan()."
            )

    def worker_specs(
        self, restart_count: int = 0, environ: Mapping[str, str] | None = None
    ) -> list[WorkerSpec]:
        """The workers to start for one attempt.

        Args:
            restart_count: How many restarts happened before this attempt.
            environ: The environment workers inherit. Defaults to ``os.environ``.

        Returns:
            One spec per local worker; ``local`` mode picks fresh ports each call.
        """
        base = dict(os.environ if environ is None else environ)
        base.update(PYTHONUNBUFFERED="1", **{RESTART_COUNT_VAR: str(restart_count)})
        # TensorFlow's C++ INFO and WARNING lines off, unless the user chose a level;
        # the lines TF writes before reading it are dropped by the output relay.
        base.setdefault(LOG_LEVEL_VAR, QUIET_LOG_LEVEL)
        if self.mode == "keep":
            config: ClusterConfig = self.kept_config  # type: ignore[assignment]
            env = dict(base, **{NUM_WORKERS_VAR: str(config.num_workers)})
            if config.trains:
                env[RANK_VAR] = str(config.rank)
                label = str(config.rank)
            else:  # a ps or evaluator task has no rank; a stale one must not leak in
                env.pop(RANK_VAR, None)
                label = f"{config.task_type}{config.task_index}"
            return [WorkerSpec(label, self.command, env)]
        if self.mode == "hosts":
            addresses, ranks = list(self.hosts), [self.rank]
        else:
            addresses = [f"127.0.0.1:{port}" for port in pick_free_ports(self.num_workers)]
            ranks = list(range(self.num_workers))
        specs = []
        for rank in ranks:
            env = dict(base)
            env.update(
                {
                    TF_CONFIG_VAR: build_tf_config(addresses, rank),
                    RANK_VAR: str(rank),
                    NUM_WORKERS_VAR: str(len(addresses)),
                }
            )
            specs.append(WorkerSpec(str(rank), self.command, env))
        return specs


def pick_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Asks the OS for ``count`` distinct free TCP ports on ``host``.

    Each port is found by binding port 0; all sockets stay open until every port
    is chosen (so the ports differ), then close. Another program can take a port
    between this close and the worker's bind; the window is short and, should it
    happen, TensorFlow fails to start its server and ``--max-restarts`` retries
    with fresh ports.

    Args:
        count: Number of ports.
        host: The address to bind.

    Returns:
        The port numbers.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@checked_call()
def make_plan(
    script: str,
    script_args: Sequence[str] = (),
    *,
    workers: int | None = None,
    hosts: str | None = None,
    rank: int | None = None,
    keep_tf_config: bool = False,
    max_restarts: int = 0,
    grace_period: float = DEFAULT_GRACE_PERIOD_S,
    environ: Mapping[str, str] | None = None,
    auto_strategy: bool = True,
) -> LaunchPlan:
    """Checks the launch arguments together, before anything starts.

    Args:
        script: Path of the Python script each worker runs.
        script_args: Arguments passed to the script unchanged.
        auto_strategy: Run the script through ``kerasfed.launch.bootstrap``, which
            creates the multi-worker strategy before the script's first op
            (default True; ``--no-auto-strategy`` turns it off).
        workers: Number of local workers (``--workers``). Defaults to 1; with
            ``hosts`` or ``keep_tf_config`` it may only be 1.
        hosts: Comma-separated ``"host:port"`` of every rank (``--hosts``).
        rank: The rank to start from ``hosts`` (``--rank``); required with it.
        keep_tf_config: Use the environment's ``TF_CONFIG`` unchanged.
        max_restarts: Restarts of the whole group after a failure. Defaults to 0.
        grace_period: Seconds from SIGTERM to SIGKILL. Defaults to 5.
        environ: Where to read ``TF_CONFIG``. Defaults to ``os.environ``.

    Returns:
        The plan.

    Raises:
        LaunchArgumentError: For an argument out of range, a missing script,
            malformed or duplicate hosts, a rank outside them, contradicting
            options, or a missing or invalid ``TF_CONFIG`` with ``keep_tf_config``.
    """
    environ = os.environ if environ is None else environ
    if workers is not None and workers < 1:
        raise LaunchArgumentError(
            f"--workers must be at least 1. Received: --workers {workers}."
        )
    if max_restarts < 0:
        raise LaunchArgumentError(
            f"--max-restarts must be 0 or more. Received: --max-restarts {max_restarts}."
        )
    if not (math.isfinite(grace_period) and grace_period >= 0):
        raise LaunchArgumentError(
            f"--grace-period must be a number of seconds, 0 or more. Received: "
            f"--grace-period {grace_period}."
        )
    _check_script(script)
    # The bootstrap creates the multi-worker strategy before the script's first op.
    runner = ("-m", "kerasfed.launch.bootstrap") if auto_strategy else ()
    command = (sys.executable, *runner, script, *script_args)
    common = dict(command=command, max_restarts=max_restarts, grace_period=grace_period)
    replaced = (
        (f"{TF_CONFIG_VAR} is set in this environment; kerasfed launch gives its workers "
         "their own (pass --keep-tf-config to use it instead).",)
        if environ.get(TF_CONFIG_VAR, "").strip() else ()
    )

    if keep_tf_config:
        if hosts is not None or rank is not None:
            raise LaunchArgumentError(
                "--keep-tf-config uses the cluster in TF_CONFIG, so --hosts and --rank "
                "cannot be given with it. Drop one or the other."
            )
        _check_one_local_worker(workers, "--keep-tf-config")
        return LaunchPlan(mode="keep", num_workers=1, kept_config=_kept_config(environ), **common)

    if hosts is None:
        if rank is not None:
            raise LaunchArgumentError(
                f"--rank {rank} needs --hosts, the addresses of all ranks, e.g. "
                "--hosts 10.0.0.1:2222,10.0.0.2:2222 --rank 1. Without --hosts, use "
                "--workers N to start N local workers."
            )
        return LaunchPlan(mode="local", num_workers=workers or 1, notes=replaced, **common)

    addresses = tuple(h.strip() for h in hosts.split(","))
    try:
        check_addresses([(f"--hosts entry for rank {i}", a) for i, a in enumerate(addresses)])
    except TFConfigError as e:
        raise LaunchArgumentError(f"{e} Received: --hosts {hosts}.") from None
    if rank is None:
        raise LaunchArgumentError(
            f"--hosts needs --rank: the index in --hosts of the worker this launcher starts "
            f"(0..{len(addresses) - 1}). Run one launcher per rank, e.g. "
            f"--hosts {hosts} --rank 0 on {addresses[0]}."
        )
    if not 0 <= rank < len(addresses):
        raise LaunchArgumentError(
            f"--rank {rank} is outside --hosts, which lists {len(addresses)} workers "
            f"(valid ranks 0..{len(addresses) - 1})."
        )
    _check_one_local_worker(workers, f"--hosts with --rank {rank}")
    return LaunchPlan(
        mode="hosts", num_workers=len(addresses), hosts=addresses, rank=rank,
        notes=replaced, **common,
    )


def _check_script(script: str) -> None:
    if os.path.isfile(script):
        return
    if os.path.isdir(script) and os.path.isfile(os.path.join(script, "__main__.py")):
        return  # `python dir` runs dir/__main__.py
    what = "is a directory without __main__.py" if os.path.isdir(script) else "does not exist"
    raise LaunchArgumentError(
        f"The script {script!r} {what} (looked at {os.path.abspath(script)}). Give the path "
        "of the Python file each worker runs, e.g. kerasfed launch --workers 2 train.py."
    )


def _check_one_local_worker(workers: int | None, reason: str) -> None:
    if workers not in (None, 1):
        raise LaunchArgumentError(
            f"--workers {workers} conflicts with {reason}, which starts exactly one worker "
            "on this machine. Start one launcher per worker, or drop those options and use "
            "--workers alone to run all workers here."
        )


def _kept_config(environ: Mapping[str, str]) -> ClusterConfig:
    try:
        config = read_tf_config(environ)
    except TFConfigError as e:
        raise LaunchArgumentError(f"--keep-tf-config: {e}") from None
    if config is None:
        raise LaunchArgumentError(
            "--keep-tf-config needs TF_CONFIG in the environment, but it is unset or empty. "
            "Set it (as Kubernetes TFJob or your cluster's wrapper does), or drop "
            "--keep-tf-config to let kerasfed launch write it."
        )
    return config
