"""Typed errors and the one place that maps them to gRPC status codes.

Every error a node returns depends only on the query, the schema, the policy
and the budget ledger, never on the records: a message must not reveal
whether any record matched anything.
"""

from __future__ import annotations

from fractions import Fraction

import grpc

from tiaki.budget import format_amount


class TiakiError(Exception):
    """Base of every error tiaki reports to a person or across the wire."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # Messages echo parts of a request; a hostile request must not make them huge.
    MAX_MESSAGE_CHARS = 600

    def __init__(self, message: str) -> None:
        if len(message) > self.MAX_MESSAGE_CHARS:
            message = message[: self.MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.message = message


class InvalidQueryError(TiakiError):
    """The query is malformed or does not fit the node's schema."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class PolicyViolationError(TiakiError):
    """The query is well formed but the node's policy forbids it."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class InsufficientBudgetError(TiakiError):
    """The requested privacy cost exceeds what the node may still spend.

    Carries the amounts so a coordinator can tell the analyst exactly how far
    over the request was. Refusals cost nothing.
    """

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, requested: Fraction, remaining: Fraction, limit: str) -> None:
        self.requested = requested
        self.remaining = remaining
        self.limit = limit
        super().__init__(
            f"requested privacy cost {format_amount(requested)} exceeds the {limit} "
            f"of {format_amount(remaining)}; nothing was spent"
        )


class QueryIdConflictError(TiakiError):
    """A query id was reused for a different query by the same identity."""

    status_code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, query_id: str) -> None:
        self.query_id = query_id
        super().__init__(
            f"query id {query_id!r} was already used for a different query; "
            "use a new id for a new question"
        )


class NotReadyError(TiakiError):
    """The node has no dataset or ledger loaded yet."""

    status_code = grpc.StatusCode.UNAVAILABLE


class InternalError(TiakiError):
    """Something failed inside the node; details stay in the node's log."""

    status_code = grpc.StatusCode.INTERNAL


_BY_STATUS: dict[grpc.StatusCode, type[TiakiError]] = {
    cls.status_code: cls
    for cls in (
        InvalidQueryError,
        PolicyViolationError,
        InsufficientBudgetError,
        QueryIdConflictError,
        NotReadyError,
        InternalError,
    )
}


class RemoteError(TiakiError):
    """An error reported by a remote node, rebuilt on the client side."""

    def __init__(self, status_code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def kind(self) -> type[TiakiError] | None:
        """The error class the node raised, if the status code is one of ours."""
        return _BY_STATUS.get(self.status_code)


def from_rpc_error(error: grpc.RpcError) -> RemoteError:
    """Turn a failed call into a :class:`RemoteError` carrying code and message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return RemoteError(code, details or code.name)
