"""Every error tiaki reports to a person or across the wire, without any transport.

Each type names one stable reason (:attr:`TiakiError.reason`, the ``reason``
of the ``google.rpc.ErrorInfo`` a refusal travels with) and carries its
objects as plain fields, which :meth:`TiakiError.metadata` writes out as text
and :meth:`TiakiError.rebuild` reads back. Which gRPC status code goes with
which reason is decided at the edge (:mod:`tiaki.wire_errors`), not here.

Every error a node returns depends only on the query, the schema, the policy
and the budget ledger, never on the records: a message must not reveal
whether any record matched anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import ClassVar, Self

from tiaki.budget import format_amount, read_amount


class TiakiError(Exception):
    """Base of every error tiaki reports to a person or across the wire."""

    reason: ClassVar[str] = "INTERNAL"
    # Messages echo parts of a request; a hostile request must not make them huge.
    MAX_MESSAGE_CHARS = 600

    def __init__(self, message: str) -> None:
        if len(message) > self.MAX_MESSAGE_CHARS:
            message = message[: self.MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.message = message
        # The address of the node this error came from, on a coordinator: rebuilt
        # from its reply, or a call to it that failed. None: raised in this process.
        self.node: str | None = None

    def metadata(self) -> dict[str, str]:
        """The error's objects as text, for the wire; :meth:`rebuild` reads them back."""
        return {}

    @classmethod
    def rebuild(cls, message: str, metadata: Mapping[str, str]) -> Self:
        """The error a node raised, from its words and :meth:`metadata`.

        Raises KeyError or ValueError when the metadata is not this type's.
        """
        error = cls.__new__(cls)
        error._restore(metadata)
        TiakiError.__init__(error, message)  # the node's own words, not ours
        return error

    def _restore(self, metadata: Mapping[str, str]) -> None:
        """Set the fields :meth:`metadata` wrote (none here)."""


class InvalidQueryError(TiakiError):
    """The query is malformed or does not fit the node's schema."""

    reason = "INVALID_QUERY"


class PolicyViolationError(TiakiError):
    """The query is well formed but the node's policy forbids it."""

    reason = "NOT_ALLOWED"


class InsufficientBudgetError(TiakiError):
    """The requested privacy cost exceeds what the node may still spend.

    Carries the amounts so a coordinator can tell the analyst exactly how far
    over the request was: ``remaining`` is the most this request could have
    spent, under ``limit`` (the binding limit's name). Refusals cost nothing.
    """

    reason = "BUDGET_EXHAUSTED"

    def __init__(self, requested: Fraction, remaining: Fraction, limit: str) -> None:
        self.requested = requested
        self.remaining = remaining
        self.limit = limit
        super().__init__(
            f"requested privacy cost {format_amount(requested)} exceeds the {limit} "
            f"of {format_amount(remaining)}; nothing was spent"
        )

    def metadata(self) -> dict[str, str]:
        return {
            "requested": format_amount(self.requested),
            "remaining": format_amount(self.remaining),
            "limit": self.limit,
        }

    def _restore(self, metadata: Mapping[str, str]) -> None:
        self.requested = read_amount(metadata["requested"])
        self.remaining = read_amount(metadata["remaining"])
        self.limit = metadata["limit"]


class PerQueryMaximumError(InsufficientBudgetError):
    """The request asks for more than the node's per-query maximum.

    One type whichever check finds it (the plan of the query or the ledger's
    charge), so the reason is the same. ``remaining`` is the maximum: the most
    any one query may spend, whatever is left. Asking later never helps;
    asking for less does.
    """

    reason = "PER_QUERY_MAXIMUM"
    LIMIT = "per-query maximum"

    def __init__(self, requested: Fraction, maximum: Fraction) -> None:
        self.requested, self.remaining, self.limit = requested, maximum, self.LIMIT
        TiakiError.__init__(
            self,
            f"requested privacy cost {format_amount(requested)} exceeds this node's per-query "
            f"maximum of {format_amount(maximum)}; ask for less. Nothing was spent",
        )

    @property
    def maximum(self) -> Fraction:
        return self.remaining


class WorstCaseMaximumError(PerQueryMaximumError):
    """A secure sum's worst-case charge is above the node's worst-case per-query cap.

    The worst case (ρ_local) is what this node's share of the noise alone
    protects, should the coordinator and every other member collude; the
    policy caps it per session beside the ordinary per-query maximum.
    ``remaining`` is that cap. Nothing was spent.
    """

    reason = "WORST_CASE_MAXIMUM"
    LIMIT = "worst-case per-query maximum"

    def __init__(self, requested: Fraction, maximum: Fraction) -> None:
        self.requested, self.remaining, self.limit = requested, maximum, self.LIMIT
        TiakiError.__init__(
            self,
            f"a secure sum's worst-case privacy cost {format_amount(requested)} exceeds this "
            f"node's worst-case per-query maximum of {format_amount(maximum)}; ask for less. "
            "Nothing was spent",
        )


