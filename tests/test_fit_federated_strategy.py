"""fit_federated(strategy=...): rounds spread over tf.distribute replicas equal one process.

Two logical CPUs need a fresh process (tests/scripts/fed_replicas.py mirrored), and
two workers need `kerasfed launch`; both compare with ``strategy=None`` run on the
same problem, seed and cases (``fed_replicas.CASES``), within 1e-5.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import kerasfed
from kerasfed._compat import keras, tff_available
from kerasfed.distributed.strategies import StrategyError
from kerasfed.federated import strategy_argument
from kerasfed.federated.replicas import Replicas

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import fed_replicas  # noqa: E402

TOLERANCE = 1e-5

pytestmark = pytest.mark.native  # also under the newest TensorFlow


@pytest.fixture(autouse=True)
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


@functools.lru_cache(maxsize=None)  # several tests compare with the same case: train it once
def one_process(name: str):
    weights, history = fed_replicas.run_case(name, None)
    return weights, history.history


def history_diff(a: dict, b: dict) -> float:
    return fed_replicas._history_diff(a, b)


# -- equal to one process -------------------------------------------------------------


def run_mirrored(tmp_path, mode: str) -> dict:
    out = tmp_path / f"{mode}.json"
    run = subprocess.run([sys.executable, str(SCRIPTS / "fed_replicas.py"), mode, str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(out.read_text())
    assert set(results) == {*fed_replicas.CASES, "fedavg_side_by_side"}
    for name, r in results.items():
        assert r["replicas"] == 2 and "2 replicas" in r["form"], (name, r)
        assert r["weights"] < TOLERANCE and r["history"] < TOLERANCE, (name, r)
    return results


def test_mirrored_over_two_logical_cpus_equals_one_process(tmp_path):
    results = run_mirrored(tmp_path, "mirrored")
    assert all("(CPU:0, CPU:1)" in r["form"] for r in results.values())


@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="needs a GPU")
def test_mirrored_over_gpus_equals_one_process(tmp_path):
    results = run_mirrored(tmp_path, "gpu")
    assert all("GPU" in r["form"] for r in results.values())


def test_two_workers_through_launch_equal_one_process_and_resume_after_a_killed_worker(
        tmp_path, no_process_left_behind):
    # Worker 1 kills itself (SIGKILL) after round 2 of the first case; the launcher
    # restarts both workers and they resume from the chief's checkpoint.
    command = [sys.executable, "-m", "kerasfed", "launch", "--workers", "2", "--max-restarts", "1",
               str(SCRIPTS / "fed_replicas.py"), "worker", str(tmp_path), "--die-after-round", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "restarting all workers (restart 1/1)" in run.stderr
    saved = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    for name in fed_replicas.WORKER_CASES:
        expected_weights, expected_history = one_process(name)
        for rank, found in enumerate(saved):
            assert int(found[f"{name}/replicas"]) == 2
            weights = [found[f"{name}/{i}"] for i in range(len(expected_weights))]
            for got, want in zip(weights, expected_weights):
                np.testing.assert_allclose(got, want, atol=TOLERANCE, err_msg=f"{name} rank {rank}")
            history = json.loads(str(found[f"{name}/history"]))
            assert history_diff(history, expected_history) < TOLERANCE, (name, rank)
    # Only the chief wrote to the user's CSV; worker 1 wrote into its temp dir, which
    # is gone.
    user = tmp_path / "user"
    for name in fed_replicas.WORKER_CASES:
        assert str(saved[0][f"{name}/csv"]) == str(user / f"{name}.csv")
        elsewhere = Path(str(saved[1][f"{name}/csv"]))
        assert elsewhere.name == f"{name}.csv" and user not in elsewhere.parents
        assert "kerasfed-worker1-" in str(elsewhere) and not elsewhere.exists()
    assert (user / "median.csv").read_text().count("\n") == 1 + fed_replicas.CASES["median"]["rounds"]
    pids = [line.split()[2] for line in (tmp_path / "pids.txt").read_text().splitlines()]
    leftovers = [d for pid in pids for d in Path(tempfile.gettempdir()).glob(f"kerasfed-worker*-{pid}-*")]
    assert leftovers == []


class NonChief(Replicas):
    """This process as a worker that is not the chief (one replica: no collectives)."""

    def __init__(self):
        super().__init__(None)
        self.chief, self.rank = False, 1


def test_only_the_chief_writes_checkpoints_and_callback_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("kerasfed.federated.arguments.resolve_replicas",
                        lambda strategy, engine: NonChief())
    model, train, _ = fed_replicas.make_problem()
    csv = tmp_path / "log.csv"
    history = kerasfed.fit_federated(
        model, train, rounds=2, clients_per_round=3, batch_size=4, seed=1, engine="native",
        strategy="default", checkpoint_dir=tmp_path / "ckpt",
        callbacks=[keras.callbacks.CSVLogger(str(csv))])
    assert len(history.history["loss"]) == 2
    assert not csv.exists()
    assert capsys.readouterr().out == ""  # verbose="auto" is silent off the chief
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


@pytest.mark.parametrize("strategy", ["one_device", "auto"])  # "default": below
def test_single_replica_strategies_equal_no_strategy(strategy):
    expected, expected_history = one_process("median")
    weights, history = fed_replicas.run_case("median", strategy)
    assert history.params["replicas"] == 1 and history.params["engine"] == "native"
    for got, want in zip(weights, expected):
        np.testing.assert_array_equal(got, want)
    assert history_diff(history.history, expected_history) == 0.0


def test_a_strategy_makes_the_auto_engine_native():
    model, train, _ = fed_replicas.make_problem()
    history = kerasfed.fit_federated(model, train, rounds=1, batch_size=4, seed=0,
                                     strategy="default", verbose=0)
    assert history.params["engine"] == "native"


# -- dividing the clients ---------------------------------------------------------------


def with_replicas(n: int) -> Replicas:
    replicas = Replicas(None)
    replicas.num_replicas = n
    return replicas


def test_split_balances_examples_largest_first_and_keeps_round_order():
    sizes = [10, 1, 1, 8, 2, 7, 3]
    shares = with_replicas(3).split(sizes)
    # Largest first, each to the least loaded replica (ties: the lowest):
    # 10->0, 8->1, 7->2, 3->2, 2->1, 1->0, 1->1.
    assert sorted(i for s in shares for i in s) == list(range(len(sizes)))
    assert all(s == sorted(s) for s in shares)
    loads = [sum(sizes[i] for i in s) for s in shares]
    assert shares == [[0, 1], [2, 3, 4], [5, 6]]
    assert loads == [11, 11, 10]
    assert with_replicas(2).split([5]) == [[0], []]
    assert with_replicas(1).split([3, 4]) == [[0, 1]]


# -- errors -----------------------------------------------------------------------------


@pytest.mark.skipif(not tff_available(), reason="TFF engine needs the TFF environment")
def test_tff_engine_refuses_a_strategy():
    model, train, _ = fed_replicas.make_problem()
    with pytest.raises(StrategyError, match=r"engine='tff'.*cannot spread rounds.*engine='native'"):
        kerasfed.fit_federated(model, train, rounds=1, engine="tff", strategy="mirrored")


def test_bad_strategies_are_refused_before_training():
    model, train, _ = fed_replicas.make_problem()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(StrategyError, match="Unknown strategy: 'mirror'"):
        kerasfed.fit_federated(model, train, rounds=1, strategy="mirror")
    with pytest.raises(StrategyError, match="needs TF_CONFIG"):
        kerasfed.fit_federated(model, train, rounds=1, strategy="multi_worker")
    with pytest.raises(StrategyError, match="Expected `strategy` to be one of"):
        kerasfed.fit_federated(model, train, rounds=1, strategy=3)
    central = tf.distribute.experimental.CentralStorageStrategy()
    with pytest.raises(StrategyError, match="CentralStorageStrategy is not supported"):
        kerasfed.fit_federated(model, train, rounds=1, strategy=central)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


class TwoWorkers(Replicas):
    """Two workers that report ``rounds`` (their checkpoints' round counts)."""

    def __init__(self, rounds):
        super().__init__(None)
        self.workers, self.rounds = 2, rounds

    def all_gather(self, local):
        return tf.constant([[r, 100 + i] for i, r in enumerate(self.rounds)], tf.int64)


def test_workers_resuming_from_different_rounds_is_an_error():
    agreed = strategy_argument.agree_between_workers(
        TwoWorkers([3, 3]), seed=5, rounds_completed=3, checkpoint_dir="ck")
    assert agreed == 100  # the chief's seed
    with pytest.raises(StrategyError, match=r"different rounds \[3, 0\].*every worker sees"):
        strategy_argument.agree_between_workers(
            TwoWorkers([3, 0]), seed=5, rounds_completed=3, checkpoint_dir="ck")


# -- a Poisson round without clients ------------------------------------------------------


def test_a_private_round_without_clients_still_adds_its_noise():
    # Seed 2 samples no client in round 1 (each of the 8 joins with probability
    # 1/8). DP-FedAvg releases noise of std z * C / expected clients anyway, and
    # the round counts in epsilon; without DP the weights stay.
    model, train, _ = fed_replicas.make_problem()
    start = model.get_weights()
    dp = kerasfed.DPMean(noise_multiplier=1.0, clip_norm=0.5)
    history = kerasfed.fit_federated(model, train, rounds=1, clients_per_round=1, batch_size=4,
                                     seed=2, client_sampling="poisson", aggregator=dp,
                                     engine="native", verbose=0)
    assert history.history["clients"] == [0] and history.history["num_examples"] == [0]
    moved = np.concatenate([(a - b).ravel() for a, b in zip(model.get_weights(), start)])
    assert history.history["noise_std"][0] == pytest.approx(0.5)
    assert np.std(moved) == pytest.approx(0.5, rel=0.25) and abs(np.mean(moved)) < 0.15
    assert history.history["epsilon"][0] > 0

    model, train, _ = fed_replicas.make_problem()
    with pytest.warns(RuntimeWarning, match="no client was sampled"):
        kerasfed.fit_federated(model, train, rounds=1, clients_per_round=1, batch_size=4, seed=2,
                               client_sampling="poisson", engine="native", verbose=0)
    for a, b in zip(model.get_weights(), start):
        np.testing.assert_array_equal(a, b)
