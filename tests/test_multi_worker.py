"""fit_distributed across real worker processes on 127.0.0.1, started by `kerasfed launch`.

Each test launches tests/scripts/dist_train.py (or another worker script) in two
workers and compares what they recorded with plain ``model.fit`` in this process.
Every launch costs a TensorFlow import per worker, so the checks are grouped per
launch: the two tests of ``two_worker_job`` read one launch's records.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from kerasfed._compat import KERAS_3

pytestmark = pytest.mark.distributed

SCRIPTS = Path(__file__).parent / "scripts"
LAUNCH = [sys.executable, "-m", "kerasfed", "launch"]
TIMEOUT = 300  # a safety net on a loaded 2-core machine; runs take 20-60 s
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None

sys.path.insert(0, str(SCRIPTS))
import dist_common  # noqa: E402
from conftest import environ_with_token, kill_processes_left  # noqa: E402


@pytest.fixture(autouse=True)
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


def launch(script: str, *args: str, workers: int = 2, max_restarts: int = 0,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [*LAUNCH, "--workers", str(workers), "--max-restarts", str(max_restarts), str(SCRIPTS / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def check_ok(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]


def reference(n: int, batch: int, epochs: int, **kwargs) -> tuple[list[np.ndarray], dict]:
    """Plain model.fit in one process over the same examples in the same order."""
    x, y = dist_common.make_data(n)
    model = dist_common.build_model()
    history = model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, **kwargs)
    return model.get_weights(), history.history


def uninterrupted_shuffled(n: int, batch: int, epochs: int, seed: int, backup: Path) -> list[np.ndarray]:
    """fit_distributed in one process, shuffled as dist_train.py --shuffle SEED does.

    With a ``backup`` directory (as in the job compared with) fit_distributed orders
    the batches by (seed, epoch) itself, as it always does across workers; without
    one, a single process would leave the shuffling to Keras.
    """
    from kerasfed._compat import keras  # noqa: PLC0415
    from kerasfed.distributed.fit import fit_distributed  # noqa: PLC0415

    x, y = dist_common.make_data(n)
    model = dist_common.build_model()
    keras.utils.set_random_seed(seed)
    history = fit_distributed(model, x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0,
                              backup_dir=backup)
    return history.model.get_weights()


def assert_weights_close(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def leftover_temp_dirs(out: Path) -> list[str]:
    """Worker temp dirs (named kerasfed-worker{rank}-{pid}-...) of this run's processes."""
    pids = [line.split()[2] for line in (out / "pids.txt").read_text().splitlines()]
    return [d for pid in pids for d in glob.glob(os.path.join(tempfile.gettempdir(), f"kerasfed-worker*-{pid}-*"))]


