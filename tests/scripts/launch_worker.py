"""A worker for the launcher tests: does what its arguments say for its rank.

Usage: ``launch_worker.py RANK=ACTION ...`` (arguments without "=" are ignored),
where RANK is a number or ``*`` (any worker, including ps/evaluator tasks without
a rank) and ACTION is one of:

* ``exit:C`` -- exit with code C (the default action is ``exit:0``)
* ``signal:N`` -- kill itself with signal N
* ``env`` -- print TF_CONFIG and the KERASFED_* variables as one JSON line
* ``stdio`` -- write lines to stdout and stderr, and a last line without newline
* ``flood:CHAR`` -- write 300 lines of 5000 CHARs in quick succession
* ``block`` -- print ``ready PID -`` and wait for a signal
* ``block-report-sighup`` -- print ``sighup ignored`` or ``sighup handled``, then block
* ``block-ignore-term`` -- ignore SIGTERM, print ``ready PID -``, wait for a signal
* ``block-with-child`` -- start a child that waits for a signal, print
  ``ready PID CHILD_PID``, wait for a signal
* ``exit-leave-child`` -- start a child that ignores SIGTERM/SIGINT and waits,
  print ``ready PID CHILD_PID``, exit 0 (leaving the child in its process group)
* ``fail-before-restart:R:C`` -- exit with code C while KERASFED_RESTART_COUNT < R

Every worker first prints ``attempt N`` (N = KERASFED_RESTART_COUNT).
"""

import json
import os
import signal
import subprocess
import sys

_WAIT_FOREVER = "import signal; print('child ready', flush=True); signal.pause()"
_WAIT_IGNORING = (
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "signal.signal(signal.SIGINT, signal.SIG_IGN); print('child ready', flush=True); signal.pause()"
)


def main() -> int:
    rank = os.environ.get("KERASFED_RANK", "*")
    actions = dict(arg.split("=", 1) for arg in sys.argv[1:] if "=" in arg)
    action = actions.get(rank, actions.get("*", "exit:0"))
    name, _, param = action.partition(":")
    print(f"attempt {os.environ.get('KERASFED_RESTART_COUNT')}")
    if name == "exit":
        return int(param)
    if name == "signal":
        os.kill(os.getpid(), int(param))
        signal.pause()
    if name == "env":
        keys = ["TF_CONFIG", "KERASFED_RANK", "KERASFED_NUM_WORKERS", "KERASFED_RESTART_COUNT",
                "PYTHONUNBUFFERED", "KERASFED_TEST_INHERITED"]
        print(json.dumps({k: os.environ.get(k) for k in keys} | {"argv": sys.argv[1:]}))
        return 0
    if name == "stdio":
        print("out one\nout two")
        print("err one", file=sys.stderr)
        sys.stdout.write("no newline at the end")
        return 0
    if name == "flood":
        for _ in range(300):
            print(param * 5000)
        return 0
    if name == "fail-before-restart":
        needed, code = (int(p) for p in param.split(":"))
        return code if int(os.environ["KERASFED_RESTART_COUNT"]) < needed else 0
    if name == "block-report-sighup":
        ignored = signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        print("sighup", "ignored" if ignored else "handled")
    if name == "block-ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = "-"
    if name in ("block-with-child", "exit-leave-child"):
        code = _WAIT_FOREVER if name == "block-with-child" else _WAIT_IGNORING
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        proc.stdout.readline()  # wait until the child runs (and, if so, ignores signals)
        child = proc.pid
    print(f"ready {os.getpid()} {child}")
    if name == "exit-leave-child":
        return 0
    signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
