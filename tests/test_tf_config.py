"""Tests for kerasfed.distributed.tf_config: reading, checking and writing TF_CONFIG."""

from __future__ import annotations

import json

import pytest

from kerasfed.distributed.tf_config import (
    ClusterConfig,
    TFConfigError,
    build_tf_config,
    check_addresses,
    parse_tf_config,
    read_tf_config,
    split_address,
)

# TF_CONFIG is parsed without TensorFlow (test_no_tensorflow_import): one suite runs it.
pytestmark = [pytest.mark.distributed, pytest.mark.tf_independent]

W2 = ["127.0.0.1:2222", "127.0.0.1:2223"]


def env(config) -> dict[str, str]:
    return {"TF_CONFIG": config if isinstance(config, str) else json.dumps(config)}


def cfg(cluster, task_type="worker", index=0) -> dict:
    return {"cluster": cluster, "task": {"type": task_type, "index": index}}


# --- valid configurations -------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {"TF_CONFIG": ""}, {"TF_CONFIG": "  \n"}])
def test_unset_or_empty_is_none(environ):
    assert read_tf_config(environ) is None


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(cfg({"worker": W2}, index=1)))
    assert read_tf_config() == ClusterConfig({"worker": W2}, "worker", 1)
    monkeypatch.delenv("TF_CONFIG")
    assert read_tf_config() is None


@pytest.mark.parametrize(
    "task_type, index, rank, is_chief",
    [("chief", 0, 0, True), ("worker", 0, 1, False), ("worker", 1, 2, False)],
)
def test_chief_comes_first(task_type, index, rank, is_chief):
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    config = read_tf_config(env(cfg(cluster, task_type, index)))
    assert (config.rank, config.is_chief, config.num_workers) == (rank, is_chief, 3)
    assert config.trains


@pytest.mark.parametrize("index, is_chief", [(0, True), (1, False)])
def test_worker_zero_is_chief_without_chief(index, is_chief):
    config = read_tf_config(env(cfg({"worker": W2}, "worker", index)))
    assert (config.rank, config.is_chief, config.num_workers) == (index, is_chief, 2)


def test_extra_keys_are_ignored():
    # Kubernetes' TFJob adds "environment": "cloud".
    data = cfg({"worker": W2}) | {"environment": "cloud", "rpc_layer": "grpc"}
    assert read_tf_config(env(data)).task_type == "worker"


def test_ps_and_evaluator_do_not_train():
    cluster = {"chief": ["h0:1"], "worker": ["h1:1"], "ps": ["h2:1", "h3:1"]}
    ps = read_tf_config(env(cfg(cluster, "ps", 1)))
    assert (ps.trains, ps.is_chief, ps.num_workers) == (False, False, 2)
    with pytest.raises(TFConfigError, match=r"'ps' task has no training rank.*trains"):
        ps.rank
    # TensorFlow allows an evaluator outside the cluster (multi_worker_util).
    evaluator = read_tf_config(env(cfg(cluster, "evaluator", 0)))
    assert (evaluator.trains, evaluator.is_chief) == (False, False)


def test_ipv6_and_hostnames():
    config = read_tf_config(env(cfg({"worker": ["[::1]:2222", "node-1.example.com:65535"]})))
    assert config.cluster["worker"][0] == "[::1]:2222"
    assert split_address("[::1]:2222") == ("[::1]", 2222)


# --- every error ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, match",
    [
        (
            '{"cluster": {"worker": ["h:1"]}',
            r"not valid JSON: .* line 1 column 32 \(character 31\)",
        ),
        ("not json", r"not valid JSON: Expecting value at line 1 column 1"),
        ('["h:1"]', r"must be a JSON object\. Received a JSON array"),
        ('"worker"', r"must be a JSON object\. Received a JSON string"),
    ],
)
def test_not_a_json_object(text, match):
    with pytest.raises(TFConfigError, match=match):
        read_tf_config(env(text))


@pytest.mark.parametrize(
    "data, match",
    [
        (
            {"task": {"type": "worker", "index": 0}},
            r'no "cluster" key; it has \[\'task\'\].*unset TF_CONFIG',
        ),
        ({}, r'no "cluster" key'),
        (cfg({}), r'TF_CONFIG\["cluster"\] must be a non-empty object.*Received: \{\}'),
        (cfg(["h:1"]), r'TF_CONFIG\["cluster"\] must be a non-empty object.*Received: \[\'h:1\'\]'),
        (
            cfg({"master": ["h:1"]}),
            r"unknown task type 'master'\. Valid task types: chief, worker, ps, evaluator",
        ),
        (cfg({"worker": "h:1"}), r"\['worker'\] must be a non-empty list .*Received: 'h:1'"),
        (cfg({"worker": []}), r"\['worker'\] must be a non-empty list .*Received: \[\]"),
        (cfg({"ps": ["h:1"]}, "ps"), r'no "chief" or "worker" entry .*\[\'ps\'\]'),
    ],
)
def test_bad_cluster(data, match):
    with pytest.raises(TFConfigError, match=match):
        read_tf_config(env(data))