@pytest.fixture(scope="module")
def two_worker_job(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One launch of dist_train.py in two workers: train with the user's files, train
    again from a dataset_fn, then record which examples each worker gets (--shards).

    Module-scoped: its processes carry a token of their own (conftest.py's per-test
    token is set after it runs), checked here the same way.
    """
    out = tmp_path_factory.mktemp("two_workers")
    user = out / "user"
    user.mkdir()
    args = [
        str(out), "--n", "64", "--batch", "16", "--epochs", "2", "--validation", "--dataset-fn", "--shards",
        "--save", str(user / "model.keras"), "--checkpoint", str(user / "ckpt.keras"), "--csv", str(user / "log.csv"),
    ]
    if HAS_TENSORBOARD:
        args += ["--tensorboard", str(user / "tb")]
    env, token = environ_with_token()
    env.pop("TF_CONFIG", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    run = launch("dist_train.py", *args, env=env)
    left = kill_processes_left(token)
    assert not left, f"processes of the two-worker job are still running: {left}"
    return out, run


def test_two_workers_match_single_process_and_only_the_chief_writes(two_worker_job):
    tmp_path, run = two_worker_job
    user = tmp_path / "user"
    check_ok(run)
    # verbose="auto": progress from the chief, silence from the other worker.
    assert "[0] Epoch 1/2" in run.stdout and "[1] Epoch" not in run.stdout

    # Both workers end with the weights of single-process training on the same
    # global batches (each worker computed half of every batch).
    ref_weights, ref_history = reference(64, 16, 2, validation_data=dist_common.make_data(16, seed=5))
    for rank in (0, 1):
        result = tmp_path / f"result.rank{rank}.npz"
        assert_weights_close(dist_common.load_weights(result), ref_weights)
        with np.load(result) as f:
            np.testing.assert_allclose(f["loss"], ref_history["loss"], rtol=1e-5)
            np.testing.assert_allclose(f["val_loss"], ref_history["val_loss"], rtol=1e-5)
        # Second run of the same processes, from a dataset_fn and a model function.
        assert_weights_close(dist_common.load_weights(tmp_path / f"result_fn.rank{rank}.npz"), ref_weights)

    # The chief wrote to the user's paths; the other worker only to its temp dir,
    # which is gone; the callbacks have their paths back after fit.
    chief = json.loads((tmp_path / "paths.rank0.json").read_text())
    other = json.loads((tmp_path / "paths.rank1.json").read_text())
    user_paths = {"ModelCheckpoint": str(user / "ckpt.keras"), "CSVLogger": str(user / "log.csv")}
    if HAS_TENSORBOARD:
        user_paths["TensorBoard"] = str(user / "tb")
    assert chief["during"] == user_paths
    assert chief["after"] == user_paths and other["after"] == user_paths
    assert set(chief["saved_to"]) == {str(user / "ckpt.keras"), str(user / "model.keras")}
    temp_roots = set()
    for name, path in other["during"].items():
        assert not path.startswith(str(user)), (name, path)
        temp_roots.add(Path(path).parents[1])
    for path in other["saved_to"]:
        assert not path.startswith(str(tmp_path)), path
        assert any(Path(path).is_relative_to(root) for root in temp_roots)
    assert all(root.name.startswith("kerasfed-worker1-") and not root.exists() for root in temp_roots)
    assert not leftover_temp_dirs(tmp_path)
    expected_files = {"ckpt.keras", "log.csv", "model.keras"} | ({"tb"} if HAS_TENSORBOARD else set())
    assert {p.name for p in user.iterdir()} == expected_files
    assert len((user / "log.csv").read_text().strip().splitlines()) == 1 + 2  # header + 2 epochs, once


def test_every_example_goes_to_exactly_one_worker(two_worker_job):
    tmp_path, run = two_worker_job
    check_ok(run)
    ranks = [json.loads((tmp_path / f"shards.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["seed"] == ranks[1]["seed"]  # drawn on the chief, received by the other

    # Arrays (57 examples, global batch 8): the partial last batch is kept, both
    # workers run the same number of steps, each example is used once per epoch.
    orders = []
    for epoch in range(2):
        steps = [ranks[r]["shuffled"][epoch] for r in (0, 1)]
        assert len(steps[0]) == len(steps[1]) == 8
        seen = [i for r in (0, 1) for step in steps[r] for i in step]
        assert sorted(seen) == list(range(57))
        orders.append([i for k in range(8) for r in (0, 1) for i in steps[r][k]])
    assert orders[0] != orders[1]  # shuffled anew each epoch

    # Without shuffling (and for validation arrays), global batch k holds examples
    # 8k..8k+7: worker 0 the first half, worker 1 the second, as in one process.
    for key in ("in_order", "validation"):
        for k in range(8):
            both = ranks[0][key][0][k] + ranks[1][key][0][k]
            assert both == list(range(8 * k, min(8 * k + 8, 57)))

    # Four TFRecord files: sharded by file, two whole files per worker.
    files = [{i // 10 for step in ranks[r]["files"][0] for i in step} for r in (0, 1)]
    seen = sorted(i for r in (0, 1) for step in ranks[r]["files"][0] for i in step)
    assert seen == list(range(40))
    assert len(files[0]) == len(files[1]) == 2 and not files[0] & files[1]


# Four worker starts. Keras 3 resumes through kerasfed's non-chief BackupAndRestore
# (distributed/backup.py), Keras 2 through its own; one process resumed from
# backup_dir is tested under both (test_fit_distributed.py), and a killed and
# restarted launch under both by test_fit_federated_strategy.py: dev.py runs this
# once (TF 2.21).
@pytest.mark.newest_tf_only
def test_killed_worker_resumes_after_last_completed_epoch(tmp_path):
    # Shuffled: the resumed job must also repeat the uninterrupted job's batches.
    common = ["--shuffle", "3", "--n", "64", "--batch", "16", "--epochs", "4"]
    run = launch(
        "dist_train.py", str(tmp_path), *common, "--kill-at-epoch", "1", "--backup", str(tmp_path / "backup"),
        max_restarts=1,
    )
    check_ok(run)
    assert "restarting all workers" in run.stderr + run.stdout
    for rank in (0, 1):
        begun = [tuple(map(int, line.split())) for line in (tmp_path / f"epochs.rank{rank}.txt").read_text().split("\n") if line]
        first = [e for attempt, e in begun if attempt == 0]
        second = [e for attempt, e in begun if attempt == 1]
        assert first[:2] == [0, 1]  # rank 1 died at the end of epoch 1 (after its backup)
        assert second == [2, 3], begun  # the restarted group resumed after epoch 1
    # The same job uninterrupted: the resumed job trained on the same batches. The
    # order of the global batches depends only on the seed (drawn after
    # set_random_seed(3), as dist_train.py does) and the epoch, not on the number of
    # workers, so fit_distributed in this process gives the uninterrupted job's
    # weights without launching two more workers.
    ref_weights = uninterrupted_shuffled(64, 16, 4, seed=3, backup=tmp_path / "uninterrupted_backup")
    assert not np.allclose(ref_weights[0], reference(64, 16, 4)[0][0], atol=1e-4)  # it did shuffle
    for rank in (0, 1):
        assert_weights_close(dist_common.load_weights(tmp_path / f"result.rank{rank}.npz"), ref_weights)
    # The killed worker could not remove its temp dir; its successor did.
    assert not leftover_temp_dirs(tmp_path)


# The launcher's work (pure Python): whatever collective rank 0 waits in, it is
# stopped when rank 1 exits. Two worker starts per case: dev.py runs it once (TF 2.21).
@pytest.mark.newest_tf_only
@pytest.mark.parametrize("when", ["before", "during"])
def test_a_failing_worker_stops_the_launch(tmp_path, when):
    # Rank 1 raises while rank 0 waits for it in a collective (variable broadcast or
    # gradient all-reduce): the launcher must stop rank 0 and report the failure.
    start = time.monotonic()
    run = launch("dist_train.py", str(tmp_path), "--epochs", "3", "--fail", when)
    elapsed = time.monotonic() - start
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"rank 1 fails {when} training" in run.stdout + run.stderr
    assert not (tmp_path / "result.rank0.npz").exists()
    assert elapsed < 120


QUIET_END = ("failed to connect to all addresses", "Connection refused")


def test_a_tutorial_script_runs_unmodified_under_the_launcher(tmp_path):
    # The model is built before fit_distributed and no strategy is created: the
    # launcher's bootstrap made the multi-worker strategy before the script ran.
    run = launch("tutorial_worker.py", str(tmp_path), "--progress")
    check_ok(run)
    ref_weights, ref_history = reference(64, 16, 2)
    for rank in (0, 1):
        result = tmp_path / f"tutorial.rank{rank}.npz"
        assert_weights_close(dist_common.load_weights(result), ref_weights)
        with np.load(result) as f:
            np.testing.assert_allclose(f["loss"], ref_history["loss"], rtol=1e-5)
    assert "[0] done __main__" in run.stdout and "[1] done __main__" in run.stdout
    for noise in QUIET_END:  # workers finish together, without gRPC errors
        assert noise not in run.stderr, run.stderr[-3000:]
    # Progress bars through the launcher stay bounded: no terminal here, so each
    # epoch's bar appears once, in its final state.
    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line) for line in run.stdout.splitlines()]
    assert max(len(line) for line in lines) < 300, max(lines, key=len)[:500]
    assert sum(line.startswith("[0] 4/4") for line in lines) == 2, run.stdout
    assert "\r" not in run.stdout


def test_without_the_bootstrap_the_clear_error_stays(tmp_path):
    command = [*LAUNCH, "--workers", "2", "--no-auto-strategy",
               str(SCRIPTS / "tutorial_worker.py"), str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode != 0
    assert "must be created before TensorFlow runs its first op" in run.stderr


@pytest.mark.skipif(KERAS_3, reason="plain MultiWorkerMirroredStrategy + model.fit fails in "
                    "Keras 3 itself (keras-team/keras#20585), with or without the launcher")
def test_tensorflows_own_tutorial_still_runs(tmp_path):
    run = launch("tf_tutorial_worker.py", str(tmp_path))
    check_ok(run)
    assert [(tmp_path / f"tf_tutorial.rank{r}").read_text() for r in (0, 1)] == ["2", "2"]
