"""Bytes one client receives and sends per round, read from a TFF round's types."""

from __future__ import annotations

from typing import Any

import numpy as np


def round_payload_bytes(tff: Any, next_computation: Any) -> tuple[int, int]:
    """Bytes one client receives and sends per round, from the round's TFF types.

    Walks the round computation's building block: every intrinsic that takes
    SERVER-placed values to CLIENTS (``federated_broadcast``) counts its server
    values as sent to each client; every intrinsic that takes CLIENTS-placed values
    to SERVER (``federated_sum``, ``federated_mean``, ``federated_aggregate``, secure
    sums) counts its client values as sent by each client. These are the dense,
    uncompressed tensor sizes (no protocol overhead; the clients' data never moves).
    """
    to_client = from_client = 0
    found: list[Any] = []

    def visit(comp):
        if isinstance(comp, tff.framework.Intrinsic) and isinstance(
            comp.type_signature, tff.FunctionType
        ):
            found.append(comp.type_signature)
        return comp, False

    tff.framework.transform_postorder(next_computation.to_building_block(), visit)
    for signature in found:
        param, result = signature.parameter, signature.result
        if param is None:
            continue
        if _has_placement(tff, result, tff.CLIENTS) and _has_placement(tff, param, tff.SERVER):
            to_client += _placed_bytes(tff, param, tff.SERVER)
        elif _has_placement(tff, result, tff.SERVER) and _has_placement(tff, param, tff.CLIENTS):
            from_client += _placed_bytes(tff, param, tff.CLIENTS)
    return to_client, from_client


def _has_placement(tff: Any, type_spec: Any, placement: Any) -> bool:
    if isinstance(type_spec, tff.FederatedType):
        return type_spec.placement is placement
    if isinstance(type_spec, tff.StructType):
        return any(_has_placement(tff, t, placement) for t in type_spec.children())
    return False


def _placed_bytes(tff: Any, type_spec: Any, placement: Any) -> int:
    if isinstance(type_spec, tff.FederatedType):
        return _tensor_bytes(tff, type_spec.member) if type_spec.placement is placement else 0
    if isinstance(type_spec, tff.StructType):
        return sum(_placed_bytes(tff, t, placement) for t in type_spec.children())
    return 0


def _tensor_bytes(tff: Any, type_spec: Any) -> int:
    if isinstance(type_spec, tff.TensorType):
        shape = type_spec.shape
        if shape is None or any(d is None for d in shape):
            return 0  # unknown size: not counted
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(type_spec.dtype).itemsize
    if isinstance(type_spec, tff.StructType):
        return sum(_tensor_bytes(tff, t) for t in type_spec.children())
    return 0
