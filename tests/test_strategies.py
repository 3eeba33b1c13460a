"""Strategy names, their creation and caching, worker helpers, logical CPUs, and errors.

MirroredStrategy over two logical CPUs and MultiWorkerMirroredStrategy need fresh
processes; they are exercised in test_fit_distributed.py and test_multi_worker.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from kerasfed._compat import KERAS_3
from kerasfed.distributed import strategies
from kerasfed.distributed.devices import DeviceConfigError, use_logical_cpus
from kerasfed.distributed.strategies import (
    STRATEGY_NAMES,
    StrategyError,
    StrategyInitError,
    get_strategy,
    is_chief,
    is_multi_worker,
    resolve_name,
    worker_count,
    worker_rank,
)
from kerasfed.distributed.tf_config import TFConfigError, build_tf_config
from kerasfed.launch import pick_free_ports

pytestmark = pytest.mark.distributed


@pytest.fixture(autouse=True)
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)


def two_worker_tf_config(monkeypatch, rank: int = 0) -> None:
    addresses = [f"127.0.0.1:{p}" for p in pick_free_ports(2)]
    monkeypatch.setenv("TF_CONFIG", build_tf_config(addresses, rank))


def test_registered_names():
    assert STRATEGY_NAMES == ("auto", "default", "mirrored", "multi_worker", "one_device")


def test_strategies_are_created_once_per_process():
    assert get_strategy("default") is tf.distribute.get_strategy()
    one = get_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert get_strategy("one_device") is one
    mirrored = get_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert get_strategy("mirrored") is mirrored


def test_an_instance_is_used_as_it_is():
    instance = tf.distribute.OneDeviceStrategy("/cpu:0")
    assert get_strategy(instance) is instance


def test_auto_without_tf_config():
    several_gpus = len(tf.config.list_physical_devices("GPU")) > 1
    assert resolve_name("auto") == ("mirrored" if several_gpus else "default")
    assert resolve_name("one_device") == "one_device"


def test_auto_with_tf_config(monkeypatch):
    two_worker_tf_config(monkeypatch)
    assert resolve_name("auto") == "multi_worker"
    monkeypatch.setenv("TF_CONFIG", build_tf_config(["127.0.0.1:1"], 0))
    assert resolve_name("auto") != "multi_worker"  # one process: nothing to synchronise


def test_single_process_worker_helpers():
    for strategy in (get_strategy("default"), get_strategy("one_device"), get_strategy("mirrored")):
        assert not is_multi_worker(strategy)
        assert worker_count(strategy) == 1 and worker_rank(strategy) == 0 and is_chief(strategy)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(StrategyError, match=r"Unknown strategy: 'tpu'. It needs to be one of \['auto', 'default', 'mirrored', 'multi_worker', 'one_device'\]"):
        get_strategy("tpu")


def test_wrong_type():
    with pytest.raises(StrategyError, match="Received: strategy=None of type NoneType"):
        get_strategy(None)


def test_multi_worker_without_tf_config_says_how_to_fix():
    with pytest.raises(StrategyError, match=r"needs TF_CONFIG.*unset.*kerasfed launch --workers N script.py"):
        get_strategy("multi_worker")


@pytest.mark.parametrize("name", ["auto", "multi_worker"])
def test_invalid_tf_config(monkeypatch, name):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(TFConfigError, match="TF_CONFIG is not valid JSON"):
        get_strategy(name)


def test_parameter_servers_in_tf_config(monkeypatch):
    config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"], "ps": ["127.0.0.1:3"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    with pytest.raises(StrategyError, match=r"lists parameter-server \('ps'\) tasks"):
        get_strategy("multi_worker")
    with pytest.raises(StrategyError, match=r"lists parameter-server \('ps'\) tasks"):
        get_strategy("auto")


def test_evaluator_task_does_not_train(monkeypatch):
    config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "evaluator", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    with pytest.raises(StrategyError, match="is the 'evaluator' task in TF_CONFIG; only 'chief' and 'worker' tasks train"):
        get_strategy("multi_worker")


def test_multi_worker_after_tensorflow_started_says_how_to_fix(monkeypatch):
    tf.constant(1.0) + 1.0  # TensorFlow's context now exists in this process
    two_worker_tf_config(monkeypatch)
    with pytest.raises(StrategyInitError, match=r"must be created before TensorFlow runs its first op(.|\n)*kerasfed.get_strategy\(\"multi_worker\"\)"):
        get_strategy("auto")
    assert "multi_worker" not in strategies._CACHE


def test_a_second_multi_worker_strategy_with_another_cluster():
    script = Path(__file__).parent / "scripts" / "dist_second_strategy.py"
    ports = [str(p) for p in pick_free_ports(2)]
    run = subprocess.run([sys.executable, str(script), *ports], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "StrategyInitError: A MultiWorkerMirroredStrategy with another configuration was already created" in run.stdout
    assert "kerasfed.get_strategy('multi_worker')" in run.stdout


def test_parameter_server_strategy_is_refused():
    # A real ParameterServerStrategy connects to a running cluster at creation; the
    # check only looks at the class, so an uninitialised instance is enough.
    ps = object.__new__(tf.distribute.experimental.ParameterServerStrategy)
    with pytest.raises(StrategyError, match="ParameterServerStrategy is asynchronous and not supported"):
        get_strategy(ps)


@pytest.mark.skipif(not KERAS_3, reason="Keras 2 fits under a plain MultiWorkerMirroredStrategy")
def test_plain_multi_worker_strategy_is_refused_under_keras_3():
    plain = object.__new__(tf.distribute.MultiWorkerMirroredStrategy)  # creation would start a server
    with pytest.raises(StrategyError, match=r"Keras 3 cannot fit a model under a plain .*strategy='multi_worker'"):
        get_strategy(plain)


@pytest.mark.parametrize("n, error, match", [
    ("2", TypeError, "Expected `n` to be an int. Received: n='2' of type str"),
    (True, TypeError, "Expected `n` to be an int"),
    (0, ValueError, "Expected `n` to be at least 1. Received: n=0"),
])
def test_use_logical_cpus_argument_errors(n, error, match):
    with pytest.raises(error, match=match):
        use_logical_cpus(n)


def test_use_logical_cpus_after_tensorflow_started():
    tf.constant(1.0) + 1.0
    assert use_logical_cpus(1) == ["/device:CPU:0"]  # already so
    with pytest.raises(DeviceConfigError, match=r"use_logical_cpus\(3\): TensorFlow has already initialised its devices .*at the top of the script"):
        use_logical_cpus(3)
