"""The mirror's chain replayed: checking that the hash chain accounts for the
``questions`` and ``outcomes`` tables exactly.

Used only by :mod:`coordinator.mirror`; kept apart so the ledger's write path
reads in one sitting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from coordinator.results import NodeStatus
from tiaki.budget import format_amount, read_amount
from tiaki.chain import ChainEntry, ChainFormatError
from tiaki.ledger_records import (
    COORDINATOR_LEDGER,
    COORDINATOR_TYPES,
    Opened,
    OutcomeRecord,
    QuestionRecord,
    parse_record,
)

PENDING = NodeStatus.PENDING  # a node asked but not yet answered


class ChainDisagreement(Exception):
    """Where the chain breaks or disagrees with the tables (turned into a MirrorError)."""


def stored_entry(row: tuple[Any, ...]) -> ChainEntry:
    seq, type_, at, body, prev, hash_ = row
    try:
        parsed = json.loads(body)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        raise ChainDisagreement(
            f"chain entry {seq}: its body is not a JSON object (it was altered)"
        )
    return ChainEntry(int(seq), str(type_), str(at), parsed, str(prev), str(hash_))


def _amount_or_text(text: str) -> Fraction | str:
    """A stored amount, or its raw text if it is not one (so a comparison shows it)."""
    try:
        return read_amount(text)
    except (ValueError, ZeroDivisionError):
        return text


def _show(value: object) -> str:
    return format_amount(value) if isinstance(value, Fraction) else repr(value)


def _first_difference(
    chained: dict[str, object], stored: dict[str, object]
) -> tuple[str, object, object] | None:
    for key, value in chained.items():
        if stored[key] != value:
            return key, value, stored[key]
    return None


@dataclass
class _AskedQuestion:
    """A question as the chain recorded it: its first entry, and every node asked since."""

    seq: int
    at: str
    record: QuestionRecord
    nodes: list[str] = field(default_factory=list)


@dataclass
class ChainReplayedRow:
    """What the chain says one ``outcomes`` row holds, and the last entry that said so."""

    seq: int
    status: str = PENDING
    reason: str = ""
    charged: Fraction | None = None
    attempts: int = 0
    dataset_version: str = ""
    node_id: str = ""
    updated_at: str = ""  # when the question entry asked the node, or the last outcome

    def apply(self, seq: int, at: str, outcome: OutcomeRecord) -> None:
        """The same rules :meth:`MirrorLedger._write_outcome` applies to the row."""
        self.seq = seq
        self.status = outcome.status
        self.reason = outcome.reason
        if self.charged is None:
            self.charged = outcome.charge
        self.attempts += outcome.attempts
        self.dataset_version = outcome.dataset_version or self.dataset_version
        self.node_id = outcome.node_id or self.node_id
        self.updated_at = at


class ChainReplay:
    """The tables as the chain's entries say they must be."""

    def __init__(self, ledger_id: str) -> None:
        self.ledger_id = ledger_id
        self.questions: dict[str, _AskedQuestion] = {}
        self.rows: dict[tuple[str, str], ChainReplayedRow] = {}

    def apply(self, entry: ChainEntry) -> None:
        where = f"chain entry {entry.seq} ({entry.type})"
        if entry.type not in COORDINATOR_TYPES:
            raise ChainDisagreement(f"{where}: not a kind of entry a coordinator ledger holds")
        try:
            record = parse_record(entry)
        except ChainFormatError as exc:
            raise ChainDisagreement(f"{where}: malformed: {exc}") from None
        if isinstance(record, Opened):
            self._opened(entry.seq, record, where)
        elif entry.seq == 1:
            raise ChainDisagreement(f"{where}: the chain must begin with its 'opened' entry")
        elif isinstance(record, QuestionRecord):
            self._question(entry, record, where)
        elif isinstance(record, OutcomeRecord):
            self._outcome(entry, record, where)
        # A signing_key entry has nothing in the tables to agree with.

    def _opened(self, seq: int, record: Opened, where: str) -> None:
        if seq != 1:
            raise ChainDisagreement(f"{where}: a ledger is opened once, by its first entry")
        if record.ledger != COORDINATOR_LEDGER or record.ledger_id != self.ledger_id:
            raise ChainDisagreement(
                f"{where}: opens {record.ledger} ledger {record.ledger_id!r}, not this "
                f"coordinator mirror {self.ledger_id!r}"
            )

    def _question(self, entry: ChainEntry, record: QuestionRecord, where: str) -> None:
        asked = self.questions.get(record.query_id)
        if asked is None:
            asked = self.questions[record.query_id] = _AskedQuestion(entry.seq, entry.at, record)
        elif replace(record, nodes=()) != replace(asked.record, nodes=()):
            raise ChainDisagreement(
                f"{where}: re-records question {record.query_id!r} with another analyst, "
                f"identity, query, cost or definition than entry {asked.seq}"
            )
        if not record.nodes:
            raise ChainDisagreement(f"{where}: asks no nodes")
        for node in record.nodes:
            if (record.query_id, node) in self.rows:
                raise ChainDisagreement(
                    f"{where}: asks node {node!r} question {record.query_id!r} a second time"
                )
            self.rows[record.query_id, node] = ChainReplayedRow(entry.seq, updated_at=entry.at)
            asked.nodes.append(node)

    def _outcome(self, entry: ChainEntry, record: OutcomeRecord, where: str) -> None:
        row = self.rows.get((record.query_id, record.node))
        if row is None:
            raise ChainDisagreement(
                f"{where}: an outcome of question {record.query_id!r} at node {record.node!r}, "
                "but no earlier entry asked that node that question"
            )
        row.apply(entry.seq, entry.at, record)

    def compare_questions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Every ``questions`` row must be a question the chain recorded, and vice versa."""
        stored_ids: set[str] = set()
        for qid, analyst, identity, canonical, requested, definition, created in rows:
            stored_ids.add(qid)
            asked = self.questions.get(qid)
            if asked is None:
                raise ChainDisagreement(
                    f"question {qid!r} is in the questions table but no chain entry records it "
                    "(it was added behind the chain's back)"
                )
            r = asked.record
            difference = _first_difference(
                {
                    "analyst": r.analyst,
                    "identity": r.identity,
                    "canonical_query": r.canonical_query,
                    "requested": r.requested,
                    "definition": r.definition,
                    "created_at": asked.at,
                },
                {
                    "analyst": analyst,
                    "identity": identity,
                    "canonical_query": canonical,
                    "requested": _amount_or_text(requested),
                    "definition": definition,
                    "created_at": created,
                },
            )
            if difference is not None:
                key, chained, stored = difference
                raise ChainDisagreement(
                    f"chain entry {asked.seq} (question {qid!r}): the chain says {key} "
                    f"{_show(chained)} but the questions table holds {_show(stored)}"
                )
        for qid, asked in self.questions.items():
            if qid not in stored_ids:
                raise ChainDisagreement(
                    f"chain entry {asked.seq} (question {qid!r}): the question is missing from "
                    "the questions table"
                )

    def compare_outcomes(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Every ``outcomes`` row must be what the chain's entries for it replay to."""
        stored_keys: set[tuple[str, str]] = set()
        for qid, node, status, reason, charged, attempts, version, node_id, updated in rows:
            stored_keys.add((qid, node))
            row = self.rows.get((qid, node))
            if row is None:
                raise ChainDisagreement(
                    f"the outcomes table has node {node!r} for question {qid!r}, but no chain "
                    "entry asked that node that question (added behind the chain's back)"
                )
            chained: dict[str, object] = {
                "status": row.status,
                "reason": row.reason,
                "charge": row.charged,
                "attempts": row.attempts,
                "dataset_version": row.dataset_version,
                "node_id": row.node_id,
                "updated_at": row.updated_at,
            }
            stored: dict[str, object] = {
                "status": status,
                "reason": reason,
                "charge": None if charged is None else _amount_or_text(charged),
                "attempts": attempts,
                "dataset_version": version,
                "node_id": node_id,
                "updated_at": updated,
            }
            difference = _first_difference(chained, stored)
            if difference is not None:
                key, said, held = difference
                raise ChainDisagreement(
                    f"chain entry {row.seq} (question {qid!r}, node {node!r}): the chain says "
                    f"{key} {_show(said)} but the outcomes table holds {_show(held)}"
                )
        for (qid, node), row in self.rows.items():
            if (qid, node) not in stored_keys:
                raise ChainDisagreement(
                    f"chain entry {row.seq} (question {qid!r}, node {node!r}): the outcomes "
                    "table has no row for it"
                )
