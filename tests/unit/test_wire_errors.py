"""Every error type survives the wire: encode, status, rebuild gives the same type and fields."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from tiaki.errors import (
    BY_REASON,
    NODE_ERRORS,
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
from tiaki.wire_errors import DOMAIN, from_rpc_error, status_code_of, to_status

EXAMPLES: list[TiakiError] = [
    InvalidQueryError("no column 'regoin'"),
    PolicyViolationError("this node does not answer proportion queries"),
    PerQueryMaximumError(Fraction(3, 2), Fraction(1)),
    InsufficientBudgetError(Fraction(3, 10), Fraction(1, 4), "remaining budget for period 2026"),
    WorstCaseMaximumError(Fraction(6), Fraction(5)),
    WorstCaseExhaustedError(Fraction(3), Fraction(1, 2)),
    QueryIdConflictError("q-7"),
    SecureAggregationError("the session is past its deadline; nothing was done"),
    NotReadyError("this node has no records loaded yet"),
    BusyError("coord-a", 4),
    InternalError("1a2b3c4d"),
]
CODES = {
    InvalidQueryError: grpc.StatusCode.INVALID_ARGUMENT,
    PolicyViolationError: grpc.StatusCode.PERMISSION_DENIED,
    PerQueryMaximumError: grpc.StatusCode.PERMISSION_DENIED,
    InsufficientBudgetError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    WorstCaseMaximumError: grpc.StatusCode.PERMISSION_DENIED,
    WorstCaseExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QueryIdConflictError: grpc.StatusCode.ALREADY_EXISTS,
    SecureAggregationError: grpc.StatusCode.FAILED_PRECONDITION,
    NotReadyError: grpc.StatusCode.UNAVAILABLE,
    BusyError: grpc.StatusCode.UNAVAILABLE,
    InternalError: grpc.StatusCode.INTERNAL,
}


class FailedCall(grpc.RpcError):  # type: ignore[misc]
    """What a client holds after a call ended with ``status``."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, Any], ...] = ()
    ) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailing


def over_the_wire(error: TiakiError) -> TiakiError:
    status = to_status(error)
    return from_rpc_error(
        FailedCall(status.code, status.details, status.trailing_metadata), "ngo-a:50051"
    )


def fields(error: TiakiError) -> dict[str, Any]:
    return {k: v for k, v in vars(error).items() if k != "node"}


def test_every_node_error_has_an_example_and_one_reason() -> None:
    assert {type(e) for e in EXAMPLES} == set(NODE_ERRORS) == set(CODES)
    assert len(BY_REASON) == len(NODE_ERRORS)


@pytest.mark.parametrize("error", EXAMPLES, ids=[type(e).__name__ for e in EXAMPLES])
def test_the_round_trip_rebuilds_the_same_type_and_fields(error: TiakiError) -> None:
    rebuilt = over_the_wire(error)
    assert type(rebuilt) is type(error)
    assert fields(rebuilt) == fields(error)
    assert rebuilt.message == error.message and str(rebuilt) == str(error)
    assert status_code_of(rebuilt) is status_code_of(error) is CODES[type(error)]
    assert (error.node, rebuilt.node) == (None, "ngo-a:50051")


