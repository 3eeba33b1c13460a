#!/usr/bin/env python3
"""The project's commands: `python3 dev.py demo` and `python3 dev.py test`.

Each creates or updates the environment it needs from the lock file (uv.lock), so a
fresh machine with only python3 and pip needs nothing else:

  .tools/     a tiny virtualenv holding the pinned `uv` resolver/installer
  .venv/        TF 2.14.1 + TensorFlow Federated 0.87 (the default environment;
                extras tff, plots, dev)
  .venv-latest/ the newest TensorFlow (2.21, Keras 3): the data-parallel half and
                the native federated engine (extras tensorflow, dev)
  .venv-docs/   MkDocs for the documentation site (extra docs; no TensorFlow)
  .venv-peers/  TF 2.21 + Apple pfl-research + Flower, only for benchmarks
                (`python3 dev.py env peers`; never part of kerasfed's install)

`uv sync --frozen` installs exactly what uv.lock pins and is a no-op when the
environment is already in sync. The lock carries an override of TFF's jax/jaxlib
pin (see pyproject.toml [tool.uv]), which is why plain pip cannot install TFF.

`python3 dev.py test` (what CI runs) also checks the package as users get it, beside
the test suites once the first of them ends: it builds the documentation (`mkdocs
build --strict`), builds the wheel and sdist, installs the wheel into clean
environments (Python 3.13 + TensorFlow 2.21; Python 3.12 + TensorFlow 2.16 installed
first, kerasfed beside it) and runs tests/smoke/ there from a temporary directory.
`python3 dev.py smoke` and `python3 dev.py docs` run those steps alone. Interpreters
come from pyenv, the PATH, or uv (which downloads one where it can);
KERASFED_PYTHON_3_12=/path/to/python (and _3_13) names one.

Other commands: `python3 dev.py bench [--env ENV] NAME [args]` runs benchmarks/NAME.py
in environment ENV (default: default; a benchmark may start contestants in other
environments itself, e.g. federated_round), `python3 dev.py env [default|latest|docs|peers]`
only prepares environments.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
UV_VERSION = "0.13.9"
TOOLS = ROOT / ".tools"
ENVIRONMENTS = {
    # name: (folder, extras, dependency groups); the groups (pyproject.toml) hold what
    # keeps the environment's versions apart from the other's in the one lock.
    "default": (ROOT / ".venv", ["tff", "plots", "dev"], ["env-tff"]),
    "latest": (ROOT / ".venv-latest", ["tensorflow", "dev"], ["env-latest"]),
    "docs": (ROOT / ".venv-docs", ["docs"], []),
    # Other frameworks for benchmarks/federated_round.py only (pfl-research, Flower).
    "peers": (ROOT / ".venv-peers", ["peers"], []),
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
    folder, extras, groups = ENVIRONMENTS[name]
    # The interpreter running this script (3.11, the only one TFF 0.87 and the lock
    # support); uv must not try to download another.
    cmd = [_uv(), "sync", "--frozen", "--python", sys.executable, "--no-python-downloads", "--quiet"]
    for extra in extras:
        cmd += ["--extra", extra]
    for group in groups:
        cmd += ["--group", group]
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(folder))
    if _run(cmd, cwd=ROOT, env=env) != 0:
        sys.exit(f"dev.py: creating the {name} environment in {folder} failed.")
    return folder / "bin" / "python"


def _quiet_env() -> dict[str, str]:
    """os.environ with TensorFlow's C++ log at warnings, and Python's bytecode caches on.

    PYTHONDONTWRITEBYTECODE=1 (a common default of container images) leaves the
    environments without .pyc files, as `uv sync` installs none: then every Python
    process compiles TensorFlow's sources again on import. Measured on this 2-core
    machine, without the caches and with them: `import kerasfed, tensorflow` 15.6 s
    and 5.7 s (TF 2.14), 21.4 s and 6.9 s (TF 2.21); tests/test_install.py 40 s and
    20 s (TF 2.14), 54 s and 27 s (TF 2.21). The first process of a run writes the
    caches (into the environments, and __pycache__/ of the checkout, which git
    ignores; wheels never contain them); the tests start dozens of processes that
    import TensorFlow (launched workers, notebook kernels, examples).
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def demo(args: list[str]) -> int:
    python = ensure_env("default")
    return _run([python, ROOT / "examples" / "demo.py", *args], cwd=ROOT, env=_quiet_env())


