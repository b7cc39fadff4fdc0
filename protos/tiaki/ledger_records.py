"""What each kind of ledger chain entry says: one typed record per entry ``type``.

Writers (the node's ledger, the coordinator's mirror) build bodies with
``.body()``; readers (``tiaki audit``, ``tiaki-node ledger``) parse them with
:func:`parse_record`, so both sides share one vocabulary. Amounts are exact
decimal text in a body and :class:`~fractions.Fraction` in a record.

Entry types, in the order a ledger usually meets them:

- ``opened``: the ledger was created (which kind, its id).
- ``signing_key``: from here on exports are signed by this public key.
- ``policy`` (node): the NGO's budget policy in force from here on.
- ``period`` (node): a budget period began (roll-over is an entry too).
- ``charge`` (node): one answered query and what it cost.
- ``question`` (coordinator): a question about to be sent to these nodes.
- ``outcome`` (coordinator): one node's outcome for a question.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tiaki.budget import format_amount, read_amount
from tiaki.chain import ChainEntry, ChainFormatError

NODE_LEDGER = "node"
COORDINATOR_LEDGER = "coordinator"


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ChainFormatError(f"'{key}' must be a string")
    return value


def _optional_text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ChainFormatError(f"'{key}' must be a string or null")
    return value


# What format_amount writes: plain decimals (a float's exact expansion has at
# most 1,074 fractional digits) or "p/q". Anything else is refused before
# Fraction sees it: "1e999999999" would take Fraction hours to expand.
EXACT_AMOUNT = re.compile(r"\d{1,20}(\.\d{1,1100})?|\d{1,1200}/\d{1,1200}")


def _amount(body: Mapping[str, Any], key: str) -> Fraction:
    text = _text(body, key)
    if not EXACT_AMOUNT.fullmatch(text):
        raise ChainFormatError(f"'{key}' is not an exact amount: {text!r:.40}")
    try:
        value = read_amount(text)
    except (ValueError, ZeroDivisionError):
        raise ChainFormatError(f"'{key}' is not an exact amount: {text!r:.40}") from None
    if value < 0:
        raise ChainFormatError(f"'{key}' is negative")
    return value


def _optional_amount(body: Mapping[str, Any], key: str) -> Fraction | None:
    return None if body.get(key) is None else _amount(body, key)


def _count(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ChainFormatError(f"'{key}' must be a non-negative integer")
    return value


def _texts(body: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ChainFormatError(f"'{key}' must be a list of strings")
    return tuple(value)


def _opt(value: Fraction | None) -> str | None:
    return None if value is None else format_amount(value)


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
        return cls(_text(body, "ledger"), _text(body, "ledger_id"), _count(body, "schema_version"))


@dataclass(frozen=True)
class SigningKeyRecord:
    public_key: str

    type = "signing_key"

    def body(self) -> dict[str, Any]:
        return {"public_key": self.public_key}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SigningKeyRecord:
        return cls(_text(body, "public_key"))


@dataclass(frozen=True)
class GrantRecord:
    """One coordinator the node's policy lets ask, and its limits (None: no narrowing)."""

    identity: str | None
    fingerprint: str | None
    budget_cap: Fraction | None
    kinds: tuple[str, ...] | None

    def body(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "fingerprint": self.fingerprint,
            "budget_cap": _opt(self.budget_cap),
            "kinds": None if self.kinds is None else list(self.kinds),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GrantRecord:
        kinds = None if body.get("kinds") is None else _texts(body, "kinds")
        return cls(
            _optional_text(body, "identity"),
            _optional_text(body, "fingerprint"),
            _optional_amount(body, "budget_cap"),
            kinds,
        )


@dataclass(frozen=True)
class PolicyRecord:
    """The node's budget policy from this entry on. ``period`` is none/yearly/quarterly/monthly."""

    node_id: str
    definition: str
    period: str
    limit: Fraction
    lifetime_limit: Fraction | None
    per_query_max: Fraction
    coordinators: tuple[GrantRecord, ...]

    type = "policy"

    def body(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "definition": self.definition,
            "period": self.period,
            "limit": format_amount(self.limit),
            "lifetime_limit": _opt(self.lifetime_limit),
            "per_query_max": format_amount(self.per_query_max),
            "coordinators": [g.body() for g in self.coordinators],
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PolicyRecord:
        grants = body.get("coordinators")
        if not isinstance(grants, list) or not all(isinstance(g, dict) for g in grants):
            raise ChainFormatError("'coordinators' must be a list of objects")
        return cls(
            _text(body, "node_id"),
            _text(body, "definition"),
            _text(body, "period"),
            _amount(body, "limit"),
            _optional_amount(body, "lifetime_limit"),
            _amount(body, "per_query_max"),
            tuple(GrantRecord.from_body(g) for g in grants),
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
        return cls(_text(body, "period"), _text(body, "start"), _text(body, "end"))


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

    type = "charge"

    def __post_init__(self) -> None:
        if (self.response_commitment is None) == (self.response_sha256 is None):
            raise ChainFormatError(
                "a charge identifies its answer by exactly one of 'response_commitment' and "
                "'response_sha256'"
            )

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
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ChargeRecord:
        return cls(
            _text(body, "query_id"),
            _text(body, "identity"),
            _text(body, "analyst"),
            _text(body, "kind"),
            _text(body, "canonical_query"),
            _amount(body, "requested"),
            _amount(body, "charge"),
            _text(body, "period"),
            _text(body, "dataset_version"),
            response_commitment=_optional_text(body, "response_commitment"),
            privacy_map=_optional_amount(body, "privacy_map"),
            response_sha256=_optional_text(body, "response_sha256"),
        )


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
            _text(body, "query_id"),
            _text(body, "analyst"),
            _text(body, "identity"),
            _text(body, "canonical_query"),
            _amount(body, "requested"),
            _text(body, "definition"),
            _texts(body, "nodes"),
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
            "charge": _opt(self.charge),
            "attempts": self.attempts,
            "dataset_version": self.dataset_version,
            "node_id": self.node_id,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> OutcomeRecord:
        return cls(
            _text(body, "query_id"),
            _text(body, "node"),
            _text(body, "status"),
            _text(body, "reason"),
            _optional_amount(body, "charge"),
            _count(body, "attempts"),
            _text(body, "dataset_version"),
            _text(body, "node_id"),
        )


Record = (
    Opened
    | SigningKeyRecord
    | PolicyRecord
    | PeriodRecord
    | ChargeRecord
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
        QuestionRecord,
        OutcomeRecord,
    )
}

NODE_TYPES = frozenset({"opened", "signing_key", "policy", "period", "charge"})
COORDINATOR_TYPES = frozenset({"opened", "signing_key", "question", "outcome"})


def parse_record(entry: ChainEntry) -> Record:
    """The typed record an entry holds; :class:`ChainFormatError` if it is malformed."""
    parser = _PARSERS.get(entry.type)
    if parser is None:
        raise ChainFormatError(f"unknown entry type {entry.type!r:.40}")
    record: Record = parser(entry.body)
    return record
