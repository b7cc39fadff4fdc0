"""Typed errors across the wire: a ``google.rpc.Status`` with an ``ErrorInfo``, both ways.

A node refuses with the gRPC status code of the error's type and, in the
status details, an ``ErrorInfo`` whose ``domain`` is ``"tiaki"``, whose
``reason`` is the type's stable reason code and whose ``metadata`` are its
objects as text (the reason table is in ``tiaki/v1/node.proto``). A
coordinator rebuilds the same type with the same fields from it, so no code
reads a message to learn what happened. A status without a tiaki
``ErrorInfo`` (gRPC's own: connection failures, deadlines, calls a node does
not offer) becomes the calling-side type for its code, or a
:class:`~tiaki.errors.RemoteError` that keeps code and words.

This module and the servicer are the only places that know gRPC status codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from tiaki.errors import (
    BY_REASON,
    BusyError,
    DeadlineExceededError,
    InsufficientBudgetError,
    InternalError,
    InvalidQueryError,
    NodeUnreachableError,
    NotReadyError,
    PerQueryMaximumError,
    PolicyViolationError,
    QueryIdConflictError,
    RemoteError,
    SecureAggregationError,
    TiakiError,
    UnsupportedCallError,
    WorstCaseExhaustedError,
    WorstCaseMaximumError,
)

DOMAIN = "tiaki"

Code = grpc.StatusCode
# The status code of each error type; a subclass has its nearest ancestor's.
STATUS_CODES: Mapping[type[TiakiError], grpc.StatusCode] = {
    InvalidQueryError: Code.INVALID_ARGUMENT,
    PolicyViolationError: Code.PERMISSION_DENIED,
    # PERMISSION_DENIED, not RESOURCE_EXHAUSTED: nothing ran out, the policy
    # forbids any one query this large (and it is what the node always said).
    PerQueryMaximumError: Code.PERMISSION_DENIED,
    InsufficientBudgetError: Code.RESOURCE_EXHAUSTED,
    # As their ordinary counterparts: a cap on any one session, a total that ran out.
    WorstCaseMaximumError: Code.PERMISSION_DENIED,
    WorstCaseExhaustedError: Code.RESOURCE_EXHAUSTED,
    QueryIdConflictError: Code.ALREADY_EXISTS,
    # A refusal of the session as proposed (its roster, deadline, parameters or
    # a relayed message), not of the caller: FAILED_PRECONDITION.
    SecureAggregationError: Code.FAILED_PRECONDITION,
    NotReadyError: Code.UNAVAILABLE,
    # UNAVAILABLE, not RESOURCE_EXHAUSTED: it is transient, so clients retry it.
    BusyError: Code.UNAVAILABLE,
    InternalError: Code.INTERNAL,
    NodeUnreachableError: Code.UNAVAILABLE,
    DeadlineExceededError: Code.DEADLINE_EXCEEDED,
    UnsupportedCallError: Code.UNIMPLEMENTED,
}
# Codes by which a node declines a request, rather than fails or cannot be reached.
REFUSING = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.PERMISSION_DENIED,
        Code.RESOURCE_EXHAUSTED,
        Code.ALREADY_EXISTS,
        Code.FAILED_PRECONDITION,
    }
)


def status_code_of(error: TiakiError) -> grpc.StatusCode:
    """The gRPC status code ``error`` travels (or travelled) with."""
    if isinstance(error, RemoteError):
        return Code.__members__.get(error.code, Code.UNKNOWN)
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return Code.INTERNAL


def to_status(error: TiakiError) -> grpc.Status:
    """The rich status a node aborts a call with (``context.abort_with_status``)."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=DOMAIN, metadata=error.metadata()
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    code = status_code_of(error)
    status = status_pb2.Status(code=code.value[0], message=error.message, details=[detail])
    rich: grpc.Status = rpc_status.to_status(status)
    return rich


def error_info(call: Any) -> Any:
    """The tiaki ``ErrorInfo`` in a failed call's status details, if there is one."""
    try:
        status = rpc_status.from_call(call)
    except (AttributeError, ValueError):  # no trailing metadata, or a status that disagrees
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                return info
    return None


def from_rpc_error(call: grpc.RpcError, node: str | None = None) -> TiakiError:
    """The typed error a failed call stands for, with ``node`` (its address) on it."""
    code = call.code() if hasattr(call, "code") else Code.UNKNOWN
    message = (call.details() if hasattr(call, "details") else str(call)) or code.name
    info = error_info(call)
    error = _rebuilt(info, message) if info is not None else None
    if error is None:
        error = _by_code(code, message, info.reason if info is not None else "")
    error.node = node
    return error


def _rebuilt(info: Any, message: str) -> TiakiError | None:
    known = BY_REASON.get(info.reason)
    if known is None:
        return None
    try:
        return known.rebuild(message, dict(info.metadata))
    except (KeyError, ValueError, ZeroDivisionError):  # a reason we know with fields we do not
        return None


def _by_code(code: grpc.StatusCode, message: str, reason: str) -> TiakiError:
    """What a status says without a tiaki reason we know: gRPC's own failures."""
    if code is Code.DEADLINE_EXCEEDED:
        return DeadlineExceededError(message)
    if code is Code.UNAVAILABLE:
        return NodeUnreachableError(message)
    if code is Code.UNIMPLEMENTED:
        return UnsupportedCallError(message)
    return RemoteError(message, code=code.name, reason=reason, refused=code in REFUSING)
