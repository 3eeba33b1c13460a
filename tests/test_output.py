"""What a person sees: progress lines that fit, no redraws in files, no TensorFlow start-up noise.

The unit tests render into fake terminals of a fixed width; the process tests run
the fit calls, the launcher and an import of TensorFlow as a user would, with stdout
a file or a pipe, and read what came out. Tests that import no TensorFlow (rendering,
the noise filter, the launcher's relay) are marked ``tf_independent``: one suite runs them.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tqdm

from conftest import environ_with_token, kill_processes_left
from kerasfed._console import TERMINAL_COLUMNS_VAR, resolve_verbose
from kerasfed._tf_startup import is_startup_noise, quiet_tensorflow_startup
from kerasfed.federated.progress import RoundProgress, round_line
from kerasfed.launch import PrefixedOutput

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600

# The lines TF 2.14 and TF 2.21 print at start-up on these machines, as printed.
NOISE = [
    b"2026-12-07 13:36:15.419514: E tensorflow/compiler/xla/stream_executor/cuda/cuda_dnn.cc:9342]"
    b" Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one"
    b" has already been registered\n",
    b"2026-12-07 13:36:15.425341: E tensorflow/compiler/xla/stream_executor/cuda/cuda_blas.cc:1518]"
    b" Unable to register cuBLAS factory: Attempting to register factory for plugin cuBLAS when"
    b" one has already been registered\n",
    b"2026-12-07 13:42:01.776361: I tensorflow/tsl/cuda/cudart_stub.cc:28] Could not find cuda"
    b" drivers on your machine, GPU will not be used.\n",
    b"2026-12-07 13:42:01.776647: I tensorflow/core/platform/cpu_feature_guard.cc:182] This"
    b" TensorFlow binary is optimized to use available CPU instructions in performance-critical"
    b" operations.\n",
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with"
    b" the appropriate compiler flags.\n",
    b"2026-12-07 13:42:05.548030: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT"
    b" Warning: Could not find TensorRT\n",
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796650656.595701   12349 cudart_stub.cc:31] Could not find cuda drivers on your"
    b" machine, GPU will not be used.\n",
    b"I0000 00:00:1796650685.581435   13279 port.cc:153] oneDNN custom operations are on. You may"
    b" see slightly different numerical results.\n",
    b"E0000 00:00:1796650674.541966   12349 cuda_platform.cc:52] failed call to cuInit: INTERNAL:"
    b" CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
]
# What must never be dropped: a real TensorFlow error, a user's line that mentions CUDA.
NOT_NOISE = [
    b"2026-12-07 13:42:05.548030: E tensorflow/core/framework/op_kernel.cc:1827] OP_REQUIRES"
    b" failed at xla_ops.cc:580 : RESOURCE_EXHAUSTED: Out of memory\n",
    b"E0000 00:00:1796650674.541966   12349 gpu_device.cc:2020] Cannot dlopen some GPU libraries.\n",
    b"my program: could not find cuda drivers? using the CPU\n",
    b"Traceback (most recent call last):\n",
]
ANSI = "\x1b["

LOGS = {"loss": 1.234567, "accuracy": 0.8123, "val_loss": 0.9012, "val_accuracy": 0.85111,
        "round_seconds": 0.21, "num_examples": 900, "bytes_to_clients": 10}


def _env_without_log_level(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(extra)
    return env


def _run(args: list[str], *, env: dict[str, str], cwd: Path, stdout=subprocess.PIPE):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return proc


# -- The progress line at a fixed width ---------------------------------------------


@pytest.mark.native
@pytest.mark.tf_independent
@pytest.mark.parametrize("width", [200, 120, 100, 90, 79, 70, 60, 40, 30])
def test_each_shown_value_is_whole_and_the_line_fits(width):
    line = round_line(7, 30, LOGS, width=width, timing=("0.21s/round  ETA 5s", "ETA 5s"))
    assert len(line) <= width and line.startswith("Round  7/30")
    # The values of every metric named in the line, each as Keras prints it.
    shown = re.findall(r"(\w+) (\d+\.\d{4})\b", line)
    expected = {"loss": "1.2346", "accuracy": "0.8123", "val_loss": "0.9012",
                "val_accuracy": "0.8511", "acc": "0.8123", "val_acc": "0.8511"}
    assert shown and all(expected[name] == value for name, value in shown), line
    assert "num_examples" not in line and "900" not in line  # counters are not metrics
    if width >= 79:  # an 80-column terminal shows all four metrics
        assert len(shown) == 4, line
    if width >= 120:
        assert "[" in line and "0.21s/round" in line  # room for the bar and the timing


@pytest.mark.native
@pytest.mark.tf_independent
def test_loss_and_first_metric_are_the_last_to_go():
    logs = {"loss": 0.5, "mean_absolute_error": 0.25, "mse": 0.5, "val_loss": 0.6,
            "val_mean_absolute_error": 0.3, "val_mse": 0.7, "fed_eval_loss": 0.8}
    assert round_line(3, 5, logs, width=50) == "Round 3/5 loss 0.5000  mae 0.2500  val_loss 0.6000"
    assert round_line(3, 5, logs, width=49) == "Round 3/5 loss 0.5000  mae 0.2500"
    assert round_line(3, 5, logs, width=30) == "Round 3/5 loss 0.5000"


@pytest.mark.native
@pytest.mark.tf_independent
def test_the_spread_over_clients_stays_in_history_not_on_the_line():
    logs = {"loss": 0.5, "fed_eval_accuracy": 0.8, "fed_eval_accuracy_p10": 0.6,
            "fed_eval_accuracy_max": 0.9, "fed_eval_personalized_accuracy": 0.85,
            "fed_eval_personalized_accuracy_min": 0.7}
    line = round_line(1, 2, logs, width=None)
    assert "fed_eval_accuracy 0.8000" in line and "fed_eval_personalized_accuracy 0.8500" in line
    assert "p10" not in line and "_max" not in line and "_min" not in line


@pytest.mark.native
@pytest.mark.tf_independent
def test_names_that_would_collide_stay_long():
    logs = {"loss": 1.0, "accuracy": 0.5, "sparse_categorical_accuracy": 0.5}
    line = round_line(1, 9, logs, width=79, timing=("x" * 40, "ETA 1s"))
    assert "accuracy 0.5000" in line and "sparse_categorical_accuracy 0.5000" in line


@pytest.mark.native
@pytest.mark.tf_independent
def test_tiny_and_huge_values_keep_their_digits():
    line = round_line(1, 1, {"loss": 123456.0, "accuracy": 0.00001234}, width=None)
    assert "loss 1.235e+05" in line and "accuracy 1.234e-05" in line


class _FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def _train(progress: RoundProgress, rounds: int, initial: int = 0) -> None:
    progress.on_train_begin()
    for epoch in range(initial, rounds):
        progress.on_epoch_end(epoch, dict(LOGS, loss=LOGS["loss"] - epoch / 10))
    progress.on_train_end()


@pytest.mark.native
@pytest.mark.tf_independent
def test_terminal_bar_redraws_in_place_within_80_columns():
    terminal = _FakeTerminal()
    progress = RoundProgress(1, 3, stream=terminal, width=80)
    progress.note("fit_federated: native engine, lockstep (per-example layers: clients stacked "
                  "and trained in lockstep)")
    _train(progress, 3)
    note, out = terminal.getvalue().split("\n", 2)[:2], terminal.getvalue().split("\n", 2)[2]
    assert note == ["fit_federated: native engine, lockstep (per-example layers: clients stacked and",
                    "  trained in lockstep)"]
    assert ANSI not in out and out.endswith("\n") and out.count("\n") == 1
    frames = [frame.rstrip(" \n") for frame in out.split("\r") if frame]
    assert len(frames) == 1 + 3 + 1  # the start, each round, the final state
    assert all(len(frame) <= 79 for frame in out.split("\r"))
    final = frames[-1]
    for name, value in (("loss", "1.0346"), ("val_loss", "0.9012"), ("val_acc", "0.8511")):
        assert f"{name} {value}" in final, final
    assert final.startswith("Round 3/3") and final.endswith("in all")


@pytest.mark.native
@pytest.mark.tf_independent
def test_a_wide_terminal_shows_the_full_names_then_tqdms_bar_and_timing():
    terminal = _FakeTerminal()
    _train(RoundProgress(1, 3, stream=terminal, width=120), 3)
    out = terminal.getvalue()
    assert ANSI not in out and out.endswith("\n") and out.count("\n") == 1
    frames = [frame.rstrip(" \n") for frame in out.split("\r") if frame]
    assert all(len(frame) <= 119 for frame in frames)
    values = "loss 1.0346  accuracy 0.8123  val_loss 0.9012  val_accuracy 0.8511"
    assert re.fullmatch(r"Round 2/3 .+ \[=+\.+\] \d+\.\d\ds/round  ETA \d+s", frames[2]), frames[2]
    assert re.fullmatch(rf"Round 3/3 {values} \[=+\] \d+\.\d\ds/round  \d+s in all", frames[-1])


@pytest.mark.native
@pytest.mark.tf_independent
def test_the_terminal_line_beside_a_users_own_tqdm_bar_uses_no_ansi_codes():
    with tqdm.tqdm(total=2, file=io.StringIO()):  # e.g. an outer loop over experiments
        terminal = _FakeTerminal()
        _train(RoundProgress(1, 3, stream=terminal, width=80), 3)
    out = terminal.getvalue()
    assert ANSI not in out and out.startswith("\rRound 0/3") and out.count("\n") == 1


@pytest.mark.native
@pytest.mark.tf_independent
@pytest.mark.parametrize("verbose", [1, 2])
def test_into_a_file_one_line_per_round(verbose):
    log = io.StringIO()  # not a terminal: verbose=1 behaves as 2
    progress = RoundProgress(verbose, 3, initial_round=1, stream=log)
    progress.note("fit_federated: native engine")
    _train(progress, 3, initial=1)
    out = log.getvalue()
    assert "\r" not in out and ANSI not in out
    assert out.splitlines() == [
        "fit_federated: native engine",
        "Round 2/3 - 0.21s - loss: 1.1346 - accuracy: 0.8123 - val_loss: 0.9012 - val_accuracy: 0.8511",
        "Round 3/3 - 0.21s - loss: 1.0346 - accuracy: 0.8123 - val_loss: 0.9012 - val_accuracy: 0.8511",
    ]


@pytest.mark.native
@pytest.mark.tf_independent
def test_verbose_0_prints_nothing():
    terminal = _FakeTerminal()
    progress = RoundProgress(0, 2, stream=terminal)
    progress.note("fit_federated: native engine")
    _train(progress, 2)
    assert terminal.getvalue() == ""


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_auto_is_a_bar_for_a_terminal_or_a_launcher_terminal_and_lines_otherwise(monkeypatch):
    monkeypatch.delenv(TERMINAL_COLUMNS_VAR, raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert resolve_verbose("auto") == 2
    monkeypatch.setattr(sys, "stdout", _FakeTerminal())
    assert resolve_verbose("auto") == 1
    assert [resolve_verbose(v) for v in (0, 1, 2)] == [0, 1, 2]
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setenv(TERMINAL_COLUMNS_VAR, "76")  # kerasfed launch shows this worker live
    assert resolve_verbose("auto") == 1


# -- TensorFlow's start-up lines -------------------------------------------------------


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_startup_noise_is_recognised_and_real_errors_are_not():
    assert [line for line in NOISE if not is_startup_noise(line)] == []
    assert [line for line in NOT_NOISE if is_startup_noise(line)] == []


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_quiet_startup_drops_noise_and_keeps_everything_else(capfd, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    with quiet_tensorflow_startup():
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"  # before TensorFlow reads it
        for line in [*NOISE, *NOT_NOISE]:
            os.write(2, line)
    assert capfd.readouterr().err.encode() == b"".join(NOT_NOISE)


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_quiet_startup_shows_the_captured_lines_when_the_block_raises(capfd, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    with pytest.raises(ImportError, match="libcudart.so.12: cannot open"):
        with quiet_tensorflow_startup():
            os.write(2, NOISE[0] + b"the loader's own explanation\n")
            raise ImportError("libcudart.so.12: cannot open shared object file")
    assert capfd.readouterr().err == "the loader's own explanation\n"


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_quiet_startup_leaves_a_users_log_level_alone(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    with quiet_tensorflow_startup():
        os.write(2, NOISE[0])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert capfd.readouterr().err.encode() == NOISE[0]


# -- kerasfed launch: the workers' environment and the relay -------------------------------


NOISY_WORKER = """
import os, sys
sys.stderr.buffer.write(b"".join({noise!r}) + b"a real warning\\n")
sys.stderr.flush()
print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"), os.environ.get("{columns}"))
"""


@pytest.mark.distributed
@pytest.mark.tf_independent
@pytest.mark.parametrize("user_level", [None, "0"])
def test_launcher_drops_startup_lines_unless_the_user_set_the_level(tmp_path, user_level):
    script = tmp_path / "noisy.py"
    script.write_text(NOISY_WORKER.format(noise=NOISE, columns=TERMINAL_COLUMNS_VAR))
    env = _env_without_log_level()
    if user_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = user_level
    proc = _run(["-m", "kerasfed", "launch", "--workers", "2", str(script)], env=env, cwd=tmp_path)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    # Workers get level 2 unless the user chose one; no terminal, so no columns.
    assert sorted(out.splitlines()) == [f"[{r}] {user_level or '2'} None" for r in (0, 1)]
    expected = {f"[{r}] a real warning" for r in (0, 1)}
    if user_level is not None:
        expected |= {f"[{r}] {line.decode().rstrip()}" for r in (0, 1) for line in NOISE}
    assert set(err.splitlines()) == expected


@pytest.mark.distributed
@pytest.mark.tf_independent
def test_a_live_worker_learns_the_columns_left_beside_its_prefix(monkeypatch):
    class Terminal(io.BytesIO):
        def isatty(self):
            return True

    monkeypatch.setenv("COLUMNS", "80")
    output = PrefixedOutput(Terminal(), Terminal())
    assert output.worker_env("0") == {TERMINAL_COLUMNS_VAR: "76"}  # 80 - len("[0] ")
    assert output.worker_env("1") == {}  # not live: its lines come when they are done
    assert PrefixedOutput(io.BytesIO(), io.BytesIO()).worker_env("0") == {}


LAUNCHED_TF = """
import tensorflow as tf
print("tensorflow", tf.__version__, flush=True)
"""


@pytest.mark.distributed
def test_a_launched_worker_importing_tensorflow_shows_no_startup_lines(tmp_path):
    script = tmp_path / "imports_tf.py"
    script.write_text(LAUNCHED_TF)
    proc = _run(["-m", "kerasfed", "launch", str(script)], env=_env_without_log_level(), cwd=tmp_path)
    assert proc.stdout.decode().startswith("[0] tensorflow ")
    err = proc.stderr.decode(errors="replace")
    for word in ("absl::InitializeLog", "cuda drivers", "cuDNN", "oneDNN", "cuInit", "TensorRT"):
        assert word not in err, err


# -- Both fit calls writing to a file ---------------------------------------------------------


FIT_BOTH = """
import json, sys
import numpy as np
import kerasfed

