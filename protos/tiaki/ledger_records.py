"""What each kind of ledger chain entry says: one typed record per entry ``type``.

Writers (the node's ledger, the coordinator's mirror) build bodies with
``.body()``; readers (``tiaki audit``, ``tiaki-node ledger``) parse them with
:func:`parse_record`, so both sides share one vocabulary. Amounts are exact
decimal text in a body and :class:`~fractions.Fraction` in a record.

Entry types, in the order a ledger usually meets them:

- ``opened``: the ledger was created (which kind, its id).
- ``signing_key``: from here on exports are signed by this public key.
- ``policy`` (node): the NGO's budget policy in force from here on, with its
  rules for secure sums if it takes part in them (:mod:`tiaki.secure_records`).
- ``period`` (node): a budget period began (roll-over is an entry too).
- ``charge`` (node): one answered query and what it cost; for a node's part in
  a secure sum, also the session and the worst-case charge.
- ``question`` (coordinator): a question about to be sent to these nodes.
- ``outcome`` (coordinator): one node's outcome for a question.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tiaki import body_fields as f
from tiaki.body_fields import EXACT_AMOUNT as EXACT_AMOUNT  # re-exported: readers name it here
from tiaki.budget import format_amount
from tiaki.chain import ChainEntry, ChainFormatError
from tiaki.secure_records import SecureAggregationRecord as SecureAggregationRecord
from tiaki.secure_records import SecurePeerRecord as SecurePeerRecord
from tiaki.secure_records import SecureRevealRecord as SecureRevealRecord
from tiaki.secure_records import SecureSessionRecord as SecureSessionRecord

NODE_LEDGER = "node"
COORDINATOR_LEDGER = "coordinator"


@dataclass(frozen=True)
class Opened:
    ledger: str  # NODE_LEDGER or COORDINATOR_LEDGER
    ledger_id: str
    schema_version: int

    type = "opened"

    def body(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger,
            "ledger_id": self.ledger_id,
            "schema_version": self.schema_version,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Opened:
        return cls(
            f.text(body, "ledger"), f.text(body, "ledger_id"), f.count(body, "schema_version")
        )


@dataclass(frozen=True)
class SigningKeyRecord:
    public_key: str

    type = "signing_key"

    def body(self) -> dict[str, Any]:
        return {"public_key": self.public_key}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SigningKeyRecord:
        return cls(f.text(body, "public_key"))


@dataclass(frozen=True)
class GrantRecord:
    """One coordinator the node's policy lets ask, and its limits (None: no narrowing)."""

    identity: str | None
    fingerprint: str | None
    budget_cap: Fraction | None
    kinds: tuple[str, ...] | None
    # The key its envelopes through a hub are signed with; the body has no such key
    # when None (grants chained before hubs read the same).
    signing_key: str | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "identity": self.identity,
            "fingerprint": self.fingerprint,
            "budget_cap": f.opt(self.budget_cap),
            "kinds": None if self.kinds is None else list(self.kinds),
        }
        if self.signing_key is not None:
            body["signing_key"] = self.signing_key
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GrantRecord:
        kinds = None if body.get("kinds") is None else f.texts(body, "kinds")
        return cls(
            f.optional_text(body, "identity"),
            f.optional_text(body, "fingerprint"),
            f.optional_amount(body, "budget_cap"),
            kinds,
            f.optional_text(body, "signing_key"),
        )


