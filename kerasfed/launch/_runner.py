"""Runs a launch plan: start the group, wait, stop, restart after failures.

Exit codes follow the shell: 0 when every worker succeeded; the first failing
worker's code (128 + N when it died of signal N); 128 + N when the launcher got
signal N (130 for SIGINT, 143 for SIGTERM), which it forwards to the workers.
"""

from __future__ import annotations

import queue
import signal
import sys

from kerasfed._tf_startup import user_sets_log_level
from kerasfed.launch._output import PrefixedOutput
from kerasfed.launch._plan import LaunchPlan
from kerasfed.launch._process_group import Event, ProcessGroup, describe_exit
from kerasfed.launch._signals import signals_as_events


def run(plan: LaunchPlan, output: PrefixedOutput | None = None, *, live_bars: str = "chief") -> int:
    """Starts the plan's workers and supervises them until they are all gone.

    Must run in the main thread (signal handlers, and ``PR_SET_PDEATHSIG`` is tied
    to the thread that starts the workers).

    Args:
        plan: What to start, from :func:`kerasfed.launch.make_plan`.
        output: Where prefixed output goes. Defaults to this process's stdout and
            stderr.
        live_bars: Whose progress bars are redrawn in place on a terminal:
            ``"chief"`` (worker 0, default), ``"all"`` or ``"none"``.

    Returns:
        The exit code for the launcher, in shell convention.

    Example:
        >>> plan = make_plan("train.py", ["--epochs", "3"], workers=2)  # doctest: +SKIP
        >>> exit_code = run(plan)                                      # doctest: +SKIP
    """
    output = output or PrefixedOutput(
        sys.stdout, sys.stderr, live_bars=live_bars, drop_startup_noise=not user_sets_log_level()
    )
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    # A signal that arrives between two attempts waits in the queue for the next
    # wait(), so none is lost.
    with signals_as_events(events):
        for note in plan.notes:
            output.message(note)
        return _supervise(plan, output, events)


def _supervise(plan: LaunchPlan, output: PrefixedOutput, events: queue.SimpleQueue) -> int:
    restart = 0
    while True:
        specs = plan.worker_specs(restart_count=restart)
        group = ProcessGroup(
            specs,
            output=output,
            events=events,
            grace_period=plan.grace_period,
        )
        group.start()
        outcome = group.wait()
        if outcome.signum is not None:
            name = signal.Signals(outcome.signum).name
            output.message(f"received {name}; forwarding it to the workers and stopping them")
            group.stop(outcome.signum)
            return outcome.exit_code
        if outcome.failed is not None:
            others = "; stopping the other workers" if len(specs) > 1 else ""
            output.message(f"worker {outcome.failed} {describe_exit(outcome.returncode)}{others}")
        received = group.stop()
        if received is not None:
            return 128 + received
        if outcome.failed is None:
            return 0
        if restart >= plan.max_restarts:
            if plan.max_restarts:
                output.message(
                    f"no restarts left ({plan.max_restarts}/{plan.max_restarts} used); "
                    f"exiting with code {outcome.exit_code}"
                )
            return outcome.exit_code
        restart += 1
        output.message(
            f"restarting all workers (restart {restart}/{plan.max_restarts}) after worker "
            f"{outcome.failed} {describe_exit(outcome.returncode)}"
        )
