"""The one place where ``TF_CONFIG`` is read, checked and written.

``TF_CONFIG`` is the JSON environment variable through which TensorFlow's
multi-worker strategies learn the cluster and which task this process is, e.g.::

    {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
     "task": {"type": "worker", "index": 1}}

TensorFlow checks it late (when the strategy starts its gRPC server) and reports
mistakes as hangs or terse errors; here every mistake becomes a
:class:`TFConfigError` that names the field, the value received and the fix,
before any graph or process starts. The rules follow
``tensorflow/python/distribute/multi_worker_util.py`` (task types, at most one
chief and one evaluator, an evaluator may be absent from the cluster).

This module must not import TensorFlow: ``kerasfed launch`` uses it and has to
start fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from kerasfed.errors import TFConfigError  # noqa: F401  (defined with the family)

TF_CONFIG_VAR = "TF_CONFIG"

TASK_TYPES: tuple[str, ...] = ("chief", "worker", "ps", "evaluator")
"""Task types TensorFlow accepts in ``TF_CONFIG``."""

TRAINING_TASK_TYPES: tuple[str, ...] = ("chief", "worker")
"""Task types whose processes run the training steps (ranks are given to these)."""

_ADDRESS_HINT = (
    'Write each address as "host:port" with a port from 1 to 65535, '
    'e.g. "10.0.0.1:2222", "node-1.example.com:2222" or "[::1]:2222".'
)
_EXAMPLE = (
    '{"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """A checked ``TF_CONFIG``: the cluster and which task this process is.

    Attributes:
        cluster: Task type to the list of ``"host:port"`` addresses, e.g.
            ``{"chief": ["h0:2222"], "worker": ["h1:2222", "h2:2222"]}``.
        task_type: This process's task type: ``"chief"``, ``"worker"``, ``"ps"``
            or ``"evaluator"``.
        task_index: This process's index in ``cluster[task_type]``.
    """

    cluster: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        """Number of processes that train: the chief plus the workers."""
        return sum(len(self.cluster.get(t, ())) for t in TRAINING_TASK_TYPES)

    @property
    def trains(self) -> bool:
        """Whether this task runs training steps (it is a chief or a worker)."""
        return self.task_type in TRAINING_TASK_TYPES

    @property
    def is_chief(self) -> bool:
        """Whether this task is the chief: the ``"chief"`` task, or worker 0 when
        the cluster has no chief (TensorFlow's rule; the chief writes checkpoints)."""
        if self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_index == 0 and "chief" not in self.cluster

    @property
    def rank(self) -> int:
        """This task's place among the training processes, ``0..num_workers-1``,
        the chief first.

        Raises:
            TFConfigError: If this task does not train (a ``"ps"`` or
                ``"evaluator"`` task); check :attr:`trains` first.
        """
        if self.task_type == "chief":
            return self.task_index
        if self.task_type == "worker":
            return len(self.cluster.get("chief", ())) + self.task_index
        raise TFConfigError(
            f"A {self.task_type!r} task has no training rank; only "
            f"{' and '.join(TRAINING_TASK_TYPES)} tasks do. Check `ClusterConfig.trains` first."
        )


def read_tf_config(environ: Mapping[str, str] | None = None) -> ClusterConfig | None:
    """Reads and checks ``TF_CONFIG``.

    Args:
        environ: Where to read ``TF_CONFIG`` from. Defaults to ``os.environ``.

    Returns:
        The checked configuration, or ``None`` when ``TF_CONFIG`` is unset or
        empty (a single-machine run).

    Raises:
        TFConfigError: If ``TF_CONFIG`` is not valid JSON, not an object, lacks
            ``cluster`` or ``task``, names an unknown task type, an index outside
            the cluster, a malformed or duplicate address, or more than one chief.

    Example:
        >>> cfg = read_tf_config({"TF_CONFIG": '{"cluster": {"worker": '
        ...     '["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 1}}'})
        >>> cfg.rank, cfg.num_workers, cfg.is_chief
        (1, 2, False)
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG_VAR, "")
    if not text.strip():
        return None
    return parse_tf_config(text)


def parse_tf_config(text: str) -> ClusterConfig:
    """Parses and checks the JSON text of a ``TF_CONFIG``.

    Args:
        text: The JSON text.

    Returns:
        The checked configuration.

    Raises:
        TFConfigError: See :func:`read_tf_config`.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TFConfigError(
            f"TF_CONFIG is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} "
            f"(character {e.pos}). Received: {_shorten(text)}. Expected for example: {_EXAMPLE}"
        ) from None
    if not isinstance(data, dict):
        raise TFConfigError(
            f"TF_CONFIG must be a JSON object. Received a JSON {_json_type(data)}: "
            f"{_shorten(text)}. Expected for example: {_EXAMPLE}"
        )
    cluster = _check_cluster(data)
    task_type, task_index = _check_task(data, cluster)
    return ClusterConfig(cluster=cluster, task_type=task_type, task_index=task_index)


def build_tf_config(addresses: Sequence[str], rank: int) -> str:
    """Writes the ``TF_CONFIG`` of one process in a cluster of equal workers.

    Args:
        addresses: ``"host:port"`` of every worker, in rank order.
        rank: Index of this process in ``addresses``.

    Returns:
        The JSON text, ``{"cluster": {"worker": [...]}, "task": {"type":
        "worker", "index": rank}}``.

    Raises:
        TFConfigError: If ``addresses`` is empty, holds a malformed or duplicate
            address, or ``rank`` is not an index into it.

    Example:
        >>> build_tf_config(["10.0.0.1:2222"], 0)
        '{"cluster": {"worker": ["10.0.0.1:2222"]}, "task": {"type": "worker", "index": 0}}'
    """
    if isinstance(addresses, str) or not isinstance(addresses, Sequence) or not addresses:
        raise TFConfigError(
            "Expected `addresses` to be a non-empty list of \"host:port\" strings. "
            f"Received: addresses={addresses!r}."
        )
    check_addresses([(f"addresses[{i}]", a) for i, a in enumerate(addresses)])
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < len(addresses):
        raise TFConfigError(
            f"Expected `rank` to be an int from 0 to {len(addresses) - 1} (one per address). "
            f"Received: rank={rank!r}."
        )
    return json.dumps(
        {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": rank}}
    )


def split_address(address: Any, *, where: str = "address") -> tuple[str, int]:
    """Splits ``"host:port"`` into host and port, checking both.

    Args:
        address: The address; IPv6 hosts go in brackets, ``"[::1]:2222"``.
        where: How to name the value in the error message, e.g.
            ``'TF_CONFIG["cluster"]["worker"][1]'``.

    Returns:
        ``(host, port)``; an IPv6 host keeps its brackets.

    Raises:
        TFConfigError: If ``address`` is not a string of that form or the port is
            outside 1..65535.
    """
    if not isinstance(address, str):
        raise TFConfigError(
            f"{where} must be a \"host:port\" string. Received: {address!r} of type "
            f"{type(address).__name__}. {_ADDRESS_HINT}"
        )
    host, sep, port_text = address.rpartition(":")
    problem = None
    if not sep or not host:
        problem = "it has no host and port separated by ':'"
    elif any(c.isspace() for c in address) or "/" in host:
        problem = "it contains whitespace or '/' (write no scheme such as grpc://)"
    elif host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        problem = "an IPv6 host must be written in brackets"
    elif not port_text.isdecimal() or not 1 <= int(port_text) <= 65535:
        problem = f"the port {port_text!r} is not a number from 1 to 65535"
    if problem:
        raise TFConfigError(
            f"{where} = {address!r} is not a valid address: {problem}. {_ADDRESS_HINT}"
        )
    return host, int(port_text)


def check_addresses(named: Sequence[tuple[str, Any]]) -> None:
    """Checks a list of addresses and that no address appears twice.

    Args:
        named: ``(name, address)`` pairs; the name says where the address came
            from in error messages, e.g. ``('--hosts entry 2', 'h2:2222')``.

    Raises:
        TFConfigError: On a malformed address or an address used twice.
    """
    seen: dict[tuple[str, int], str] = {}
    for name, address in named:
        host, port = split_address(address, where=name)
        key = (host.lower(), port)
        if key in seen:
            raise TFConfigError(
                f"{name} = {address!r} duplicates {seen[key]}: two tasks cannot listen on "
                "the same host and port. Give every task its own address (e.g. another port)."
            )
        seen[key] = name


def _check_cluster(data: dict) -> dict[str, list[str]]:
    if "cluster" not in data:
        raise TFConfigError(
            f"TF_CONFIG has no \"cluster\" key; it has {sorted(data)}. Add the addresses of all "
            f"tasks, e.g. {_EXAMPLE}; or unset TF_CONFIG to train on this machine only."
        )
    cluster = data["cluster"]
    where = 'TF_CONFIG["cluster"]'
    if not isinstance(cluster, dict) or not cluster:
        raise TFConfigError(
            f"{where} must be a non-empty object mapping task types to address lists. "
            f"Received: {cluster!r}. Expected for example: {_EXAMPLE}"
        )
    for task_type, addresses in cluster.items():
        if task_type not in TASK_TYPES:
            raise TFConfigError(
                f"{where} has the unknown task type {task_type!r}. Valid task types: "
                f"{', '.join(TASK_TYPES)}."
            )
        if not isinstance(addresses, list) or not addresses:
            raise TFConfigError(
                f"{where}[{task_type!r}] must be a non-empty list of \"host:port\" strings. "
                f"Received: {addresses!r}."
            )
    fixes = {"chief": 'List the other processes under "worker".', "evaluator": "Keep one."}
    for single, fix in fixes.items():
        if len(cluster.get(single, ())) > 1:
            raise TFConfigError(
                f"{where}[{single!r}] lists {len(cluster[single])} addresses "
                f"{cluster[single]!r}; a cluster has at most one {single}. {fix}"
            )
    if not any(t in cluster for t in TRAINING_TASK_TYPES):
        raise TFConfigError(
            f"{where} has no \"chief\" or \"worker\" entry (received task types "
            f"{sorted(cluster)}), so no process would train. Add the training processes "
            "under \"worker\"."
        )
    check_addresses(
        [
            (f"{where}[{task_type!r}][{i}]", address)
            for task_type, addresses in cluster.items()
            for i, address in enumerate(addresses)
        ]
    )
    return {task_type: list(addresses) for task_type, addresses in cluster.items()}


def _check_task(data: dict, cluster: dict[str, list[str]]) -> tuple[str, int]:
    if "task" not in data:
        raise TFConfigError(
            'TF_CONFIG has no "task" key, so this process does not know which task it is. '
            'Add e.g. "task": {"type": "worker", "index": 0}, with a different index in '
            "each process."
        )
    task = data["task"]
    if not isinstance(task, dict):
        raise TFConfigError(
            'TF_CONFIG["task"] must be an object like {"type": "worker", "index": 0}. '
            f"Received: {task!r}."
        )
    for key in ("type", "index"):
        if key not in task:
            raise TFConfigError(
                f'TF_CONFIG["task"] has no "{key}" key (received {task!r}). Expected e.g. '
                '{"type": "worker", "index": 0}.'
            )
    task_type, index = task["type"], task["index"]
    if task_type not in TASK_TYPES:
        raise TFConfigError(
            f'TF_CONFIG["task"]["type"] = {task_type!r} is not a task type. Valid task types: '
            f"{', '.join(TASK_TYPES)}."
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise TFConfigError(
            f'TF_CONFIG["task"]["index"] must be a JSON integer. Received: {index!r} of type '
            f"{_json_type(index)}. Write e.g. \"index\": 1 (no quotes)."
        )
    if index < 0:
        raise TFConfigError(
            f'TF_CONFIG["task"]["index"] = {index} is negative; indices count from 0.'
        )
    if task_type not in cluster:
        # TensorFlow lets an evaluator stay outside the cluster (it joins no collective).
        if task_type == "evaluator":
            return task_type, index
        raise TFConfigError(
            f'TF_CONFIG["task"]["type"] = {task_type!r}, but TF_CONFIG["cluster"] has no '
            f"{task_type!r} entry (it has {sorted(cluster)}). Add this task's address under "
            f"{task_type!r} or fix the task type."
        )
    size = len(cluster[task_type])
    if index >= size:
        raise TFConfigError(
            f'TF_CONFIG["task"]["index"] = {index} is outside TF_CONFIG["cluster"]'
            f"[{task_type!r}], which lists {size} address(es), so valid indices are "
            f"0..{size - 1}. Fix the index or add this task's address to the cluster."
        )
    return task_type, index


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _shorten(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
