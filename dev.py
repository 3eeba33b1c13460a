#!/usr/bin/env python3
"""The project's two commands: `python3 dev.py demo` and `python3 dev.py test`.

Each creates or updates the environment it needs from the lock file (uv.lock), so a
fresh machine with only python3 and pip needs nothing else:

  .tools/     a tiny virtualenv holding the pinned `uv` resolver/installer
  .venv/        TF 2.14.1 + TensorFlow Federated 0.87 (the default environment)
  .venv-latest/ the newest TensorFlow (2.21, Keras 3): the data-parallel half and
                the native federated engine
  .venv-peers/  TF 2.21 + Apple pfl-research + Flower, only for benchmarks
                (`python3 dev.py env peers`; never part of kerasfed's install)

`uv sync --frozen` installs exactly what uv.lock pins and is a no-op when the
environment is already in sync. The lock carries an override of TFF's jax/jaxlib
pin (see pyproject.toml [tool.uv]), which is why plain pip cannot install TFF.

Other commands: `python3 dev.py bench [--env ENV] NAME [args]` runs benchmarks/NAME.py
in environment ENV (default: default; a benchmark may start contestants in other
environments itself, e.g. federated_round), `python3 dev.py env [default|latest|peers]`
only prepares environments.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
UV_VERSION = "0.13.9"
TOOLS = ROOT / ".tools"
ENVIRONMENTS = {
    # name: (folder, extras)
    "default": (ROOT / ".venv", ["federated", "dev"]),
    "latest": (ROOT / ".venv-latest", ["latest", "dev"]),
    # Other frameworks for benchmarks/federated_round.py only (pfl-research, Flower).
    "peers": (ROOT / ".venv-peers", ["peers"]),
}


def _run(cmd: list[str], **kwargs) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], **kwargs)


def _uv() -> Path:
    uv = TOOLS / "bin" / "uv"
    if uv.exists():
        out = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout
        if UV_VERSION in out:
            return uv
    if not (TOOLS / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(TOOLS)
    code = _run([TOOLS / "bin" / "python", "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"])
    if code != 0:
        sys.exit(f"dev.py: could not install uv=={UV_VERSION} with pip (exit {code}).")
    return uv


def ensure_env(name: str) -> Path:
    """Creates or updates environment `name`; returns its python."""
    folder, extras = ENVIRONMENTS[name]
    # The interpreter running this script (3.11, the only one TFF 0.87 and the lock
    # support); uv must not try to download another.
    cmd = [_uv(), "sync", "--frozen", "--python", sys.executable, "--no-python-downloads", "--quiet"]
    for extra in extras:
        cmd += ["--extra", extra]
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(folder))
    if _run(cmd, cwd=ROOT, env=env) != 0:
        sys.exit(f"dev.py: creating the {name} environment in {folder} failed.")
    return folder / "bin" / "python"


def _quiet_env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))


def demo(args: list[str]) -> int:
    python = ensure_env("default")
    return _run([python, ROOT / "examples" / "demo.py", *args], cwd=ROOT, env=_quiet_env())


def test(args: list[str]) -> int:
    """The whole suite in the default environment and, at the same time, the
    data-parallel and native-engine tests on the newest TF.

    Side by side because part of the suites' time is spent waiting on worker
    processes (TensorFlow imports, gRPC start-up, launcher restarts): measured on 2
    cores, 18.6 min side by side against 21.4 min one after the other.
    KERASFED_TEST_SERIAL=1 runs them one after the other. Each output line is
    prefixed with its environment.
    """
    suites = [
        ("tf2.14", [ensure_env("default"), "-m", "pytest", *args]),
        ("tf2.21", [ensure_env("latest"), "-m", "pytest", "-m", "distributed or native", *args]),
    ]
    if os.environ.get("KERASFED_TEST_SERIAL"):
        codes = [_run(cmd, cwd=ROOT, env=_quiet_env()) for _, cmd in suites]
    else:
        codes = _run_side_by_side(suites)
    print(
        f"dev.py test: default environment (TF 2.14 + TFF) exit {codes[0]}; "
        f"newest TensorFlow (data-parallel and native-engine tests) exit {codes[1]}",
        flush=True,
    )
    return codes[0] or codes[1]


def _run_side_by_side(suites: list[tuple[str, list]]) -> list[int]:
    """Runs the commands at once, each line of their output prefixed; their exit codes."""
    import threading  # noqa: PLC0415

    lock = threading.Lock()
    procs = []
    for name, cmd in suites:
        print(f"+ [{name}]", " ".join(str(c) for c in cmd), flush=True)
        procs.append(subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=_quiet_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, bufsize=1))

    def relay(name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with lock:
                sys.stdout.write(f"[{name}] {line}")
                sys.stdout.flush()

    threads = [threading.Thread(target=relay, args=(name, proc))
               for (name, _), proc in zip(suites, procs)]
    for t in threads:
        t.start()
    try:
        codes = [proc.wait() for proc in procs]
    finally:  # interrupted: stop both suites (pytest ends its own children)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for t in threads:
            t.join()
    return codes


def bench(args: list[str]) -> int:
    """Runs benchmarks/NAME.py in one environment (`--env`, default "default")."""
    env_name = "default"
    if args and args[0].startswith("--env"):
        if "=" in args[0]:
            env_name, args = args[0].split("=", 1)[1], args[1:]
        elif len(args) > 1:
            env_name, args = args[1], args[2:]
        else:
            args = []
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))
    if not args or args[0] not in names or env_name not in ENVIRONMENTS:
        sys.exit(
            f"usage: python3 dev.py bench [--env ENV] NAME [args]; NAME is one of {names}, "
            f"ENV one of {sorted(ENVIRONMENTS)} (default: default)"
        )
    python = ensure_env(env_name)
    script = ROOT / "benchmarks" / f"{args[0]}.py"
    return _run([python, script, *args[1:]], cwd=ROOT, env=_quiet_env())


def main(argv: list[str]) -> int:
    if sys.version_info[:2] != (3, 11):
        sys.exit(
            f"dev.py: run me with Python 3.11 (TensorFlow Federated 0.87 supports "
            f"<3.12; the lock is for 3.11). This is Python {sys.version.split()[0]}."
        )
    commands = {"demo": demo, "test": test, "bench": bench}
    if not argv or argv[0] not in (*commands, "env"):
        print(__doc__)
        return 2
    if argv[0] == "env":
        for name in argv[1:] or ["default"]:
            ensure_env(name)
        return 0
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
