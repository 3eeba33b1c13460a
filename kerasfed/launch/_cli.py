"""The ``kerasfed launch`` subcommand: argument parsing and wiring."""

from __future__ import annotations

import argparse

from kerasfed.launch._plan import DEFAULT_GRACE_PERIOD_S, LaunchArgumentError, make_plan
from kerasfed.launch._runner import run

DESCRIPTION = """\
Start TensorFlow multi-worker training processes, like torchrun.

Each worker runs `python SCRIPT ARGS...` (through a small bootstrap that first
creates the multi-worker strategy, so that the script may build its model before
calling fit_distributed; --no-auto-strategy runs the script alone) with TF_CONFIG
describing the cluster and its task, plus KERASFED_RANK, KERASFED_NUM_WORKERS, KERASFED_RESTART_COUNT and
PYTHONUNBUFFERED=1; the rest of the environment is inherited and stdin is
/dev/null. Every output line is prefixed with the worker's rank, e.g. "[0] ".
Progress bars (lines redrawn with carriage returns) stay bars: worker 0's updates
in place in a terminal, the others' show their final state once (--all-bars: all
live).
Options after SCRIPT go to the script unchanged.

The launcher exits with the first failing worker's exit code (128+N for a death
by signal N) and then stops the other workers: SIGTERM to each worker's process
group, SIGKILL after --grace-period. SIGINT/SIGTERM/SIGHUP to the launcher are
forwarded the same way (exit 130/143/129). On Linux, workers also die if the
launcher is killed with SIGKILL (their own child processes then may not).

Network: each worker runs TensorFlow's gRPC server, which listens on ALL network
interfaces at its port (TensorFlow binds 0.0.0.0/[::] even when TF_CONFIG says
127.0.0.1) and accepts connections without authentication. With --workers the
ports are free ports picked at random; with --hosts they are the ports you list
and the workers talk over your network. Block these ports from untrusted
networks (firewall).
"""

USAGE = (
    "%(prog)s [-h] [--workers N | --hosts HOST:PORT,... --rank R | --keep-tf-config]\n"
    "       [--no-auto-strategy] [--all-bars] [--max-restarts K] [--grace-period SECONDS]\n"
    "       SCRIPT [ARGS ...]"
)

EPILOG = """\
examples:
  kerasfed launch --workers 2 train.py --epochs 3
  kerasfed launch --workers 2 --max-restarts 3 train.py      # with BackupAndRestore
  # two machines, one launcher on each:
  kerasfed launch --hosts 10.0.0.1:2222,10.0.0.2:2222 --rank 0 train.py   # on 10.0.0.1
  kerasfed launch --hosts 10.0.0.1:2222,10.0.0.2:2222 --rank 1 train.py   # on 10.0.0.2
  # TF_CONFIG already set (Kubernetes TFJob, Slurm wrapper):
  kerasfed launch --keep-tf-config train.py
"""


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Adds the ``launch`` subcommand to the ``kerasfed`` parser.

    Args:
        subparsers: The result of ``parser.add_subparsers()``.

    Returns:
        The subcommand's parser; its defaults set ``handler`` to :func:`main`.
    """
    parser = subparsers.add_parser(
        "launch",
        help="start TensorFlow multi-worker training processes (TF_CONFIG, output, restarts)",
        description=DESCRIPTION,
        epilog=EPILOG,
        usage=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="number of workers to start on this machine, on free ports of 127.0.0.1 "
        "picked anew for each (re)start (default: 1)",
    )
    parser.add_argument(
        "--hosts", default=None, metavar="HOST:PORT,...",
        help="addresses of all workers in rank order, for a cluster of several machines; "
        "needs --rank and starts that one worker here. The listed ports are reachable "
        "from the network (see Network above)",
    )
    parser.add_argument(
        "--rank", type=int, default=None, metavar="R",
        help="with --hosts: the index in --hosts of the worker to start here",
    )
    parser.add_argument(
        "--keep-tf-config", action="store_true",
        help="use the TF_CONFIG already in the environment unchanged (checked first) and "
        "start one worker with it",
    )
    parser.add_argument(
        "--no-auto-strategy", action="store_true",
        help="run `python SCRIPT` as it is; by default each worker first creates the "
        "multi-worker strategy (before the script's first TensorFlow op), so that a "
        "script that builds its model before calling fit_distributed works",
    )
    parser.add_argument(
        "--all-bars", action="store_true",
        help="show every worker's progress bars live; by default only worker 0's bar "
        "updates in place (in a terminal) and the others show each bar's final line",
    )
    parser.add_argument(
        "--max-restarts", type=int, default=0, metavar="K",
        help="when a worker fails, stop all workers and restart them all, at most K times "
        "(default: 0); KERASFED_RESTART_COUNT tells workers which attempt they are",
    )
    parser.add_argument(
        "--grace-period", type=float, default=DEFAULT_GRACE_PERIOD_S, metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL when stopping workers "
        f"(default: {DEFAULT_GRACE_PERIOD_S:g})",
    )
    # One REMAINDER positional rather than `script` + REMAINDER: a positional of its
    # own would swallow a "--" right after the script, and the script must get its
    # arguments untouched.
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="SCRIPT",
        help="the Python script every worker runs, then its arguments (passed unchanged)",
    )
    parser.set_defaults(handler=main, parser=parser)
    return parser


def main(args: argparse.Namespace) -> int:
    """Runs ``kerasfed launch`` with parsed arguments.

    Argument errors end the process through ``parser.error`` (exit code 2) before
    any worker starts.

    Args:
        args: The namespace from the parser built by :func:`add_parser`.

    Returns:
        The exit code.
    """
    command = list(args.command)
    if command[:1] == ["--"]:  # `kerasfed launch --workers 2 -- train.py ...`
        command = command[1:]
    if not command:
        args.parser.error("the following arguments are required: SCRIPT (the Python script to run)")
    try:
        plan = make_plan(
            command[0],
            command[1:],
            workers=args.workers,
            hosts=args.hosts,
            rank=args.rank,
            keep_tf_config=args.keep_tf_config,
            max_restarts=args.max_restarts,
            grace_period=args.grace_period,
            auto_strategy=not args.no_auto_strategy,
        )
    except LaunchArgumentError as e:
        args.parser.error(str(e))
    return run(plan, live_bars="all" if args.all_bars else "chief")