class WorstCaseExhaustedError(InsufficientBudgetError):
    """A secure sum's worst-case charge would take the worst-case lifetime total over its cap.

    ``remaining`` is what is left under the cap, which never refills.
    Nothing was spent.
    """

    reason = "WORST_CASE_EXHAUSTED"
    LIMIT = "remaining worst-case lifetime budget"

    def __init__(self, requested: Fraction, remaining: Fraction) -> None:
        super().__init__(requested, remaining, self.LIMIT)


class QueryIdConflictError(TiakiError):
    """A query id was reused for a different query by the same identity."""

    reason = "QUERY_ID_REUSED"

    def __init__(self, query_id: str) -> None:
        self.query_id = query_id
        super().__init__(
            f"query id {query_id!r} was already used for a different query; "
            "use a new id for a new question"
        )

    def metadata(self) -> dict[str, str]:
        return {"query_id": self.query_id}

    def _restore(self, metadata: Mapping[str, str]) -> None:
        self.query_id = metadata["query_id"]


class SecureAggregationError(TiakiError):
    """A node refuses a round of a secure sum, or a secure-sum message is not authentic.

    Every check of a session's parameters and every failed authentication of
    a relayed message raises this, so the protocol code handles one type
    whether a value came from a bug or from a hostile party. The message
    names public things (indices, lengths, members), never a secret, a share
    or a key. Nothing is charged for a refused round (a masked input is
    charged only once the ledger commits it).
    """

    reason = "SESSION_REFUSED"


class NotReadyError(TiakiError):
    """The node has no dataset or ledger loaded yet. Transient."""

    reason = "NOT_READY"


class BusyError(TiakiError):
    """This identity already has as many queries in flight as the node allows.

    Transient, unlike an exhausted budget: coordinators retry it with the same
    query id. ``in_flight`` is how many the identity had, the node's limit.
    """

    reason = "BUSY"

    def __init__(self, identity: str, in_flight: int) -> None:
        self.identity = identity
        self.in_flight = in_flight
        super().__init__(
            f"{identity!r} already has {in_flight} queries in flight at this node "
            f"(the most it allows); retry shortly with the same query id"
        )

    def metadata(self) -> dict[str, str]:
        return {"identity": self.identity, "in_flight": str(self.in_flight)}

    def _restore(self, metadata: Mapping[str, str]) -> None:
        self.identity = metadata["identity"]
        self.in_flight = int(metadata["in_flight"])


class InternalError(TiakiError):
    """Something failed inside the node; details stay in its log under ``reference``."""

    reason = "INTERNAL"

    def __init__(self, reference: str) -> None:
        self.reference = reference
        super().__init__(
            f"internal error in the node (reference {reference}); its operator can look it up"
        )

    def metadata(self) -> dict[str, str]:
        return {"reference": self.reference}

    def _restore(self, metadata: Mapping[str, str]) -> None:
        self.reference = metadata["reference"]


# ---------------------------------------------------------------- on the calling side
# No node sends these: they say what became of a call that got no tiaki answer.


class NodeUnreachableError(TiakiError):
    """The call got no answer from the node: the connection failed. Transient.

    The message is the transport's own account of what failed.
    """

    reason = "UNREACHABLE"


class DeadlineExceededError(NodeUnreachableError):
    """The node did not answer before the call's deadline. Transient."""

    reason = "DEADLINE_EXCEEDED"


class RequestExpiredError(DeadlineExceededError):
    """A request relayed by a hub reached its node after its deadline, or never did.

    The node did nothing and spent nothing (an expired envelope is refused
    before any work); asking again is a new request.
    """

    reason = "EXPIRED"


class UnsupportedCallError(TiakiError):
    """The node's tiaki predates the call: it does not offer it."""

    reason = "UNSUPPORTED"


class RemoteError(TiakiError):
    """A node's error whose reason this version does not know, kept whole.

    ``code`` is the transport's status name (such as ``"FAILED_PRECONDITION"``),
    ``reason`` the node's reason code if it sent one, and ``refused`` whether
    that status says the node declined the request (rather than failed).
    """

    reason = "UNKNOWN"

    def __init__(self, message: str, *, code: str, reason: str = "", refused: bool = False):
        super().__init__(message)
        self.code = code
        self.remote_reason = reason
        self.refused = refused


# What a node raises and a coordinator rebuilds, by reason.
NODE_ERRORS: tuple[type[TiakiError], ...] = (
    InvalidQueryError,
    PolicyViolationError,
    PerQueryMaximumError,
    InsufficientBudgetError,
    WorstCaseMaximumError,
    WorstCaseExhaustedError,
    QueryIdConflictError,
    SecureAggregationError,
    NotReadyError,
    BusyError,
    InternalError,
)
BY_REASON: dict[str, type[TiakiError]] = {cls.reason: cls for cls in NODE_ERRORS}
