"""The node ledger's rows as read back, and how they must agree with its hash chain.

Used by :mod:`node.ledger` (which re-exports the types): a charged query as
:class:`LedgerEntry`, a stored answer as :class:`StoredAnswer`, and
:func:`first_problem`, the comparison behind
:meth:`node.ledger.PrivacyLedger.verify`, which reads everything in one
transaction and turns the first problem found into a ``LedgerError``. Pure:
nothing here reads or changes the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any

from tiaki.budget import format_amount, read_amount
from tiaki.chain import ChainEntry, canonical_json, check_links, genesis_hash
from tiaki.ledger_records import ChargeRecord, SecureSessionRecord
from tiaki.receipts import commitment


@dataclass(frozen=True)
class LedgerEntry:
    """One charged query. ``period`` is the budget period its charge counts in.

    A node's part in a secure sum also has ``worst_case`` and
    ``secure_session``; every other entry has None in both.
    """

    seq: int
    query_id: str
    identity: str
    analyst: str
    kind: str
    canonical_query: str
    charge: Fraction
    period: str
    dataset_version: str
    created_at: str
    requested: Fraction
    privacy_map: Fraction | None = None  # None for entries from before schema 3
    worst_case: Fraction | None = None
    secure_session: SecureSessionRecord | None = None


@dataclass(frozen=True)
class StoredAnswer:
    """The answer as committed: replaying its query id returns exactly these bytes."""

    canonical_query: str
    response: bytes
    charge: Fraction
    seq: int  # the ledger entry that paid for it
    commitment_salt: bytes = b""  # b"" for entries from before schema 3
    session_id: str | None = None  # the secure sum it was the node's input to, if any


def first_problem(
    *,
    ledger_id: str,
    totals: Mapping[str, Fraction],
    spending: Mapping[str, Fraction],
    chained: Sequence[ChainEntry],
    rows: Sequence[tuple[Any, ...]],
) -> str | None:
    """What is wrong, or None if the ledger agrees with itself.

    ``totals`` are the period totals recomputed from the entries and
    ``spending`` the running totals as stored; they must match. ``chained``
    must link unbroken from the ledger's genesis; every charged entry in
    ``rows`` (seq, query id, identity, charge, period, canonical query,
    response, entry hash, commitment salt, worst case, secure session) must
    have its chain entry (same query, identity, charge, period, stored answer,
    and worst case and session or their absence), and no chain charge may be
    missing from the entries.
    """
    if dict(totals) != {k: v for k, v in spending.items() if v}:
        return "period totals do not match the entries"
    breaks = check_links(list(chained), genesis_hash(ledger_id))
    if breaks:
        return f"hash chain broken at entry {breaks[0].seq}: {breaks[0].problem}"
    by_hash = {e.hash: e for e in chained if e.type == ChargeRecord.type}
    if len(by_hash) != len(rows):
        return f"{len(rows)} charged queries but {len(by_hash)} charges in the chain"
    for row in rows:
        seq, qid, identity, charge, period, canonical, response, entry_hash, salt = row[:9]
        worst_case, session = row[9:11]
        entry = by_hash.get(str(entry_hash))
        expected: dict[str, Any] = {
            "query_id": qid,
            "identity": identity,
            "charge": format_amount(read_amount(charge)),
            "period": period,
            "canonical_query": canonical,
            "worst_case": None if worst_case is None else format_amount(read_amount(worst_case)),
            "secure_session": None if session is None else json.loads(session),
        }
        if salt is None:  # written before schema 3
            expected["response_sha256"] = hashlib.sha256(bytes(response)).hexdigest()
        else:
            expected["response_commitment"] = commitment(bytes(salt), bytes(response))
        if entry is None or any(entry.body.get(k) != v for k, v in expected.items()):
            return f"charged query {seq} ({qid!r}) does not match its chain entry"
    return None


# Every charged query, oldest first, as the columns LedgerEntry's fields are named after.
_COLUMNS = ", ".join(field.name for field in fields(LedgerEntry))
SELECT_ENTRIES = f"SELECT {_COLUMNS} FROM entries ORDER BY seq"  # noqa: S608 - field names only


def entry_from_row(row: Mapping[str, Any]) -> LedgerEntry:
    """A charged query from a row of :data:`SELECT_ENTRIES`, amounts read exactly."""
    privacy_map, worst_case, session = row["privacy_map"], row["worst_case"], row["secure_session"]
    return LedgerEntry(
        **{
            **row,
            "charge": read_amount(row["charge"]),
            "requested": read_amount(row["requested"]),
            "privacy_map": None if privacy_map is None else read_amount(privacy_map),
            "worst_case": None if worst_case is None else read_amount(worst_case),
            "secure_session": None if session is None else session_record(session),
        }
    )


def session_text(session: SecureSessionRecord) -> str:
    """How the entries table stores a session: the canonical JSON of its chain body."""
    return canonical_json(session.body())


def session_record(text: str) -> SecureSessionRecord:
    """The session an entries row stores (:func:`session_text`)."""
    return SecureSessionRecord.from_body(json.loads(text))