@pytest.mark.parametrize(
    "data, match",
    [
        ({"cluster": {"worker": W2}}, r'no "task" key.*"task": \{"type": "worker", "index": 0\}'),
        (
            {"cluster": {"worker": W2}, "task": "worker"},
            r'TF_CONFIG\["task"\] must be an object.*Received: \'worker\'',
        ),
        (
            {"cluster": {"worker": W2}, "task": {"index": 0}},
            r'TF_CONFIG\["task"\] has no "type" key',
        ),
        (
            {"cluster": {"worker": W2}, "task": {"type": "worker"}},
            r'TF_CONFIG\["task"\] has no "index" key',
        ),
        (
            cfg({"worker": W2}, "trainer"),
            r"\"type\"\] = 'trainer' is not a task type\. "
            r"Valid task types: chief, worker, ps, evaluator",
        ),
        (
            cfg({"worker": W2}, "worker", "1"),
            r'"index"\] must be a JSON integer\. Received: \'1\' of type string.*no quotes',
        ),
        (
            cfg({"worker": W2}, "worker", 1.0),
            r'"index"\] must be a JSON integer\. Received: 1\.0 of type number',
        ),
        (
            cfg({"worker": W2}, "worker", True),
            r'"index"\] must be a JSON integer\. Received: True of type boolean',
        ),
        (cfg({"worker": W2}, "worker", -1), r'"index"\] = -1 is negative'),
        (
            cfg({"worker": W2}, "worker", 2),
            r"\"index\"\] = 2 is outside .*\['worker'\], which lists 2 address\(es\), "
            r"so valid indices are 0\.\.1",
        ),
        (
            cfg({"chief": ["h0:1"], "worker": W2}, "chief", 1),
            r"= 1 is outside .*\['chief'\], which lists 1",
        ),
        (
            cfg({"worker": W2}, "chief"),
            r"= 'chief', but TF_CONFIG\[\"cluster\"\] has no 'chief' entry \(it has \['worker'\]\)",
        ),
    ],
)
def test_bad_task(data, match):
    with pytest.raises(TFConfigError, match=match):
        read_tf_config(env(data))


@pytest.mark.parametrize(
    "address, match",
    [
        (
            "localhost",
            r"\['worker'\]\[1\] = 'localhost' is not a valid address: it has no host and port",
        ),
        (":2222", r"= ':2222' is not a valid address: it has no host"),
        ("h:0", r"the port '0' is not a number from 1 to 65535"),
        ("h:65536", r"the port '65536' is not a number from 1 to 65535"),
        ("h:-1", r"the port '-1' is not a number"),
        ("h:port", r"the port 'port' is not a number"),
        ("h:", r"the port '' is not a number"),
        ("grpc://h:2222", r"write no scheme such as grpc://"),
        ("h h:2222", r"contains whitespace"),
        ("::1:2222", r"an IPv6 host must be written in brackets"),
        ("[::1:2222", r"an IPv6 host must be written in brackets"),
        (2222, r"\['worker'\]\[1\] must be a \"host:port\" string\. Received: 2222 of type int"),
    ],
)
def test_bad_address(address, match):
    with pytest.raises(TFConfigError, match=match + r".*host:port"):
        read_tf_config(env(cfg({"worker": ["127.0.0.1:2222", address]})))


@pytest.mark.parametrize(
    "cluster, match",
    [
        (
            {"worker": ["h:1", "h:1"]},
            r"\['worker'\]\[1\] = 'h:1' duplicates TF_CONFIG\[\"cluster\"\]\['worker'\]\[0\]",
        ),
        (
            {"chief": ["H:1"], "worker": ["h:1"]},
            r"\['worker'\]\[0\] = 'h:1' duplicates .*\['chief'\]\[0\].*another port",
        ),
    ],
)
def test_duplicate_addresses(cluster, match):
    with pytest.raises(TFConfigError, match=match):
        read_tf_config(env(cfg(cluster)))


def test_more_than_one_chief():
    match = r"\['chief'\] lists 2 addresses .*at most one chief\. List the other processes under"
    with pytest.raises(TFConfigError, match=match):
        read_tf_config(env(cfg({"chief": ["h:1", "h:2"], "worker": ["h:3"]}, "chief")))


def test_more_than_one_evaluator():
    match = r"\['evaluator'\] lists 2 addresses .*at most one evaluator"
    with pytest.raises(TFConfigError, match=match):
        read_tf_config(env(cfg({"worker": ["h:1"], "evaluator": ["h:2", "h:3"]})))


def test_error_is_a_value_error():
    assert issubclass(TFConfigError, ValueError)


# --- writing ----------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, 1])
def test_build_round_trips(rank):
    text = build_tf_config(W2, rank)
    assert json.loads(text) == {
        "cluster": {"worker": W2},
        "task": {"type": "worker", "index": rank},
    }
    config = parse_tf_config(text)
    assert (config.rank, config.num_workers, config.is_chief) == (rank, 2, rank == 0)


@pytest.mark.parametrize(
    "addresses, rank, match",
    [
        ([], 0, r"`addresses` to be a non-empty list.*Received: addresses=\[\]"),
        ("h:1", 0, r"`addresses` to be a non-empty list.*Received: addresses='h:1'"),
        (["h:1", "h"], 0, r"addresses\[1\] = 'h' is not a valid address"),
        (["h:1", "h:1"], 0, r"addresses\[1\] = 'h:1' duplicates addresses\[0\]"),
        (W2, 2, r"`rank` to be an int from 0 to 1 .*Received: rank=2"),
        (W2, -1, r"Received: rank=-1"),
        (W2, "0", r"Received: rank='0'"),
    ],
)
def test_build_errors(addresses, rank, match):
    with pytest.raises(TFConfigError, match=match):
        build_tf_config(addresses, rank)


def test_check_addresses_names_the_source():
    with pytest.raises(TFConfigError, match=r"--hosts entry 1 = 'a:1' duplicates --hosts entry 0"):
        check_addresses([("--hosts entry 0", "a:1"), ("--hosts entry 1", "a:1")])


def test_no_tensorflow_import():
    import subprocess
    import sys

    code = (
        "import sys, kerasfed.distributed.tf_config; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
