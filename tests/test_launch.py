"""Tests for ``kerasfed launch`` with real processes (tests/scripts/launch_worker.py).

The autouse fixture in conftest.py fails any test that leaves a process behind;
tests that stop the launcher abnormally also check the workers' pids explicitly.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kerasfed.distributed.tf_config import build_tf_config, read_tf_config
from kerasfed.launch._output import _Lines
from kerasfed.launch._process_group import Signalled
from kerasfed.launch._signals import signals_as_events
from kerasfed.launch import (
    LaunchArgumentError,
    PrefixedOutput,
    ProcessGroup,
    WorkerSpec,
    make_plan,
    pick_free_ports,
)

# The launcher is pure Python (its workers here import no TensorFlow): one suite runs it.
pytestmark = [pytest.mark.distributed, pytest.mark.tf_independent]

WORKER = str(Path(__file__).parent / "scripts" / "launch_worker.py")
LAUNCH = [sys.executable, "-m", "kerasfed", "launch"]
TIMEOUT = 60  # a safety net only; every test here takes well under a second or two
ONE_WORKER_ENV = {"TF_CONFIG": build_tf_config(["a:1"], 0)}


@pytest.fixture(autouse=True)
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("KERASFED_RANK", raising=False)


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=TIMEOUT)


def lines(text: str) -> list[str]:
    return text.splitlines()


def env_reports(stdout: str) -> dict[str, dict]:
    """The JSON lines printed by the ``env`` action, keyed by their prefix label."""
    found = {}
    for line in lines(stdout):
        m = re.fullmatch(r"\[(\w+)\] (\{.*\})", line)
        if m:
            found[m.group(1)] = json.loads(m.group(2))
    return found


class LineReader:
    """Reads a pipe line by line with a deadline (no blocking forever in a test)."""

    def __init__(self, pipe) -> None:
        self._fd = pipe.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._partial = b""
        self.lines: list[str] = []

    def until(self, predicate, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; lines so far: {self.lines}"
            if not self._selector.select(remaining):
                continue
            chunk = os.read(self._fd, 65536)
            assert chunk, f"pipe closed; lines so far: {self.lines}"
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self.lines += [c.decode() for c in complete]
        return self.lines

    def rest(self, timeout: float = 30.0) -> str:
        """Everything up to end of file (call once the process has exited)."""
        deadline = time.monotonic() + timeout
        data = self._partial
        while self._selector.select(max(0.0, deadline - time.monotonic())):
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return "\n".join(self.lines + [data.decode()])
            data += chunk
        raise AssertionError(f"no end of file; lines so far: {self.lines}")


def start_launcher(*args: str) -> tuple[subprocess.Popen, LineReader, LineReader]:
    # A test run under `nohup` ignores SIGHUP, and one started in the background by
    # a shell without job control ignores SIGINT; the launcher would inherit that (an
    # ignored signal stays ignored, by design): start it with the defaults.
    def defaults():
        for signum in (signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)

    proc = subprocess.Popen([*LAUNCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=defaults)
    return proc, LineReader(proc.stdout), LineReader(proc.stderr)


def ready_pids(reader: LineReader, count: int) -> list[int]:
    """Waits until ``count`` workers printed ``ready PID CHILD``; returns all those pids."""
    found = reader.until(lambda ls: sum(" ready " in line for line in ls) >= count)
    pids = []
    for line in found:
        if " ready " in line:
            pids += [int(p) for p in line.split()[2:] if p != "-"]
    return pids


def alive(pid: int, token: str) -> bool:
    """Whether ``pid`` runs and is one of ours (a reused pid would lack the token)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/environ", "rb") as f:
            ours = f"KERASFED_TEST_TOKEN={token}".encode() in f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return ours and state not in (b"Z", b"X")


def assert_gone(pids: list[int], token: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p, token) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if alive(p, token)]}"
        time.sleep(0.02)  # polling a condition with a deadline, not synchronisation


# --- output ---------------------------------------------------------------------------


def test_prefixes_every_stdout_and_stderr_line():
    result = launch("--workers", "2", WORKER, "*=stdio")
    assert result.returncode == 0, result.stderr
    for r in "01":
        for expected in ("attempt 0", "out one", "out two", "no newline at the end"):
            assert f"[{r}] {expected}" in lines(result.stdout)
        assert f"[{r}] err one" in lines(result.stderr)
    assert all(re.match(r"\[[01]\] ", line) for line in lines(result.stdout))