@dataclass(frozen=True)
class PolicyRecord:
    """The node's budget policy from this entry on. ``period`` is none/yearly/quarterly/monthly.

    ``secure_aggregation`` is None when the node takes no part in secure sums;
    the body then has no such key (policies chained before it existed read
    the same).
    """

    node_id: str
    definition: str
    period: str
    limit: Fraction
    lifetime_limit: Fraction | None
    per_query_max: Fraction
    coordinators: tuple[GrantRecord, ...]
    secure_aggregation: SecureAggregationRecord | None = None

    type = "policy"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "node_id": self.node_id,
            "definition": self.definition,
            "period": self.period,
            "limit": format_amount(self.limit),
            "lifetime_limit": f.opt(self.lifetime_limit),
            "per_query_max": format_amount(self.per_query_max),
            "coordinators": [g.body() for g in self.coordinators],
        }
        if self.secure_aggregation is not None:
            body["secure_aggregation"] = self.secure_aggregation.body()
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PolicyRecord:
        grants = body.get("coordinators")
        if not isinstance(grants, list) or not all(isinstance(g, dict) for g in grants):
            raise ChainFormatError("'coordinators' must be a list of objects")
        secure = body.get("secure_aggregation")
        if secure is not None and not isinstance(secure, dict):
            raise ChainFormatError("'secure_aggregation' must be an object")
        return cls(
            f.text(body, "node_id"),
            f.text(body, "definition"),
            f.text(body, "period"),
            f.amount(body, "limit"),
            f.optional_amount(body, "lifetime_limit"),
            f.amount(body, "per_query_max"),
            tuple(GrantRecord.from_body(g) for g in grants),
            None if secure is None else SecureAggregationRecord.from_body(secure),
        )

    def cap_for(self, identity: str) -> Fraction | None:
        """The per-period cap the policy sets for ``identity`` by name, if any."""
        for grant in self.coordinators:
            if grant.identity == identity:
                return grant.budget_cap
        return None


@dataclass(frozen=True)
class PeriodRecord:
    """A budget period began. ``start``/``end`` are ISO dates ("" for the lifetime period)."""

    period: str
    start: str
    end: str

    type = "period"

    def body(self) -> dict[str, Any]:
        return {"period": self.period, "start": self.start, "end": self.end}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PeriodRecord:
        return cls(f.text(body, "period"), f.text(body, "start"), f.text(body, "end"))


@dataclass(frozen=True)
class ChargeRecord:
    """One answered query at a node: who asked what, what it cost, in which period.

    ``charge`` is what was spent: exactly the requested cost for every entry
    written since charges were made exact, with ``privacy_map`` (OpenDP's map
    at the noise scales used, at most the charge) beside it. Older entries
    charged the map itself and have no ``privacy_map``.

    The stored answer is identified by ``response_commitment`` (a salted hash
    whose salt only the asker received, :mod:`tiaki.receipts`), or in older
    entries by a bare ``response_sha256``; exactly one of the two is set.

    A node's part in a secure sum (its noised, then masked, input) is a
    charge too: ``charge`` counts against the budget as for an answer,
    ``privacy_map`` is the aggregate guarantee (ρ_agg), and ``worst_case``
    (ρ_local, what its share alone protects) and ``secure_session`` are set,
    both or neither.
    """

    query_id: str
    identity: str  # from the caller's verified certificate
    analyst: str  # as claimed by the coordinator
    kind: str
    canonical_query: str
    requested: Fraction
    charge: Fraction
    period: str
    dataset_version: str
    response_commitment: str | None = None
    privacy_map: Fraction | None = None
    response_sha256: str | None = None
    worst_case: Fraction | None = None
    secure_session: SecureSessionRecord | None = None

    type = "charge"

    def __post_init__(self) -> None:
        if (self.response_commitment is None) == (self.response_sha256 is None):
            raise ChainFormatError(
                "a charge identifies its answer by exactly one of 'response_commitment' and "
                "'response_sha256'"
            )
        if (self.worst_case is None) != (self.secure_session is None):
            raise ChainFormatError(
                "a secure sum's charge has both 'worst_case' and 'secure_session', any other "
                "charge neither"
            )

    @property
    def is_secure(self) -> bool:
        """Whether this pays for a node's part in a secure sum rather than an answer."""
        return self.secure_session is not None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "query_id": self.query_id,
            "identity": self.identity,
            "analyst": self.analyst,
            "kind": self.kind,
            "canonical_query": self.canonical_query,
            "requested": format_amount(self.requested),
            "charge": format_amount(self.charge),
            "period": self.period,
            "dataset_version": self.dataset_version,
        }
        if self.privacy_map is not None:
            body["privacy_map"] = format_amount(self.privacy_map)
        if self.response_commitment is not None:
            body["response_commitment"] = self.response_commitment
        if self.response_sha256 is not None:
            body["response_sha256"] = self.response_sha256
        if self.worst_case is not None and self.secure_session is not None:
            body["worst_case"] = format_amount(self.worst_case)
            body["secure_session"] = self.secure_session.body()
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ChargeRecord:
        return cls(
            f.text(body, "query_id"),
            f.text(body, "identity"),
            f.text(body, "analyst"),
            f.text(body, "kind"),
            f.text(body, "canonical_query"),
            f.amount(body, "requested"),
            f.amount(body, "charge"),
            f.text(body, "period"),
            f.text(body, "dataset_version"),
            response_commitment=f.optional_text(body, "response_commitment"),
            privacy_map=f.optional_amount(body, "privacy_map"),
            response_sha256=f.optional_text(body, "response_sha256"),
            worst_case=f.optional_amount(body, "worst_case"),
            secure_session=_session(body),
        )


