"""Shared test fixtures.

Every test runs with a unique ``KERASFED_TEST_TOKEN`` in its environment. Every
process a test starts (directly, through ``kerasfed launch``, or the TFF worker)
inherits it, so after the test we can find any survivor by reading
``/proc/<pid>/environ`` -- this also catches orphans re-parented to init, which a
walk of the process tree would miss.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

_TOKEN_VAR = "KERASFED_TEST_TOKEN"


def processes_with_token(token: str) -> list[tuple[int, str]]:
    """Live (non-zombie) processes other than this one whose environment has ``token``."""
    needle = f"{_TOKEN_VAR}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            if state in (b"Z", b"X"):
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            if needle in env:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry), cmd.strip()))
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
    return found


def wait_for_no_processes(token: str, timeout: float = 10.0) -> list[tuple[int, str]]:
    """Polls until no process carries ``token``; returns the survivors at timeout.

    A process that was just sent SIGKILL may take a few milliseconds to be reaped, so
    the check polls briefly for the condition instead of judging a single snapshot.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with_token(token)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_processes_left(token: str) -> list[tuple[int, str]]:
    """Waits for the processes carrying ``token`` to end, kills the survivors, returns them."""
    left = wait_for_no_processes(token)
    for pid, _ in left:  # do not let one leak cascade into later tests
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return left


def environ_with_token() -> tuple[dict[str, str], str]:
    """A copy of os.environ with a fresh token, for processes a module-scoped fixture
    starts (the per-test token below is set after such a fixture ran)."""
    token = uuid.uuid4().hex
    return dict(os.environ, **{_TOKEN_VAR: token}), token


@pytest.fixture(autouse=True)
def no_process_left_behind(monkeypatch):
    """Fails the test if any process it started is still running afterwards."""
    token = uuid.uuid4().hex
    monkeypatch.setenv(_TOKEN_VAR, token)
    yield token
    left = kill_processes_left(token)
    assert not left, f"processes started by this test are still running: {left}"