def test_lines_of_different_workers_never_mix():
    result = launch("--workers", "2", WORKER, "0=flood:a", "1=flood:b")
    assert result.returncode == 0, result.stderr
    out = lines(result.stdout)
    assert out.count("[0] " + "a" * 5000) == 300
    assert out.count("[1] " + "b" * 5000) == 300
    assert len(out) == 602  # and the two "attempt 0" lines


# --- environment ----------------------------------------------------------------------


def test_workers_get_tf_config_rank_and_inherited_environment(monkeypatch):
    monkeypatch.setenv("KERASFED_TEST_INHERITED", "yes")
    result = launch("--workers", "3", WORKER, "*=env", "--flag", "value")
    assert result.returncode == 0, result.stderr
    reports = env_reports(result.stdout)
    assert sorted(reports) == ["0", "1", "2"]
    clusters = []
    for label, env in reports.items():
        config = read_tf_config(env)
        assert config.rank == int(label) == int(env["KERASFED_RANK"])
        assert (env["KERASFED_NUM_WORKERS"], env["KERASFED_RESTART_COUNT"]) == ("3", "0")
        assert (env["PYTHONUNBUFFERED"], env["KERASFED_TEST_INHERITED"]) == ("1", "yes")
        assert env["argv"] == ["*=env", "--flag", "value"]
        clusters.append(config.cluster)
    assert clusters[0] == clusters[1] == clusters[2]
    addresses = clusters[0]["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)


def test_replaces_tf_config_of_the_environment_and_says_so(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", build_tf_config(["10.0.0.9:1"], 0))
    result = launch(WORKER, "*=env")
    assert result.returncode == 0, result.stderr
    assert "TF_CONFIG is set in this environment; kerasfed launch gives" in result.stderr
    config = read_tf_config(env_reports(result.stdout)["0"])
    assert config.cluster["worker"][0].startswith("127.0.0.1:")


def test_hosts_and_rank_start_that_one_worker():
    hosts = "10.0.0.1:2222,10.0.0.2:2223"
    result = launch("--hosts", hosts, "--rank", "1", WORKER, "*=env")
    assert result.returncode == 0, result.stderr
    reports = env_reports(result.stdout)
    assert list(reports) == ["1"]
    assert reports["1"]["TF_CONFIG"] == build_tf_config(hosts.split(","), 1)
    assert (reports["1"]["KERASFED_RANK"], reports["1"]["KERASFED_NUM_WORKERS"]) == ("1", "2")


def test_keep_tf_config_keeps_it(monkeypatch):
    text = json.dumps(
        {"cluster": {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]},
         "task": {"type": "worker", "index": 1}, "environment": "cloud"}
    )
    monkeypatch.setenv("TF_CONFIG", text)
    result = launch("--keep-tf-config", WORKER, "*=env")
    assert result.returncode == 0, result.stderr
    reports = env_reports(result.stdout)
    assert list(reports) == ["2"]  # chief is rank 0, so worker 1 is rank 2
    assert reports["2"]["TF_CONFIG"] == text
    assert (reports["2"]["KERASFED_RANK"], reports["2"]["KERASFED_NUM_WORKERS"]) == ("2", "3")
    assert "TF_CONFIG is set" not in result.stderr


def test_keep_tf_config_for_a_task_without_rank(monkeypatch):
    monkeypatch.setenv("KERASFED_RANK", "5")  # stale, e.g. from an outer launcher
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {"cluster": {"worker": ["h1:1"], "ps": ["h2:1"]}, "task": {"type": "ps", "index": 0}}
        ),
    )
    result = launch("--keep-tf-config", WORKER, "*=env")
    assert result.returncode == 0, result.stderr
    report = env_reports(result.stdout)["ps0"]
    assert (report["KERASFED_RANK"], report["KERASFED_NUM_WORKERS"]) == (None, "1")


# --- failures ---------------------------------------------------------------------


def test_first_failure_stops_a_peer_that_would_run_forever():
    start = time.monotonic()
    result = launch("--workers", "2", WORKER, "0=block", "1=exit:3")
    elapsed = time.monotonic() - start
    assert result.returncode == 3, result.stderr
    assert "worker 1 exited with code 3; stopping the other workers" in result.stderr
    assert elapsed < 10  # worker 0 would wait forever; SIGTERM ends it at once


@pytest.mark.parametrize(
    "action, code, message",
    [("exit:7", 7, "worker 0 exited with code 7"),
     ("signal:10", 138, "worker 0 was killed by SIGUSR1 (exit code 138)")],
)
def test_exit_code_of_the_failing_worker(action, code, message):
    result = launch(WORKER, f"*={action}")
    assert result.returncode == code
    assert message in result.stderr