def _session(body: Mapping[str, Any]) -> SecureSessionRecord | None:
    session = body.get("secure_session")
    if session is None:
        return None
    if not isinstance(session, dict):
        raise ChainFormatError("'secure_session' must be an object")
    return SecureSessionRecord.from_body(session)


@dataclass(frozen=True)
class QuestionRecord:
    """A question a coordinator committed to asking ``nodes`` (before asking them)."""

    query_id: str
    analyst: str
    identity: str  # the coordinator's certificate identity
    canonical_query: str
    requested: Fraction
    definition: str
    nodes: tuple[str, ...]

    type = "question"

    def body(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "analyst": self.analyst,
            "identity": self.identity,
            "canonical_query": self.canonical_query,
            "requested": format_amount(self.requested),
            "definition": self.definition,
            "nodes": list(self.nodes),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> QuestionRecord:
        return cls(
            f.text(body, "query_id"),
            f.text(body, "analyst"),
            f.text(body, "identity"),
            f.text(body, "canonical_query"),
            f.amount(body, "requested"),
            f.text(body, "definition"),
            f.texts(body, "nodes"),
        )


@dataclass(frozen=True)
class OutcomeRecord:
    """One node's outcome for a question, as the coordinator learned it.

    ``charge`` is what this reply reported (None for refusals and failures);
    the first charge reported for a (question, node) is the one that counts.
    """

    query_id: str
    node: str
    status: str
    reason: str
    charge: Fraction | None
    attempts: int
    dataset_version: str
    node_id: str

    type = "outcome"

    def body(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "node": self.node,
            "status": self.status,
            "reason": self.reason,
            "charge": f.opt(self.charge),
            "attempts": self.attempts,
            "dataset_version": self.dataset_version,
            "node_id": self.node_id,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> OutcomeRecord:
        return cls(
            f.text(body, "query_id"),
            f.text(body, "node"),
            f.text(body, "status"),
            f.text(body, "reason"),
            f.optional_amount(body, "charge"),
            f.count(body, "attempts"),
            f.text(body, "dataset_version"),
            f.text(body, "node_id"),
        )


Record = (
    Opened
    | SigningKeyRecord
    | PolicyRecord
    | PeriodRecord
    | ChargeRecord
    | SecureRevealRecord
    | QuestionRecord
    | OutcomeRecord
)

_PARSERS: dict[str, Any] = {
    cls.type: cls.from_body
    for cls in (
        Opened,
        SigningKeyRecord,
        PolicyRecord,
        PeriodRecord,
        ChargeRecord,
        SecureRevealRecord,
        QuestionRecord,
        OutcomeRecord,
    )
}

NODE_TYPES = frozenset({"opened", "signing_key", "policy", "period", "charge", "secure_reveal"})
COORDINATOR_TYPES = frozenset({"opened", "signing_key", "question", "outcome"})


def parse_record(entry: ChainEntry) -> Record:
    """The typed record an entry holds; :class:`ChainFormatError` if it is malformed."""
    parser = _PARSERS.get(entry.type)
    if parser is None:
        raise ChainFormatError(f"unknown entry type {entry.type!r:.40}")
    record: Record = parser(entry.body)
    return record
