"""One SQLite file holding a tiaki ledger: working tables beside a hash chain.

The node's privacy ledger and the coordinator's mirror are both a
:class:`ChainedLedger`. What makes such a file trustworthy lives here, once:

- Durability. The file uses the WAL journal with ``synchronous=FULL``, so a
  write transaction is on disk when its ``COMMIT`` returns: whatever a
  subclass records before returning survives a crash, and a crash before the
  commit leaves nothing behind.
- Serialisation. Writes run in ``BEGIN IMMEDIATE`` transactions: the write
  lock is taken before the first read, so what a caller checks is what it
  writes against. One connection per object, guarded by a re-entrant lock,
  serialises threads; SQLite's lock plus a busy timeout serialises processes.
- Identity. A ``meta`` table names the schema version, the creation time and
  a random ledger id, from which the chain's genesis hash derives
  (:func:`tiaki.chain.genesis_hash`), so entries cannot move between files.
- The chain. Every change a subclass makes appends its record
  (:mod:`tiaki.ledger_records`) in the same transaction; the first entry is
  ``opened``; ``signing_key`` entries name the key that signs exports.

A subclass names its working tables, the extra ``meta`` it keeps, how it
recognises a file that is not its own, and the upgrades it knows. It never
opens a connection, starts a transaction or appends to the chain another way.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

from tiaki.chain import (
    ChainEntry,
    append_entry,
    append_if_changed,
    chain_head,
    chain_time,
    create_chain_table,
    genesis_hash,
    last_of_type,
    read_entries,
)
from tiaki.ledger_records import Opened, SigningKeyRecord

BUSY_TIMEOUT_MS = 30_000

_META_TABLE = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
# Policies and signing keys are looked up as "the last entry of this type".
_CHAIN_TYPE_INDEX = "CREATE INDEX chain_type ON chain (type, seq)"


def utc_now() -> datetime:
    return datetime.now(UTC)


class ChainRecord(Protocol):
    """What the chain stores of a record: its entry type and its JSON body."""

    @property
    def type(self) -> str: ...

    def body(self) -> dict[str, Any]: ...


class ChainedLedger:
    """A ledger file: ``meta``, the subclass's working tables, and the hash chain."""

    # How messages name the file ("privacy ledger"), and its schema ("ledger schema version 2").
    noun: ClassVar[str]
    schema_noun: ClassVar[str]
    # Which ledger the ``opened`` entry says this is (tiaki.ledger_records).
    ledger_kind: ClassVar[str]
    schema_version: ClassVar[int]
    # CREATE statements of the working tables and their triggers.
    tables: ClassVar[tuple[str, ...]]
    error: ClassVar[type[Exception]]

    def __init__(
        self,
        path: Path,
        clock: Callable[[], datetime] = utc_now,
        *,
        make_parent: bool = False,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._ledger_id = ""
        try:
            if make_parent:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except (OSError, sqlite3.Error) as exc:
            raise self.error(f"{self.path}: cannot open the {self.noun}: {exc}") from None
        try:
            self._open()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    # ------------------------------------------------------------ what a subclass says

    def _refuse_foreign(self, tables: set[str], meta: Mapping[str, str]) -> None:
        """Raise if a file that has tables is not this kind of ledger. Default: accept."""

    def _initial_meta(self) -> dict[str, str]:
        """``meta`` entries a new file starts with beyond version, creation time and id."""
        return {}

    def _upgrade(self, meta: Mapping[str, str]) -> None:
        """Bring an older schema up to date, inside the opening write transaction."""

    def _check_meta(self, meta: Mapping[str, str]) -> None:
        """Refuse a file this release cannot read (a subclass adds its own checks)."""
        self._refuse_foreign(self._tables(), meta)
        version = meta.get("schema_version", "")
        if version != str(self.schema_version):
            raise self.error(
                f"{self.path}: {self.schema_noun} schema version {version or 'unknown'}, this "
                f"tiaki reads version {self.schema_version}; use the tiaki release that wrote it"
            )
        if not meta.get("ledger_id") or "chain" not in self._tables():
            raise self.error(
                f"{self.path}: the {self.noun} has no hash chain or ledger id; it was damaged "
                "or written by something other than tiaki"
            )

    def _opened(self, meta: Mapping[str, str]) -> None:
        """Called once the file is known good, still inside the opening transaction."""

    # ------------------------------------------------------------ opening

    def _open(self) -> None:
        conn = self._db
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self._tables():  # whose file it is, before changing anything in it
                self._refuse_foreign(self._tables(), self._meta())
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode != "wal":
                raise self.error(f"{self.path}: cannot use WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            # Decided inside the write transaction: another process may be creating or
            # upgrading the same file at the same moment.
            with self._transaction(write=True):
                if not self._tables():
                    self._create()
                else:
                    self._upgrade(self._meta())
                meta = self._meta()
                self._check_meta(meta)
                self._ledger_id = meta["ledger_id"]
                self._opened(meta)
        except sqlite3.DatabaseError as exc:
            raise self.error(f"{self.path}: not a usable {self.noun}: {exc}") from None

    def _create(self) -> None:
        """A new, empty ledger whose chain starts with its ``opened`` entry."""
        conn = self._db
        for statement in (_META_TABLE, *self.tables):
            conn.execute(statement)
        create_chain_table(conn)
        conn.execute(_CHAIN_TYPE_INDEX)
        now = self._now()
        ledger_id = uuid.uuid4().hex
        meta = {
            "schema_version": str(self.schema_version),
            "created_at": now,
            "ledger_id": ledger_id,
            **self._initial_meta(),
        }
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        self._ledger_id = ledger_id
        self._append(Opened(self.ledger_kind, ledger_id, self.schema_version), now)

    def _tables(self) -> set[str]:
        return {str(row[0]) for row in self._db.execute("SELECT name FROM sqlite_master")}

    def _meta(self) -> dict[str, str]:
        if "meta" not in self._tables():
            return {}
        return {str(k): str(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def _named_rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of ``sql`` as dicts by column name (views name their fields as columns)."""
        cursor = self._db.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    # ------------------------------------------------------------ transactions

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self.error(f"{self.path}: the {self.noun} is closed")
        return self._conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction under the object's lock, committed on leaving, else rolled back.

        ``write`` takes SQLite's write lock up front (``BEGIN IMMEDIATE``):
        every check made inside holds until the commit. Reads see one
        consistent snapshot either way.
        """
        with self._lock:
            conn = self._db
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self.error(f"{self.path}: {self.noun} database error: {exc}") from exc

    def _now(self) -> str:
        return chain_time(self._clock())

    # ------------------------------------------------------------ the chain

    def _append(self, record: ChainRecord, at: str) -> ChainEntry:
        """Chain ``record``; call inside a write transaction, so it commits with its change."""
        return append_entry(self._db, self._ledger_id, record.type, at, record.body())

    def _append_if_changed(self, record: ChainRecord, at: str) -> bool:
        """Chain ``record`` unless the last entry of its type says exactly that."""
        return append_if_changed(self._db, self._ledger_id, record.type, at, record.body())

    def _last(self, entry_type: str) -> ChainEntry | None:
        return last_of_type(self._db, entry_type)

    @property
    def ledger_id(self) -> str:
        """This file's random id: its chain's genesis hash derives from it."""
        return self._ledger_id

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the chain's last entry."""
        with self._transaction(write=False) as conn:
            return chain_head(conn, self._ledger_id)

    def chain_entries(self, from_seq: int = 1) -> list[ChainEntry]:
        """The chain's entries from ``from_seq`` on, oldest first, exactly as stored."""
        with self._transaction(write=False) as conn:
            return list(read_entries(conn, from_seq))

    def chain(self, from_seq: int = 1) -> tuple[tuple[int, str], list[ChainEntry]]:
        """The anchor ``(from_seq - 1, its hash)`` and the entries from ``from_seq`` on.

        Read in one transaction, so the entries are one consistent snapshot.
        """
        with self._transaction(write=False) as conn:
            last, _ = chain_head(conn, self._ledger_id)
            if not 1 <= from_seq <= last + 1:
                raise ValueError(f"the chain has entries 1 to {last}; cannot start at {from_seq}")
            anchor = genesis_hash(self._ledger_id)
            if from_seq > 1:
                row = conn.execute(
                    "SELECT hash FROM chain WHERE seq = ?", (from_seq - 1,)
                ).fetchone()
                anchor = str(row[0])
            return (from_seq - 1, anchor), list(read_entries(conn, from_seq))

    def signing_key(self) -> str | None:
        """The public key the chain last recorded as signing its exports, if any."""
        with self._transaction(write=False):
            last = self._last(SigningKeyRecord.type)
        return None if last is None else str(last.body.get("public_key"))

    def record_signing_key(self, public_key: str) -> bool:
        """Chain the key that signs exports from now on, if it is not the last one recorded.

        True if an entry was appended (durable when this returns).
        """
        with self._transaction(write=True):
            return self._append_if_changed(SigningKeyRecord(public_key), self._now())

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
