"""An export's entries as typed records, each remembering which export and entry it is.

A partial export (one that starts after entry 1) can be read together with
the entries of an earlier export that precede it (its *prefix*), so the
policy, periods and spending in force when it starts are known. Entries taken
from the prefix keep the earlier export's name, so a finding about one of them
points at the file it was read from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar, cast

from coordinator.audit.findings import Finding, error
from tiaki.chain import ChainEntry, ChainFormatError
from tiaki.ledger_export import LedgerExport
from tiaki.ledger_records import (
    COORDINATOR_LEDGER,
    COORDINATOR_TYPES,
    EXACT_AMOUNT,
    NODE_TYPES,
    ChargeRecord,
    OutcomeRecord,
    PeriodRecord,
    PolicyRecord,
    QuestionRecord,
    Record,
    parse_record,
)

# Amounts are exact decimal text ("0.125") or, rarely, "p/q"; anything else is
# refused before Fraction sees it (an export is untrusted input).
_AMOUNT = EXACT_AMOUNT
_AMOUNT_KEYS = frozenset(
    {
        "requested",
        "charge",
        "limit",
        "lifetime_limit",
        "per_query_max",
        "budget_cap",
        "privacy_map",
        "worst_case",
        "tau_term",
        "worst_case_per_query",
        "worst_case_lifetime",
    }
)

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True)
class Placed(Generic[R_co]):
    """A record and where it sits: export file, entry number and entry time."""

    export: str
    seq: int
    at: str
    record: R_co


@dataclass(frozen=True)
class ParsedLedger:
    """One export's ledger: its readable entries, oldest first (a prefix, if any, first)."""

    export: LedgerExport
    entries: tuple[Placed[Record], ...]
    prefix_from: str | None  # the earlier export that supplied entries before from_seq

    @property
    def name(self) -> str:
        return self.export.name

    @property
    def is_node(self) -> bool:
        return self.export.source != COORDINATOR_LEDGER

    @property
    def history_complete(self) -> bool:
        """Whether every entry from the ledger's first is at hand (own or from a prefix)."""
        return self.export.from_seq == 1 or self.prefix_from is not None

    def of(self, kind: type[R]) -> list[Placed[R]]:
        # isinstance narrows the record, not the Placed around it: say so explicitly.
        return [cast("Placed[R]", p) for p in self.entries if isinstance(p.record, kind)]

    @property
    def charges(self) -> list[Placed[ChargeRecord]]:
        return self.of(ChargeRecord)

    @property
    def policies(self) -> list[Placed[PolicyRecord]]:
        return self.of(PolicyRecord)

    @property
    def periods(self) -> list[Placed[PeriodRecord]]:
        return self.of(PeriodRecord)

    @property
    def questions(self) -> list[Placed[QuestionRecord]]:
        return self.of(QuestionRecord)

    @property
    def outcomes(self) -> list[Placed[OutcomeRecord]]:
        return self.of(OutcomeRecord)

    def own(self, placed: Placed[R]) -> bool:
        """Whether an entry is this export's own (not borrowed from an earlier export)."""
        return placed.export == self.name


def _unsafe_amount(value: object) -> str | None:
    """The name of the first amount field in a body that is not plain decimal text."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _AMOUNT_KEYS and isinstance(item, str) and not _AMOUNT.fullmatch(item):
                return str(key)
            found = _unsafe_amount(item) if isinstance(item, (dict, list)) else None
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _unsafe_amount(item)
            if found is not None:
                return found
    return None


def parse_entries(
    export: LedgerExport,
    prefix: Sequence[ChainEntry] = (),
    prefix_from: str | None = None,
) -> tuple[ParsedLedger, list[Finding]]:
    """Type every entry; an entry that does not parse, or is not allowed in this kind of
    ledger, is a finding and is left out of the records (so later checks see only
    entries whose meaning is certain)."""
    allowed = COORDINATOR_TYPES if export.source == COORDINATOR_LEDGER else NODE_TYPES
    findings: list[Finding] = []
    placed: list[Placed[Record]] = []
    sources: Iterable[tuple[str, ChainEntry]] = [
        *((prefix_from or export.name, e) for e in prefix),
        *((export.name, e) for e in export.entries),
    ]
    for name, entry in sources:
        if entry.type not in allowed:
            findings.append(
                error(
                    name,
                    entry.seq,
                    "wrong-entry-type",
                    f"a {export.source} ledger has no entries of type {entry.type!r:.40}",
                )
            )
            continue
        unsafe = _unsafe_amount(entry.body)
        if unsafe is not None:
            findings.append(
                error(
                    name,
                    entry.seq,
                    "unreadable-entry",
                    f"the {entry.type} entry's {unsafe!r} is not an exact decimal amount",
                )
            )
            continue
        try:
            record = parse_record(entry)
        except ChainFormatError as exc:
            findings.append(
                error(
                    name,
                    entry.seq,
                    "unreadable-entry",
                    f"the {entry.type} entry is malformed: {exc}",
                )
            )
            continue
        placed.append(Placed(name, entry.seq, entry.at, record))
    ledger = ParsedLedger(export, tuple(placed), prefix_from if prefix else None)
    return ledger, findings


def parse_time(text: str) -> datetime | None:
    """An entry or export timestamp as an aware UTC datetime; None if it is not ISO 8601."""
    try:
        when = datetime.fromisoformat(text)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):  # not ISO 8601, or out of range once in UTC
        return None