# Which tests each suite runs (pytest -m). The default environment runs everything
# except the tests marked `tf_independent`: pure Python whose outcome no TensorFlow
# version changes (the launcher, the command line, TF_CONFIG, argument checks before
# any training, output formatting), and those marked `newest_tf_only`: slow tests
# (killed processes, restarts) of kerasfed's own process and checkpoint logic, which
# trains with TensorFlow but takes no path that differs between TF versions (the
# equality tests of the same features run in both suites). Those run once, in the
# newest-TF suite, which has less to do.
DEFAULT_SUITE = "not tf_independent and not newest_tf_only"
LATEST_SUITE = "distributed or native or install or tf_independent or newest_tf_only"
# The default suite is the longest (35 min of 61 in CI run 7), so it runs as two
# pytest processes of about equal length: the TFF tests (`federated`) and the rest.
# Together they select exactly DEFAULT_SUITE.
DEFAULT_SUITE_PARTS = {
    "tf2.14-tff": f"({DEFAULT_SUITE}) and federated",
    "tf2.14": f"({DEFAULT_SUITE}) and not federated",
}
# Jobs running at once. Three test processes on two cores share them and end at about
# the same time whichever is longest (with two, the longest suite alone set CI's time
# while the other core idled); the packaging checks take the first slot that frees.
SLOTS = 3
PYTEST_NO_TESTS_SELECTED = 5  # pytest's exit code when -m leaves nothing to run


def test(args: list[str]) -> int:
    """The suite in the default environment (DEFAULT_SUITE, in two parts) and, at the
    same time, the data-parallel, native-engine and TF-independent tests on the newest
    TF (LATEST_SUITE); without pytest arguments (CI's form), also the packaging checks:
    docs, wheel, smoke environments.

    Side by side because part of the suites' time is spent waiting on worker
    processes (TensorFlow imports, gRPC start-up, launcher restarts): measured on 2
    cores, 18.6 min side by side against 21.4 min one after the other. SLOTS jobs run
    at a time; the packaging checks start when the first test job ends (after all of
    them, they kept a core idle for ~2 min). KERASFED_TEST_SERIAL=1 runs everything
    one after the other. Each output line is prefixed with its job's name.
    KERASFED_SKIP_PACKAGING=1 leaves the packaging out.
    """
    default, latest = ensure_env("default"), ensure_env("latest")
    # --durations: the slowest tests in every run's output, where CI time goes.
    suites = [(name, [default, "-m", "pytest", "--durations=40", "-m", marks, *args])
              for name, marks in DEFAULT_SUITE_PARTS.items()]
    suites.append(("tf2.21", [latest, "-m", "pytest", "--durations=40", "-m", LATEST_SUITE,
                              *args]))
    jobs = list(suites)
    packaging = not args and not os.environ.get("KERASFED_SKIP_PACKAGING")
    if packaging:
        # In order, in whichever slot frees first; each a `dev.py` command of its own.
        jobs += [(name, [sys.executable, Path(__file__).resolve(), name])
                 for name in ("docs", "smoke")]
    if os.environ.get("KERASFED_TEST_SERIAL"):
        codes = [_run(cmd, cwd=ROOT, env=_quiet_env()) for _, cmd in jobs]
    else:
        codes = _run_side_by_side(jobs, slots=SLOTS)
    tests = codes[:len(suites)]
    if args and any(code != PYTEST_NO_TESTS_SELECTED for code in tests):
        # `dev.py test tests/test_launch.py`: a file may have no test for one suite.
        tests = [0 if code == PYTEST_NO_TESTS_SELECTED else code for code in tests]
    default_code = next((code for code in tests[:-1] if code), 0)
    summary = [
        f"default environment (TF 2.14 + TFF) exit {default_code}",
        f"newest TensorFlow (data-parallel, native-engine, install and TF-independent tests) "
        f"exit {tests[-1]}",
    ]
    codes = [*tests, *codes[len(suites):]]
    if packaging:
        summary += [f"docs build exit {codes[-2]}", f"wheel smoke environments exit {codes[-1]}"]
    print(f"dev.py test: {'; '.join(summary)}", flush=True)
    return next((code for code in codes if code), 0)


