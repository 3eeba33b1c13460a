"""Tests for the ``kerasfed`` command line: entry points, argument handling, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kerasfed._version import __version__
from kerasfed.cli import main

# The command line imports no TensorFlow (test_commands_import_no_tensorflow): one suite runs it.
pytestmark = [pytest.mark.distributed, pytest.mark.tf_independent]

WORKER = str(Path(__file__).parent / "scripts" / "launch_worker.py")
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("kerasfed"))
TIMEOUT = 60


@pytest.fixture(autouse=True)
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("command", [[CONSOLE_SCRIPT], [sys.executable, "-m", "kerasfed"]])
def test_version(command):
    result = run([*command, "--version"])
    assert (result.returncode, result.stdout) == (0, f"kerasfed {__version__}\n")


@pytest.mark.parametrize("command", [[CONSOLE_SCRIPT], [sys.executable, "-m", "kerasfed"]])
def test_launch_entry_points(command):
    result = run([*command, "launch", "--workers", "2", WORKER, "*=exit:0"])
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["[0] attempt 0", "[1] attempt 0"]


@pytest.mark.parametrize(
    "args, expected",
    [
        # Launcher-looking options after the script belong to the script.
        (["--workers", "1", WORKER, "*=env", "--workers", "5", "-h", "--", "x"],
         ["*=env", "--workers", "5", "-h", "--", "x"]),
        (["--workers", "1", "--", WORKER, "*=env", "--rank", "3"], ["*=env", "--rank", "3"]),
        ([WORKER, "--", "*=env"], ["--", "*=env"]),
    ],
)
def test_script_arguments_pass_through_untouched(args, expected):
    result = run([sys.executable, "-m", "kerasfed", "launch", *args])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1].removeprefix("[0] "))["argv"] == expected


def test_commands_import_no_tensorflow():
    code = (
        "import sys, kerasfed.cli, kerasfed.launch, kerasfed.distributed.tf_config; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    out = run([sys.executable, "-c", code])
    assert out.stdout.strip() == "[]", out.stderr


def test_help_explains_network_exposure(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["launch", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "listens on ALL network interfaces" in text
    assert "The listed ports are reachable from the network" in text
    assert "KERASFED_RESTART_COUNT" in text


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: SCRIPT"),
        (["--workers", "2"], "the following arguments are required: SCRIPT"),
        (["--workers", "two", "{script}"], "argument --workers: invalid int value: 'two'"),
        (["--workers", "0", "{script}"], "--workers must be at least 1. Received: --workers 0."),
        (["--max-restarts", "-1", "{script}"], "--max-restarts must be 0 or more"),
        (
            ["--grace-period", "-2", "{script}"],
            "--grace-period must be a number of seconds, 0 or more",
        ),
        (["missing.py"], "The script 'missing.py' does not exist"),
        (["--rank", "1", "{script}"], "--rank 1 needs --hosts"),
        (["--hosts", "a:1,b:2", "{script}"], "--hosts needs --rank"),
        (["--hosts", "a:1,b:2", "--rank", "2", "{script}"], "--rank 2 is outside --hosts"),
        (
            ["--hosts", "a:1,b", "--rank", "0", "{script}"],
            "--hosts entry for rank 1 = 'b' is not a valid address",
        ),
        (
            ["--hosts", "a:1,a:1", "--rank", "0", "{script}"],
            "--hosts entry for rank 1 = 'a:1' duplicates --hosts entry for rank 0",
        ),
        (
            ["--workers", "2", "--hosts", "a:1,b:2", "--rank", "0", "{script}"],
            "--workers 2 conflicts with --hosts",
        ),
        (
            ["--keep-tf-config", "--hosts", "a:1", "--rank", "0", "{script}"],
            "--keep-tf-config uses the cluster in TF_CONFIG",
        ),
        (["--keep-tf-config", "{script}"], "--keep-tf-config needs TF_CONFIG in the environment"),
    ],
)
def test_argument_errors_exit_2_before_starting_anything(
    args, message, tmp_path, monkeypatch, capsys
):
    marker = tmp_path / "started"
    script = tmp_path / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["launch", *[a.format(script=script) for a in args]])
    assert exc.value.code == 2
    assert f"kerasfed launch: error: {message}" in capsys.readouterr().err
    assert not marker.exists()


def test_invalid_kept_tf_config_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(
        "TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}'
    )
    with pytest.raises(SystemExit) as exc:
        main(["launch", "--keep-tf-config", WORKER])
    assert exc.value.code == 2
    expected = 'kerasfed launch: error: --keep-tf-config: TF_CONFIG["task"]["index"] = 1 is outside'
    assert expected in capsys.readouterr().err
