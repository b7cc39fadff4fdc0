"""The hash chain under every tiaki ledger: entries that each commit to the one before.

A node's privacy ledger and a coordinator's mirror keep, beside their working
tables, one append-only ``chain`` table. Each entry is ``(seq, type, at, body,
prev, hash)``: ``body`` is a JSON object, ``prev`` the previous entry's hash
(the first entry's ``prev`` is the ledger's *genesis hash*, derived from its
random ledger id, so entries cannot be moved between ledgers), and ``hash`` is
SHA-256 over the canonical JSON of all the other fields. Changing, removing or
reordering any entry therefore changes every hash after it, and a signature
over the last hash (a checkpoint, see :mod:`tiaki.ledger_export`) vouches for
the whole history.

Bodies hold only strings, integers, booleans, null, lists and objects: amounts
are exact decimal text, never floats, so a verifier anywhere recomputes the
same bytes. SQLite triggers refuse any update or delete of the table.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CHAIN_DOMAIN = "tiaki-ledger-chain-v1"
HASH_HEX_CHARS = 64

CHAIN_SCHEMA = (
    """CREATE TABLE chain (
        seq   INTEGER PRIMARY KEY,
        type  TEXT NOT NULL,
        at    TEXT NOT NULL,
        body  TEXT NOT NULL,
        prev  TEXT NOT NULL,
        hash  TEXT NOT NULL UNIQUE
    )""",
    "CREATE TRIGGER chain_no_update BEFORE UPDATE ON chain "
    "BEGIN SELECT RAISE(ABORT, 'the ledger chain is append-only'); END",
    "CREATE TRIGGER chain_no_delete BEFORE DELETE ON chain "
    "BEGIN SELECT RAISE(ABORT, 'the ledger chain is append-only'); END",
)


class ChainFormatError(ValueError):
    """A chain record is not shaped as the format says (missing field, wrong type)."""


def canonical_json(value: Any) -> str:
    """The one text of a JSON value that every hash and signature is computed over."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chain_time(when: datetime) -> str:
    """How ledgers and exports write a time: UTC, ISO 8601, microseconds, "Z"
    (a naive ``when`` is taken to be UTC already)."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def genesis_hash(ledger_id: str) -> str:
    """The ``prev`` of a ledger's first entry: binds the chain to its ledger id."""
    return sha256_hex(f"{CHAIN_DOMAIN}\n{ledger_id}")


def entry_hash(seq: int, type_: str, at: str, body: Mapping[str, Any], prev: str) -> str:
    return sha256_hex(
        canonical_json({"seq": seq, "type": type_, "at": at, "body": body, "prev": prev})
    )