def docs(args: list[str]) -> int:
    """Builds the documentation site with warnings as errors (`mkdocs build --strict`)."""
    if not (ROOT / "mkdocs.yml").exists():
        print("dev.py docs: SKIPPED, there is no mkdocs.yml in the checkout (nothing to build).",
              flush=True)
        return 0
    python = ensure_env("docs")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kerasfed-site-") as site:
        # NO_MKDOCS_2_WARNING: mkdocs-material's end-of-life banner, not about our pages.
        code = _run([python, "-m", "mkdocs", "build", "--strict", "--site-dir", site, *args],
                    cwd=ROOT, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    print(f"dev.py docs: mkdocs build --strict exit {code} in {time.monotonic() - started:.0f} s",
          flush=True)
    return code


# -- The installed wheel in clean environments ------------------------------------------

PYTEST_FOR_SMOKE = "pytest>=8.3,<9"


@dataclasses.dataclass(frozen=True)
class SmokeEnv:
    """A clean environment the built wheel is installed into, and how.

    ``installs`` are `uv pip install` steps in order; ``{kerasfed}`` stands for the
    wheel with the `tensorflow` extra. ``kept`` lists packages whose installed versions
    the step that adds kerasfed must leave as they were (a user's own TensorFlow).
    """

    name: str
    python: str
    installs: tuple[tuple[str, ...], ...]
    kept: tuple[str, ...] = ()


SMOKE_ENVS = (
    # A new user on the newest Python: kerasfed with its extra, TF 2.21 (Keras 3).
    SmokeEnv("py3.13-tf2.21", "3.13",
             (("{kerasfed}", "tensorflow==2.21.*", PYTEST_FOR_SMOKE),)),
    # A user who already has the oldest Keras 3 TensorFlow (numpy < 2) adds kerasfed:
    # TensorFlow and numpy must stay. (uv keeps them; pip, given the extra, resolves the
    # newest scipy's numpy 2 by upgrading TensorFlow: docs/install.md says what to run.)
    SmokeEnv("py3.12-tf2.16", "3.12",
             (("tensorflow==2.16.*", PYTEST_FOR_SMOKE), ("{kerasfed}",)),
             kept=("tensorflow", "numpy")),
)


def _works(python: str | Path) -> bool:
    try:
        return subprocess.run([str(python), "-c", "import sys"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_python(version: str) -> Path:
    """An interpreter for Python `version`: pyenv, the PATH, uv's own, or uv's download."""
    named = os.environ.get(f"KERASFED_PYTHON_{version.replace('.', '_')}")
    if named:
        if _works(named):
            return Path(named)
        sys.exit(f"dev.py: KERASFED_PYTHON_{version.replace('.', '_')}={named} does not run.")
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"),
                        reverse=True)
    candidates.append(shutil.which(f"python{version}") or "")  # pyenv shims may not run
    for candidate in filter(None, candidates):
        if _works(candidate):
            return Path(candidate)
    uv = _uv()
    for cmd in ([uv, "python", "find", "--no-python-downloads", version],
                [uv, "python", "install", version]):  # a download, where the network allows
        found = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if found.returncode == 0 and cmd[2] == "install":
            found = subprocess.run([str(uv), "python", "find", "--no-python-downloads", version],
                                   capture_output=True, text=True)
        if found.returncode == 0 and _works(found.stdout.strip()):
            return Path(found.stdout.strip())
    sys.exit(
        f"dev.py: the smoke tests need Python {version} and none was found: not in pyenv "
        f"({pyenv_root}/versions/{version}.*), not python{version} on the PATH, and "
        f"`uv python install {version}` failed (no network?). Install Python {version} "
        f"(pyenv install {version}, or uv python install {version}) or set "
        f"KERASFED_PYTHON_{version.replace('.', '_')}=/path/to/python{version}."
    )


def _installed_versions(python: Path, packages: tuple[str, ...]) -> dict[str, str]:
    code = ("import importlib.metadata as m, sys; "
            "print(' '.join(m.version(p) for p in sys.argv[1:]))")
    out = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True,
                         check=True).stdout.split()
    return dict(zip(packages, out))


def build_dist(out_dir: Path) -> Path:
    """Builds the sdist, and the wheel from it; returns the wheel."""
    if _run([_uv(), "build", "--quiet", "--out-dir", out_dir, ROOT], cwd=out_dir) != 0:
        sys.exit("dev.py: building the sdist and wheel failed.")
    wheels = sorted(out_dir.glob("kerasfed-*.whl"))
    sdists = sorted(out_dir.glob("kerasfed-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        sys.exit(f"dev.py: expected one wheel and one sdist in {out_dir}, found "
                 f"{[p.name for p in out_dir.iterdir()]}.")
    print(f"dev.py smoke: built {sdists[0].name} and {wheels[0].name}", flush=True)
    return wheels[0]


def run_smoke_env(spec: SmokeEnv, wheel: Path, work: Path) -> tuple[int, dict[str, float]]:
    """Creates `spec`'s environment under `work`, installs, runs tests/smoke/ there."""
    uv, times = _uv(), {}
    # Nothing of the checkout or of a caller's environment may leak in.
    env = {k: v for k, v in _quiet_env().items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")}
    started = time.monotonic()
    interpreter = find_python(spec.python)
    folder = work / spec.name
    if _run([uv, "venv", "--quiet", "--no-project", "--python", interpreter, folder],
            cwd=work, env=env) != 0:
        return 1, times
    python = folder / "bin" / "python"
    kerasfed = f"kerasfed[tensorflow] @ {wheel.as_uri()}"
    for step in spec.installs:
        before = _installed_versions(python, spec.kept) if "{kerasfed}" in step and spec.kept else {}
        packages = [kerasfed if p == "{kerasfed}" else p for p in step]
        if _run([uv, "pip", "install", "--quiet", "--python", python, *packages],
                cwd=work, env=env) != 0:
            return 1, times
        if before and _installed_versions(python, spec.kept) != before:
            print(f"dev.py smoke: [{spec.name}] installing kerasfed changed {before} to "
                  f"{_installed_versions(python, spec.kept)}", flush=True)
            return 1, times
    times["install"] = time.monotonic() - started
    versions = _installed_versions(python, ("tensorflow", "keras", "numpy", "dp-accounting"))
    print(f"dev.py smoke: [{spec.name}] Python {spec.python}, "
          + ", ".join(f"{name} {version}" for name, version in versions.items()), flush=True)
    tests = work / f"tests-{spec.name}"  # a copy: no checkout path near the tests
    shutil.copytree(ROOT / "tests" / "smoke", tests)
    started = time.monotonic()
    code = _run([python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", tests],
                cwd=tests, env=env)
    times["tests"] = time.monotonic() - started
    return code, times


def smoke(args: list[str]) -> int:
    """Builds the wheel and sdist, and runs tests/smoke/ in each of SMOKE_ENVS."""
    names = args or [spec.name for spec in SMOKE_ENVS]
    unknown = set(names) - {spec.name for spec in SMOKE_ENVS}
    if unknown:
        sys.exit(f"usage: python3 dev.py smoke [ENV ...]; ENV is one of "
                 f"{[spec.name for spec in SMOKE_ENVS]}; unknown: {sorted(unknown)}")
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="kerasfed-smoke-") as tmp:
        work = Path(tmp)
        (work / "dist").mkdir()
        wheel = build_dist(work / "dist")
        build_s = time.monotonic() - started
        for spec in SMOKE_ENVS:
            if spec.name in names:
                code, times = run_smoke_env(spec, wheel, work)
                results.append((spec.name, code, times))
                shutil.rmtree(work / spec.name, ignore_errors=True)  # disk: ~2 GB each
    for name, code, times in results:
        spent = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in times.items())
        print(f"dev.py smoke: [{name}] exit {code} ({spent})", flush=True)
    print(f"dev.py smoke: build {build_s:.0f} s, total {time.monotonic() - started:.0f} s",
          flush=True)
    return next((code for _, code, _ in results if code), 0)


def _run_side_by_side(jobs: list[tuple[str, list]], slots: int) -> list[int]:
    """Runs the commands, `slots` at a time in the given order (the next one starts when
    one ends), each line of their output prefixed with the job's name, and the time
    each took printed when it ends; returns their exit codes, in order."""
    import threading  # noqa: PLC0415

    lock = threading.Lock()
    codes: list[int | None] = [None] * len(jobs)
    free = threading.Semaphore(slots)
    running: list[subprocess.Popen] = []
    threads = []

    def say(text: str) -> None:
        with lock:
            sys.stdout.write(text)
            sys.stdout.flush()

    def relay(index: int, proc: subprocess.Popen, started: float) -> None:
        name = jobs[index][0]
        try:
            for line in proc.stdout:
                say(f"[{name}] {line}")
            codes[index] = proc.wait()
            minutes, seconds = divmod(round(time.monotonic() - started), 60)
            say(f"dev.py test: [{name}] exit {codes[index]} after {minutes}:{seconds:02d}\n")
        finally:
            free.release()

    try:
        for index, (name, cmd) in enumerate(jobs):
            free.acquire()
            say(f"+ [{name}] {' '.join(str(c) for c in cmd)}\n")
            proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=_quiet_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            running.append(proc)
            thread = threading.Thread(target=relay, args=(index, proc, time.monotonic()))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
    finally:  # interrupted: stop every job (pytest ends its own children)
        for proc in running:
            if proc.poll() is None:
                proc.terminate()
        for thread in threads:
            thread.join()
    return [code if code is not None else 1 for code in codes]


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
    commands = {"demo": demo, "test": test, "bench": bench, "smoke": smoke, "docs": docs}
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