def test_children_left_by_a_successful_worker_are_killed(no_process_left_behind):
    # Each child ignores SIGTERM/SIGINT and holds the launcher's stderr pipe open.
    start = time.monotonic()
    result = launch("--workers", "2", WORKER, "*=exit-leave-child")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 10
    children = [int(line.split()[3]) for line in lines(result.stdout) if " ready " in line]
    assert len(children) == 2
    assert_gone(children, no_process_left_behind)


# --- signals to the launcher ------------------------------------------------------


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_launcher_signal_stops_workers_and_their_children(signum, code, no_process_left_behind):
    proc, out, err = start_launcher("--workers", "2", WORKER, "*=block-with-child")
    pids = ready_pids(out, 2)
    assert len(pids) == 4  # two workers, each with a child
    start = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=TIMEOUT) == code
    assert time.monotonic() - start < 10
    assert f"received {signum.name}; forwarding it" in err.rest()
    assert_gone(pids, no_process_left_behind)


def test_worker_ignoring_sigterm_is_killed_after_grace_period(no_process_left_behind):
    proc, out, err = start_launcher("--grace-period", "0.5", WORKER, "*=block-ignore-term")
    pids = ready_pids(out, 1)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 143
    assert 0.5 <= time.monotonic() - start < 10
    assert_gone(pids, no_process_left_behind)


def test_second_signal_kills_at_once(no_process_left_behind):
    proc, out, err = start_launcher("--grace-period", "600", WORKER, "*=block-ignore-term")
    pids = ready_pids(out, 1)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    err.until(lambda ls: any("received SIGTERM" in line for line in ls))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=TIMEOUT) == 143  # the first signal decides the exit code
    assert time.monotonic() - start < 10  # not the 600 s grace period
    assert "received SIGINT while stopping; killing workers" in err.rest()
    assert_gone(pids, no_process_left_behind)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_workers_die_with_a_sigkilled_launcher(no_process_left_behind):
    proc, out, _ = start_launcher("--workers", "2", WORKER, "*=block")
    pids = ready_pids(out, 2)
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    assert_gone(pids, no_process_left_behind)


# --- restarts -------------------------------------------------------------------------


def test_restart_after_failure_then_success():
    result = launch("--workers", "2", "--max-restarts", "2", WORKER, "1=fail-before-restart:1:4")
    assert result.returncode == 0, result.stderr
    assert "[1] attempt 0" in lines(result.stdout) and "[1] attempt 1" in lines(result.stdout)
    assert "attempt 2" not in result.stdout
    assert (
        "kerasfed launch: restarting all workers (restart 1/2) after worker 1 exited with code 4"
        in lines(result.stderr)
    )


def test_restarts_exhausted_returns_the_failure_code():
    result = launch("--max-restarts", "2", WORKER, "*=exit:5")
    assert result.returncode == 5
    assert lines(result.stdout) == ["[0] attempt 0", "[0] attempt 1", "[0] attempt 2"]
    assert "(restart 2/2) after worker 0 exited with code 5" in result.stderr
    assert "no restarts left (2/2 used); exiting with code 5" in result.stderr


# --- the pieces, used directly ----------------------------------------------------


def test_process_group_reports_the_failure(no_process_left_behind):
    import queue

    out = io.BytesIO()
    env = dict(os.environ)
    specs = [
        WorkerSpec("a", (sys.executable, "-c", "print('hi')"), env),
        WorkerSpec("b", (sys.executable, "-c", "import sys; sys.exit(9)"), env),
    ]
    group = ProcessGroup(
        specs, output=PrefixedOutput(out, out), events=queue.SimpleQueue(), grace_period=1
    )
    group.start()
    outcome = group.wait()
    assert group.stop() is None
    assert (outcome.failed, outcome.exit_code, outcome.returncode) == ("b", 9, 9)
    assert_gone(group.pids, no_process_left_behind)