@dataclass(frozen=True)
class ChainEntry:
    """One entry of a ledger's chain, as stored and as exported."""

    seq: int
    type: str
    at: str  # UTC timestamp, ISO 8601 with microseconds and "Z"
    body: Mapping[str, Any]
    prev: str
    hash: str

    def expected_hash(self) -> str:
        """The hash this entry's content implies (equal to ``hash`` unless it was altered)."""
        return entry_hash(self.seq, self.type, self.at, self.body, self.prev)

    def record(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "at": self.at,
            "body": dict(self.body),
            "prev": self.prev,
            "hash": self.hash,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ChainEntry:
        """Parse an exported entry; :class:`ChainFormatError` names the field that is wrong."""
        seq = record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ChainFormatError("'seq' must be a positive integer")
        for key in ("type", "at", "prev", "hash"):
            if not isinstance(record.get(key), str):
                raise ChainFormatError(f"'{key}' must be a string")
        body = record.get("body")
        if not isinstance(body, dict):
            raise ChainFormatError("'body' must be an object")
        return cls(
            seq,
            str(record["type"]),
            str(record["at"]),
            body,
            str(record["prev"]),
            str(record["hash"]),
        )


# ---------------------------------------------------------------- in SQLite


def create_chain_table(conn: sqlite3.Connection) -> None:
    """Create the ``chain`` table and its append-only triggers (inside a transaction)."""
    for statement in CHAIN_SCHEMA:
        conn.execute(statement)


def chain_head(conn: sqlite3.Connection, ledger_id: str) -> tuple[int, str]:
    """``(seq, hash)`` of the last entry, or ``(0, genesis hash)`` for an empty chain."""
    row = conn.execute("SELECT seq, hash FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return 0, genesis_hash(ledger_id)
    return int(row[0]), str(row[1])


def append_entry(
    conn: sqlite3.Connection, ledger_id: str, type_: str, at: str, body: Mapping[str, Any]
) -> ChainEntry:
    """Append one entry after the current head. Call inside the caller's write transaction,
    so the entry commits (or not) with the change it records."""
    seq, prev = chain_head(conn, ledger_id)
    seq += 1
    text = canonical_json(dict(body))
    entry = ChainEntry(seq, type_, at, json.loads(text), prev, "")
    entry = ChainEntry(seq, type_, at, entry.body, prev, entry.expected_hash())
    conn.execute(
        "INSERT INTO chain (seq, type, at, body, prev, hash) VALUES (?, ?, ?, ?, ?, ?)",
        (seq, type_, at, text, prev, entry.hash),
    )
    return entry


def append_if_changed(
    conn: sqlite3.Connection, ledger_id: str, type_: str, at: str, body: Mapping[str, Any]
) -> bool:
    """Append ``body`` unless the last entry of ``type_`` already says exactly that.

    For state that holds until it changes (a policy, a signing key): the
    chain records each change once. True if an entry was appended.
    """
    last = last_of_type(conn, type_)
    if last is not None and dict(last.body) == json.loads(canonical_json(dict(body))):
        return False
    append_entry(conn, ledger_id, type_, at, body)
    return True


def read_entries(conn: sqlite3.Connection, from_seq: int = 1) -> Iterator[ChainEntry]:
    """Entries from ``from_seq`` on, oldest first, exactly as stored."""
    rows = conn.execute(
        "SELECT seq, type, at, body, prev, hash FROM chain WHERE seq >= ? ORDER BY seq",
        (from_seq,),
    )
    for seq, type_, at, body, prev, hash_ in rows:
        yield ChainEntry(int(seq), str(type_), str(at), json.loads(body), str(prev), str(hash_))


def last_of_type(conn: sqlite3.Connection, type_: str) -> ChainEntry | None:
    row = conn.execute(
        "SELECT seq, type, at, body, prev, hash FROM chain WHERE type = ? "
        "ORDER BY seq DESC LIMIT 1",
        (type_,),
    ).fetchone()
    if row is None:
        return None
    seq, t, at, body, prev, hash_ = row
    return ChainEntry(int(seq), str(t), str(at), json.loads(body), str(prev), str(hash_))


# ---------------------------------------------------------------- checking


@dataclass(frozen=True)
class ChainBreak:
    """Where a sequence of entries stops being one unbroken chain, and why."""

    seq: int
    problem: str


def check_links(entries: list[ChainEntry], first_prev: str, first_seq: int = 1) -> list[ChainBreak]:
    """Every place the entries are not a chain starting at ``first_seq`` after ``first_prev``.

    Checks numbering (no gaps, no repeats, no reordering), that each entry's
    content gives its hash, and that each ``prev`` is the previous hash.
    """
    breaks: list[ChainBreak] = []
    expected_seq, expected_prev = first_seq, first_prev
    for entry in entries:
        if entry.seq != expected_seq:
            breaks.append(
                ChainBreak(
                    entry.seq,
                    f"entry numbered {entry.seq} where {expected_seq} was due "
                    "(entries missing, repeated or reordered)",
                )
            )
        if entry.expected_hash() != entry.hash:
            breaks.append(
                ChainBreak(entry.seq, "its content does not match its hash (the entry was altered)")
            )
        if entry.prev != expected_prev:
            breaks.append(
                ChainBreak(
                    entry.seq,
                    "it does not link to the entry before it (prev hash differs): an entry "
                    "was removed, inserted or reordered here",
                )
            )
        expected_seq, expected_prev = entry.seq + 1, entry.hash
    return breaks