def test_the_status_carries_an_error_info_with_the_amounts() -> None:
    status = to_status(InsufficientBudgetError(Fraction(3, 10), Fraction(1, 4), "lifetime"))
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    [(key, raw)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(raw)
    assert rich.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert (info.domain, info.reason) == (DOMAIN, "BUDGET_EXHAUSTED")
    assert dict(info.metadata) == {"requested": "0.3", "remaining": "0.25", "limit": "lifetime"}


def test_the_per_query_maximum_is_a_budget_refusal_with_its_own_reason() -> None:
    rebuilt = over_the_wire(PerQueryMaximumError(Fraction(3, 2), Fraction(1)))
    assert isinstance(rebuilt, PerQueryMaximumError)
    assert isinstance(rebuilt, InsufficientBudgetError)
    assert (rebuilt.requested, rebuilt.maximum, rebuilt.limit) == (
        Fraction(3, 2),
        Fraction(1),
        "per-query maximum",
    )
    assert "per-query maximum of 1" in rebuilt.message


def test_a_subclass_travels_as_its_nearest_known_ancestor() -> None:
    class Narrower(PolicyViolationError):
        pass

    rebuilt = over_the_wire(Narrower("no"))
    assert type(rebuilt) is PolicyViolationError and rebuilt.message == "no"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, NodeUnreachableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.UNIMPLEMENTED, UnsupportedCallError),
    ],
)
def test_grpcs_own_failures_become_calling_side_types(
    code: grpc.StatusCode, expected: type[TiakiError]
) -> None:
    rebuilt = from_rpc_error(FailedCall(code, "failed to connect to all addresses"), "x:1")
    assert type(rebuilt) is expected and status_code_of(rebuilt) is code
    assert rebuilt.message == "failed to connect to all addresses" and rebuilt.node == "x:1"


def test_an_unknown_reason_is_kept_whole() -> None:
    info = error_details_pb2.ErrorInfo(reason="SOMETHING_NEW", domain=DOMAIN)
    status = to_status(PolicyViolationError("new words"))
    rich = status_pb2.Status.FromString(status.trailing_metadata[0][1])
    rich.details[0].Pack(info)
    call = FailedCall(
        status.code, status.details, (("grpc-status-details-bin", rich.SerializeToString()),)
    )
    rebuilt = from_rpc_error(call)
    assert isinstance(rebuilt, RemoteError)
    assert (rebuilt.code, rebuilt.remote_reason, rebuilt.refused) == (
        "PERMISSION_DENIED",
        "SOMETHING_NEW",
        True,
    )
    assert status_code_of(rebuilt) is grpc.StatusCode.PERMISSION_DENIED


def test_a_known_reason_with_fields_we_cannot_read_is_kept_whole() -> None:
    status = to_status(InsufficientBudgetError(Fraction(1), Fraction(0), "lifetime"))
    rich = status_pb2.Status.FromString(status.trailing_metadata[0][1])
    info = error_details_pb2.ErrorInfo(
        reason="BUDGET_EXHAUSTED", domain=DOMAIN, metadata={"requested": "lots"}
    )
    rich.details[0].Pack(info)
    call = FailedCall(
        status.code, status.details, (("grpc-status-details-bin", rich.SerializeToString()),)
    )
    rebuilt = from_rpc_error(call)
    assert isinstance(rebuilt, RemoteError) and rebuilt.code == "RESOURCE_EXHAUSTED"


def test_a_status_without_details_keeps_its_code() -> None:
    rebuilt = from_rpc_error(FailedCall(grpc.StatusCode.INTERNAL, "Exception serializing"))
    assert isinstance(rebuilt, RemoteError) and not rebuilt.refused
    assert status_code_of(rebuilt) is grpc.StatusCode.INTERNAL


def test_the_worst_case_refusals_name_their_own_limits() -> None:
    cap = over_the_wire(WorstCaseMaximumError(Fraction(6), Fraction(5)))
    assert isinstance(cap, WorstCaseMaximumError) and isinstance(cap, PerQueryMaximumError)
    assert (cap.requested, cap.maximum, cap.limit) == (
        Fraction(6),
        Fraction(5),
        "worst-case per-query maximum",
    )
    assert "worst-case per-query maximum of 5" in cap.message
    spent = over_the_wire(WorstCaseExhaustedError(Fraction(3), Fraction(1, 2)))
    assert isinstance(spent, WorstCaseExhaustedError)
    assert (spent.requested, spent.remaining, spent.limit) == (
        Fraction(3),
        Fraction(1, 2),
        "remaining worst-case lifetime budget",
    )