if "demo_start" in sys.argv:  # TensorFlow started as examples/demo.py starts it
    sys.path.insert(0, sys.argv[sys.argv.index("demo_start") + 1])
    import demo
    demo.start_tensorflow()
from kerasfed._compat import keras

rng = np.random.default_rng(0)
x = rng.normal(size=(96, 4)).astype("float32")
y = (x[:, 0] > 0).astype("int32")

def make_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model

if "distributed" in sys.argv:
    kerasfed.fit_distributed(make_model, x, y, epochs=3, batch_size=16, validation_data=(x, y))
if "federated" in sys.argv:
    clients = kerasfed.partition(x, y, num_clients=4, seed=0)
    history = kerasfed.fit_federated(make_model, clients, rounds=3, clients_per_round=2,
                                     batch_size=8, validation_data=(x, y), engine="native", seed=0)
    print("HISTORY " + json.dumps(history.history), flush=True)
"""


@pytest.fixture(scope="module")
def fit_both_into_a_file(tmp_path_factory) -> tuple[str, str]:
    """One process: TensorFlow started as the demo starts it, then both fit calls with
    stdout a file; its stdout and stderr. (Module-scoped: one TensorFlow start serves
    two tests; its processes carry a token of their own, checked the same way.)"""
    folder = tmp_path_factory.mktemp("fit_both")
    script = folder / "fit_both.py"
    script.write_text(FIT_BOTH)
    env, token = environ_with_token()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    log = folder / "log.txt"
    with open(log, "wb") as f:
        proc = _run([str(script), "distributed", "federated", "demo_start", str(ROOT / "examples")],
                    env=env, cwd=folder, stdout=f)
    left = kill_processes_left(token)
    assert not left, f"processes of the fit_both run are still running: {left}"
    return log.read_text(), proc.stderr.decode(errors="replace")


@pytest.mark.distributed
def test_the_demos_tensorflow_start_prints_no_startup_lines(fit_both_into_a_file):
    _, err = fit_both_into_a_file  # nor does training afterwards
    assert [line for line in err.splitlines(keepends=True) if is_startup_noise(line.encode())] == []
    for word in ("absl::InitializeLog", "cuda drivers", "cuDNN", "oneDNN", "cuInit"):
        assert word not in err, err


@pytest.mark.distributed
@pytest.mark.native
def test_both_fit_calls_write_one_line_per_epoch_or_round_into_a_file(fit_both_into_a_file):
    out, _ = fit_both_into_a_file
    assert "\r" not in out and "\b" not in out and ANSI not in out, repr(out[:2000])
    lines = out.splitlines()
    # fit_distributed, verbose="auto" outside a terminal: Keras' verbose=2.
    assert [line for line in lines if line.startswith("Epoch ")] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert sum(line.startswith("6/6 - ") and "val_loss: " in line for line in lines) == 3
    # fit_federated: one line per round, with the values of history.
    history = json.loads(next(line for line in lines if line.startswith("HISTORY "))[8:])
    rounds = [line for line in lines if line.startswith("Round ")]
    assert [line.split(" - ")[0] for line in rounds] == ["Round 1/3", "Round 2/3", "Round 3/3"]
    for line, loss, accuracy in zip(rounds, history["loss"], history["val_accuracy"]):
        assert f"loss: {loss:.4f}" in line and f"val_accuracy: {accuracy:.4f}" in line


PTY_RUN = """
import fcntl, os, pty, struct, subprocess, sys, termios
leader, follower = pty.openpty()
fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
proc = subprocess.Popen(sys.argv[1:], stdin=follower, stdout=follower, stderr=subprocess.DEVNULL)
os.close(follower)
out = b""
while True:
    try:
        chunk = os.read(leader, 65536)
    except OSError:  # the child closed the terminal
        break
    if not chunk:
        break
    out += chunk
code = proc.wait()
sys.stdout.buffer.write(out)
sys.exit(code)
"""


@pytest.mark.native
def test_fit_federated_in_an_80_column_terminal_shows_every_value(tmp_path):
    script = tmp_path / "fit_both.py"
    script.write_text(FIT_BOTH)
    (tmp_path / "pty_run.py").write_text(PTY_RUN)
    env = _env_without_log_level()
    env.pop("COLUMNS", None)  # the terminal's own size counts
    proc = _run(["pty_run.py", sys.executable, str(script), "federated"], env=env, cwd=tmp_path)
    out = proc.stdout.decode()
    history = json.loads(out[out.index("HISTORY ") + 8:].split("\r\n")[0])
    progress = out[: out.index("HISTORY ")]
    frames = [f for line in progress.split("\r\n") for f in line.split("\r")]
    assert all(len(frame) <= 79 for frame in frames), max(frames, key=len)
    final = [f for f in frames if f.startswith("Round 3/3")][-1]
    for key, short in (("loss", "loss"), ("accuracy", "acc"), ("val_loss", "val_loss"),
                       ("val_accuracy", "val_acc")):
        assert f" {short} {history[key][-1]:.4f}" in final, final
    assert ANSI not in out