def test_pick_free_ports_are_distinct():
    ports = pick_free_ports(8)
    assert len(set(ports)) == 8 and all(1 <= p <= 65535 for p in ports)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(workers=0), r"--workers must be at least 1\. Received: --workers 0"),
        (dict(max_restarts=-1), r"--max-restarts must be 0 or more\. Received: --max-restarts -1"),
        (
            dict(grace_period=-1.0),
            r"--grace-period must be a number of seconds, 0 or more\. Received: --grace-period -1",
        ),
        (dict(grace_period=float("nan")), r"Received: --grace-period nan"),
        (dict(rank=1), r"--rank 1 needs --hosts"),
        (dict(hosts="a:1,b:2"), r"--hosts needs --rank: .*\(0\.\.1\).*--rank 0 on a:1"),
        (
            dict(hosts="a:1,b:2", rank=2),
            r"--rank 2 is outside --hosts, which lists 2 workers \(valid ranks 0\.\.1\)",
        ),
        (dict(hosts="a:1,b:2", rank=-1), r"--rank -1 is outside --hosts"),
        (
            dict(hosts="a:1,b", rank=0),
            r"--hosts entry for rank 1 = 'b' is not a valid address.*Received: --hosts a:1,b",
        ),
        (
            dict(hosts="a:1,b:99999", rank=0),
            r"--hosts entry for rank 1 = 'b:99999' .*port '99999' is not a number from 1 to 65535",
        ),
        (dict(hosts="a:1,,b:2", rank=0), r"--hosts entry for rank 1 = '' is not a valid address"),
        (
            dict(hosts="a:1,a:1", rank=0),
            r"--hosts entry for rank 1 = 'a:1' duplicates --hosts entry for rank 0",
        ),
        (
            dict(hosts="a:1,b:2", rank=0, workers=2),
            r"--workers 2 conflicts with --hosts with --rank 0",
        ),
        (
            dict(keep_tf_config=True, hosts="a:1", rank=0),
            r"--keep-tf-config uses the cluster in TF_CONFIG, so --hosts and --rank",
        ),
        (dict(keep_tf_config=True, rank=0), r"--keep-tf-config uses the cluster in TF_CONFIG"),
        (
            dict(keep_tf_config=True, workers=2, environ=ONE_WORKER_ENV),
            r"--workers 2 conflicts with --keep-tf-config",
        ),
        (
            dict(keep_tf_config=True, environ={}),
            r"--keep-tf-config needs TF_CONFIG in the environment, but it is unset",
        ),
        (
            dict(keep_tf_config=True, environ={"TF_CONFIG": '{"cluster": '}),
            r"--keep-tf-config: TF_CONFIG is not valid JSON",
        ),
        (
            dict(keep_tf_config=True, environ={"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}}'}),
            r'--keep-tf-config: TF_CONFIG has no "task" key',
        ),
    ],
)
def test_make_plan_errors(kwargs, match):
    with pytest.raises(LaunchArgumentError, match=match):
        make_plan(WORKER, **kwargs)


@pytest.mark.parametrize(
    "script, match",
    [
        ("missing.py", r"The script 'missing.py' does not exist \(looked at .*missing.py\)"),
        (".", r"The script '.' is a directory without __main__.py"),
    ],
)
def test_make_plan_script_errors(script, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LaunchArgumentError, match=match):
        make_plan(script)


def test_make_plan_accepts_a_directory_with_main(tmp_path):
    (tmp_path / "__main__.py").write_text("")
    assert make_plan(str(tmp_path)).command[-1] == str(tmp_path)


def test_workers_run_through_the_bootstrap_unless_told_not_to(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("")
    assert make_plan(str(script), ["--x"]).command[1:] == (
        "-m", "kerasfed.launch.bootstrap", str(script), "--x")
    assert make_plan(str(script), ["--x"], auto_strategy=False).command[1:] == (str(script), "--x")


def test_bootstrap_runs_the_script_as_python_would(tmp_path):
    # No TF_CONFIG of several workers: nothing is created, TensorFlow is not imported.
    (tmp_path / "helper.py").write_text("VALUE = 7\n")
    (tmp_path / "main.py").write_text(
        "import sys, helper\n"
        "print(__name__, sys.argv[1:], helper.VALUE, 'tensorflow' in sys.modules)\n"
        "sys.exit(int(sys.argv[1]))\n")
    for code in (0, 3):
        run = subprocess.run([sys.executable, "-m", "kerasfed.launch.bootstrap",
                              str(tmp_path / "main.py"), str(code), "b"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == code, run.stderr
        assert run.stdout == f"__main__ ['{code}', 'b'] 7 False\n"


def _pumped(chunks, *, terminal, label="0", live_bars="chief"):
    class Sink(io.BytesIO):
        def isatty(self):
            return terminal

    out = Sink()
    output = PrefixedOutput(out, Sink(), live_bars=live_bars)
    lines = _Lines(output, "stdout", f"[{label}] ".encode(), output.is_live("stdout", label))
    for chunk in chunks:
        lines.feed(chunk)
    lines.close()
    return out.getvalue()


BAR = [b"Epoch 1/1\n", b"1/3 [=>..]", b"\b\b\b\b\b\b\b\b\b\b\r2/3 [==>.]",
       b"\b\b\b\b\b\b\b\b\b\b\r3/3 [====] - 1s\n", b"done"]


def test_progress_bars_without_a_terminal_show_their_final_line_once():
    assert _pumped(BAR, terminal=False) == b"[0] Epoch 1/1\n[0] 3/3 [====] - 1s\n[0] done\n"


def test_the_chiefs_bar_updates_in_place_on_a_terminal_and_the_others_do_not():
    live = _pumped(BAR, terminal=True, label="0")
    assert b"\r[0] 2/3 [==>.]\x1b[K" in live and live.endswith(b"[0] done\n")
    assert b"\b" not in live
    assert _pumped(BAR, terminal=True, label="1") == (
        b"[1] Epoch 1/1\n[1] 3/3 [====] - 1s\n[1] done\n")
    assert b"\r[1] 2/3" in _pumped(BAR, terminal=True, label="1", live_bars="all")


def test_a_line_from_another_worker_is_printed_above_an_open_bar():
    class Sink(io.BytesIO):
        def isatty(self):
            return True

    out = Sink()
    output = PrefixedOutput(out, Sink())
    chief = _Lines(output, "stdout", b"[0] ", True)
    other = _Lines(output, "stdout", b"[1] ", False)
    chief.feed(b"1/3 [=>..]\r2/3 [==>.]")
    other.feed(b"hello\n")
    assert out.getvalue().endswith(b"\r\x1b[K[1] hello\n[0] 2/3 [==>.]")


def test_ignored_sighup_stays_ignored_for_launcher_and_workers():
    # What `nohup kerasfed launch ...` relies on.
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
         "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
         "-m", "kerasfed", "launch", WORKER, "*=block-report-sighup"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out = LineReader(proc.stdout)
    ready_pids(out, 1)
    assert "[0] sighup ignored" in out.lines
    # Were SIGHUP handled, it would be queued before SIGTERM (sent first, lower number).
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 143
    assert "received SIGTERM" in LineReader(proc.stderr).rest()


def test_a_signal_handled_by_another_thread_still_wakes_the_waiting_launcher():
    """The launcher's wait must not depend on which thread the kernel picks.

    The main thread blocks the signal, so the kernel delivers it to another thread;
    a Python-level handler would then only run once the main thread's wait ended on
    its own (the lost wake-up behind a CI failure). Through the wakeup fd the event
    is in the queue at once.
    """
    events = queue.SimpleQueue()
    idle = threading.Event()
    bystander = threading.Thread(target=idle.wait)  # created unblocked: can take the signal
    bystander.start()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        with signals_as_events(events, [signal.SIGUSR1]):
            os.kill(os.getpid(), signal.SIGUSR1)
            assert events.get(timeout=TIMEOUT) == Signalled(signal.SIGUSR1)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        idle.set()
        bystander.join()


def test_signals_as_events_restores_handlers_and_keeps_ignored_signals_ignored():
    events = queue.SimpleQueue()
    before_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    before_usr2 = signal.getsignal(signal.SIGUSR2)
    before_fd = signal.set_wakeup_fd(-1)
    try:
        with signals_as_events(events, [signal.SIGUSR1, signal.SIGUSR2]):
            assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
            assert callable(signal.getsignal(signal.SIGUSR2))
            os.kill(os.getpid(), signal.SIGUSR1)  # ignored: no event
            os.kill(os.getpid(), signal.SIGUSR2)
            assert events.get(timeout=TIMEOUT) == Signalled(signal.SIGUSR2)
        assert events.empty()
        assert signal.getsignal(signal.SIGUSR2) == before_usr2
        assert signal.set_wakeup_fd(-1) == -1  # the previous (none) was put back
    finally:
        signal.signal(signal.SIGUSR1, before_usr1)
        signal.set_wakeup_fd(before_fd)


def test_signals_as_events_outside_the_main_thread_is_refused_and_leaves_nothing():
    errors = []

    def enter():
        try:
            with signals_as_events(queue.SimpleQueue()):
                pass
        except ValueError as e:
            errors.append(e)

    wakeup_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_before)
    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert errors and "main thread" in str(errors[0])
    assert not [t for t in threading.enumerate() if t.name == "launcher-signals"]
    assert signal.set_wakeup_fd(wakeup_before) == wakeup_before  # left as it was
