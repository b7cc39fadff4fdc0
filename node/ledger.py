"""The privacy ledger: the node's durable, authoritative record of privacy spent.

One SQLite file (WAL journal, ``synchronous=FULL``) holds every charged query
with its stored answer, and a running total per budget period kept in the same
transaction. Amounts are exact: Fractions written as exact decimal text with
:func:`tiaki.budget.format_amount`, read back with
:func:`tiaki.budget.read_amount`, and only ever added or compared as Fractions.

What is spent, and when it is durable: :meth:`PrivacyLedger.charge` spends the
``charge`` it is given (exactly the requested cost; OpenDP's privacy map at the
noise scales used, at most that, is recorded beside it) in the calendar
period, in UTC, current at commit time. It
checks and spends in one ``BEGIN IMMEDIATE`` transaction and returns only after
the commit has been synced to disk, so an answer that leaves the node has
always been paid for, and a crash before the commit spends nothing and leaks
nothing. Refusals and replays spend nothing. Entries are only ever appended.

Tamper evidence: beside its working tables the ledger keeps an append-only
hash chain (:mod:`tiaki.chain`; entry types in :mod:`tiaki.ledger_records`).
Every charge appends a ``charge`` entry in the same transaction that spends
it, preceded by a ``period`` entry when it is the first charge of a new
budget period and by a ``policy`` entry when the policy of the process that
charges differs from the last one recorded, so each charge is chained after
the limits it was checked against. :func:`node.exports.export_ledger` signs
the chain for auditors.

Concurrency: one connection per ledger object, serialised by a lock, so any
number of threads may share one object; other processes may open the same file
(``BEGIN IMMEDIATE`` plus a busy timeout serialises writers across processes).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

from node.config import BudgetPolicy, CoordinatorGrant, Policy
from tiaki.budget import (
    BudgetStatus,
    PeriodBudget,
    PrivacyDefinition,
    format_amount,
    read_amount,
)
from tiaki.chain import (
    ChainEntry,
    append_entry,
    append_if_changed,
    chain_head,
    chain_time,
    check_links,
    create_chain_table,
    genesis_hash,
    last_of_type,
    read_entries,
)
from tiaki.errors import InsufficientBudgetError, QueryIdConflictError
from tiaki.ledger_records import (
    NODE_LEDGER,
    ChargeRecord,
    GrantRecord,
    Opened,
    PeriodRecord,
    PolicyRecord,
    SigningKeyRecord,
)
from tiaki.periods import LIFETIME, period_bounds, period_label
from tiaki.receipts import commitment

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id        TEXT NOT NULL,
    identity        TEXT NOT NULL,
    analyst         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    canonical_query TEXT NOT NULL,
    requested       TEXT NOT NULL,
    charge          TEXT NOT NULL,
    period          TEXT NOT NULL,
    dataset_version TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    response        BLOB NOT NULL,
    prev_hash       TEXT,  -- unused: the chain table holds the links
    entry_hash      TEXT,  -- the hash of this charge's entry in the chain
    privacy_map     TEXT,  -- OpenDP's map at the scales used (NULL before schema 3)
    commitment_salt BLOB,  -- opens response_commitment (NULL before schema 3)
    UNIQUE (identity, query_id)
);
CREATE TABLE IF NOT EXISTS spending (
    period TEXT PRIMARY KEY,
    spent  TEXT NOT NULL
);
"""
# Columns schema 3 added to the entries of older ledgers, whose rows keep NULL there.
_V3_COLUMNS = (("privacy_map", "TEXT"), ("commitment_salt", "BLOB"))
# Each charge looks up the last period and policy entries.
_CHAIN_TYPE_INDEX = "CREATE INDEX chain_type ON chain (type, seq)"


class LedgerError(Exception):
    """The ledger file cannot be used as configured (wrong definition, newer schema, damaged)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LedgerEntry:
    """One charged query. ``period`` is the budget period its charge counts in."""

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


@dataclass(frozen=True)
class StoredAnswer:
    """The answer as committed: replaying its query id returns exactly these bytes."""

    canonical_query: str
    response: bytes
    charge: Fraction
    seq: int  # the ledger entry that paid for it
    commitment_salt: bytes = b""  # b"" for entries from before schema 3


# ---------------------------------------------------------------- ledger


class PrivacyLedger:
    """Check-and-spend accounting for one node, durable in a SQLite file.

    ``budget.limit`` caps each period (or the lifetime when ``period`` is
    "none"); ``budget.lifetime_limit``, if set, caps the total across periods.
    """

    def __init__(
        self,
        path: Path,
        definition: PrivacyDefinition,
        budget: BudgetPolicy,
        per_query_max: Fraction,
        clock: Callable[[], datetime] = utc_now,
        *,
        node_id: str = "",
        grants: tuple[CoordinatorGrant, ...] = (),
    ) -> None:
        self.path = Path(path)
        self.definition = PrivacyDefinition(definition)
        self.budget = budget
        self.per_query_max = per_query_max
        self.node_id = node_id
        self.grants = tuple(grants)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot open the privacy ledger: {exc}") from None
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    @classmethod
    def open(
        cls,
        path: Path,
        policy: Policy,
        clock: Callable[[], datetime] = utc_now,
        *,
        node_id: str = "",
    ) -> PrivacyLedger:
        """Open (creating if missing) the ledger for a node policy."""
        return cls(
            path,
            policy.privacy_definition,
            policy.budget,
            policy.per_query_max,
            clock,
            node_id=node_id,
            grants=policy.coordinators,
        )

    def _setup(self) -> None:
        conn = self._db
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode != "wal":
                raise LedgerError(f"{self.path}: cannot use WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            with self._tx(immediate=True):
                if not self._has_meta():
                    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                        raise LedgerError(f"{self.path}: an SQLite file, but not a tiaki ledger")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if not meta:
                    self._init_meta()
                    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("schema_version") == "1":
                    self._check_definition(meta)
                    self._migrate_from_v1(str(meta["created_at"]))
                    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("schema_version") == "2":
                    self._check_definition(meta)
                    self._upgrade_to_v3()
                    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                self._check_meta(meta)
                if meta["period"] != self.budget.period:
                    self._rebuild_spending()
                self._created = str(meta["created_at"])
                self.ledger_id = str(meta["ledger_id"])
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: not a usable privacy ledger: {exc}") from None

    def _has_meta(self) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        return row is not None

    def _init_meta(self) -> None:
        now = chain_time(self._clock())
        ledger_id = uuid.uuid4().hex
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("schema_version", str(SCHEMA_VERSION)),
                ("definition", self.definition.value),
                ("period", self.budget.period),
                ("created_at", now),
                ("ledger_id", ledger_id),
            ],
        )
        self._start_chain(ledger_id, now)

    def _start_chain(self, ledger_id: str, at: str) -> None:
        create_chain_table(self._db)
        self._db.execute(_CHAIN_TYPE_INDEX)
        opened = Opened(NODE_LEDGER, ledger_id, SCHEMA_VERSION)
        append_entry(self._db, ledger_id, opened.type, at, opened.body())

    def _migrate_from_v1(self, created_at: str) -> None:
        """Give a ledger written before the hash chain its chain, in the same transaction.

        The policy recorded first is the one in force at migration: earlier
        policies were never written down, so an auditor checks the old charges
        against today's limits.
        """
        conn = self._db
        ledger_id = uuid.uuid4().hex
        conn.execute("INSERT INTO meta (key, value) VALUES ('ledger_id', ?)", (ledger_id,))
        self._start_chain(ledger_id, created_at)
        self._ensure_policy(conn, ledger_id, created_at)
        rows = conn.execute(
            "SELECT seq, query_id, identity, analyst, kind, canonical_query, requested, charge, "
            "period, dataset_version, created_at, response FROM entries ORDER BY seq"
        ).fetchall()
        for seq, qid, who, analyst, kind, canonical, req, charge, label, version, at, resp in rows:
            record = ChargeRecord(
                qid, who, analyst, kind, canonical, read_amount(req), read_amount(charge),
                label, version, response_sha256=hashlib.sha256(bytes(resp)).hexdigest(),
            )  # fmt: skip
            chained = self._chain_charge(conn, ledger_id, str(at), record, policy=False)
            conn.execute("UPDATE entries SET entry_hash = ? WHERE seq = ?", (chained.hash, seq))
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    def _upgrade_to_v3(self) -> None:
        """Add the privacy-map and commitment-salt columns; old entries keep their history."""
        present = {str(row[1]) for row in self._db.execute("PRAGMA table_info(entries)")}
        for name, sql_type in _V3_COLUMNS:
            if name not in present:
                self._db.execute(f"ALTER TABLE entries ADD COLUMN {name} {sql_type}")
        self._db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")

    def _check_meta(self, meta: dict[str, str]) -> None:
        version = int(meta.get("schema_version", "0"))
        if version != SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema version {version}, this tiaki reads version "
                f"{SCHEMA_VERSION}; use the tiaki release that wrote it"
            )
        self._check_definition(meta)

    def _check_definition(self, meta: dict[str, str]) -> None:
        stored = meta.get("definition")
        if stored != self.definition.value:
            raise LedgerError(
                f"{self.path}: the ledger accounts in {stored!r} but the config says "
                f"privacy_definition {self.definition.value!r}; changing the definition under "
                "existing spending would corrupt the accounting. Restore the config's "
                "privacy_definition, or start a new ledger file (and a new budget) deliberately"
            )

    def _rebuild_spending(self) -> None:
        """Regroup every entry's charge under the configured period kind (the period changed).

        Each entry is placed by its commit time, so spending stays exact; the
        entries' own ``period`` column keeps the label they were charged under.
        """
        self._db.execute("DELETE FROM spending")
        self._db.executemany(
            "INSERT INTO spending (period, spent) VALUES (?, ?)",
            [(label, format_amount(spent)) for label, spent in self._entry_totals().items()],
        )
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'period'", (self.budget.period,))

    # ------------------------------------------------------------ plumbing

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"{self.path}: the privacy ledger is closed")
        return self._conn

    @contextmanager
    def _tx(self, *, immediate: bool) -> Iterator[sqlite3.Connection]:
        conn = self._db
        try:
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: privacy ledger database error: {exc}") from exc

    def policy_record(self) -> PolicyRecord:
        """The policy this ledger object enforces, as the chain records it."""
        return PolicyRecord(
            node_id=self.node_id,
            definition=self.definition.value,
            period=self.budget.period,
            limit=self.budget.limit,
            lifetime_limit=self.budget.lifetime_limit,
            per_query_max=self.per_query_max,
            coordinators=tuple(
                GrantRecord(
                    grant.identity,
                    grant.normalised_fingerprint,
                    grant.budget_cap,
                    None if grant.kinds is None else tuple(k.value for k in grant.kinds),
                )
                for grant in self.grants
            ),
        )

    def _ensure_policy(self, conn: sqlite3.Connection, ledger_id: str, at: str) -> None:
        """Chain this object's policy unless it is already the last one recorded."""
        record = self.policy_record()
        append_if_changed(conn, ledger_id, record.type, at, record.body())

    def _chain_charge(
        self,
        conn: sqlite3.Connection,
        ledger_id: str,
        at: str,
        record: ChargeRecord,
        *,
        policy: bool = True,
    ) -> ChainEntry:
        """Chain one charge after the policy it was checked against and its period's start."""
        if policy:
            self._ensure_policy(conn, ledger_id, at)
        last = last_of_type(conn, PeriodRecord.type)
        if last is None or last.body.get("period") != record.period:
            start, end = period_bounds(record.period)
            opened = PeriodRecord(record.period, start, end)
            append_entry(conn, ledger_id, opened.type, at, opened.body())
        return append_entry(conn, ledger_id, record.type, at, record.body())

    def _spending(self) -> dict[str, Fraction]:
        rows = self._db.execute("SELECT period, spent FROM spending").fetchall()
        return {str(label): read_amount(spent) for label, spent in rows}

    def _entry_totals(self) -> dict[str, Fraction]:
        """Each period's spending summed exactly from the entries, by commit time."""
        totals: dict[str, Fraction] = {}
        for created, charge in self._db.execute("SELECT created_at, charge FROM entries"):
            label = period_label(self.budget.period, datetime.fromisoformat(created))
            totals[label] = totals.get(label, Fraction(0)) + read_amount(charge)
        return totals

    def _stored(self, identity: str, query_id: str) -> StoredAnswer | None:
        row = self._db.execute(
            "SELECT canonical_query, response, charge, seq, commitment_salt FROM entries "
            "WHERE identity = ? AND query_id = ?",
            (identity, query_id),
        ).fetchone()
        if row is None:
            return None
        salt = b"" if row[4] is None else bytes(row[4])
        return StoredAnswer(str(row[0]), bytes(row[1]), read_amount(row[2]), int(row[3]), salt)

    def _available(self, spending: dict[str, Fraction], label: str) -> tuple[Fraction, str]:
        """What may still be spent in ``label`` and the name of the binding limit."""
        left = max(Fraction(0), self.budget.limit - spending.get(label, Fraction(0)))
        name = (
            "remaining lifetime budget"
            if label == LIFETIME
            else f"remaining budget for period {label}"
        )
        if self.budget.lifetime_limit is not None:
            total = sum(spending.values(), Fraction(0))
            life = max(Fraction(0), self.budget.lifetime_limit - total)
            if life < left:
                left, name = life, "remaining lifetime budget"
        return left, name

    def _identity_spent(self, identity: str, label: str) -> Fraction:
        """What ``identity`` spent in period ``label``, grouped by commit time.

        The same grouping as the period totals (:meth:`_entry_totals`), not the
        label an entry was charged under: after the NGO changes the period
        kind (yearly to monthly, say), a cap must count the same charges the
        budget counts, or it could be spent again.
        """
        start, end = period_bounds(label)
        rows = self._db.execute(
            "SELECT charge FROM entries WHERE identity = ? AND created_at >= ? "
            "AND (? = '' OR created_at < ?)",
            (identity, start, end, end),
        ).fetchall()
        return sum((read_amount(r[0]) for r in rows), Fraction(0))

    def _screen(
        self,
        identity: str,
        query_id: str,
        canonical_query: str,
        requested: Fraction,
        label: str,
        identity_cap: Fraction | None = None,
    ) -> StoredAnswer | None:
        """Every check, against the state the current transaction sees."""
        stored = self._stored(identity, query_id)
        if stored is not None:
            if stored.canonical_query != canonical_query:
                raise QueryIdConflictError(query_id)
            return stored
        if requested <= 0:
            raise ValueError(f"requested privacy cost must be positive, not {requested}")
        if requested > self.per_query_max:
            raise InsufficientBudgetError(requested, self.per_query_max, "per-query maximum")
        available, limit = self._available(self._spending(), label)
        if requested > available:
            raise InsufficientBudgetError(requested, available, limit)
        if identity_cap is not None:
            left = max(Fraction(0), identity_cap - self._identity_spent(identity, label))
            if requested > left:
                raise InsufficientBudgetError(
                    requested, left, f"remaining budget of {identity} for period {label}"
                )
        return None

    # ------------------------------------------------------------ API

    def check(
        self,
        identity: str,
        query_id: str,
        canonical_query: str,
        requested: Fraction,
        identity_cap: Fraction | None = None,
    ) -> StoredAnswer | None:
        """Cheap pre-check before computing anything; spends nothing.

        Returns this identity's stored answer if ``query_id`` was already
        answered for the same canonical query, else None if the request would
        fit now. Raises :class:`QueryIdConflictError` or
        :class:`InsufficientBudgetError`. Only :meth:`charge` is authoritative.
        """
        with self._lock, self._tx(immediate=False):
            label = period_label(self.budget.period, self._clock())
            return self._screen(identity, query_id, canonical_query, requested, label, identity_cap)

    def stored_answer(
        self, identity: str, query_id: str, canonical_query: str
    ) -> StoredAnswer | None:
        """This identity's stored answer under ``query_id``, if it asked this query; spends
        nothing. :class:`QueryIdConflictError` if the id holds another query."""
        with self._lock, self._tx(immediate=False):
            stored = self._stored(identity, query_id)
        if stored is not None and stored.canonical_query != canonical_query:
            raise QueryIdConflictError(query_id)
        return stored

    def charge(
        self,
        *,
        identity: str,
        query_id: str,
        analyst: str,
        kind: str,
        canonical_query: str,
        requested: Fraction,
        charge: Fraction,
        dataset_version: str,
        response: bytes,
        privacy_map: Fraction,
        commitment_salt: bytes,
        identity_cap: Fraction | None = None,
    ) -> tuple[StoredAnswer, bool]:
        """Check and spend in one transaction; durable on disk before it returns.

        Spends ``charge`` (0 < charge <= requested; the service charges exactly
        what was requested) in the period current at commit time, records
        ``privacy_map`` (OpenDP's map at the scales used, 0 < map <= charge)
        beside it, and stores ``response`` under (identity, query_id) with the
        chain committing to it under ``commitment_salt`` (:mod:`tiaki.receipts`).
        Returns ``(stored, replayed)``: if the id was already answered for the
        same canonical query, ``replayed`` is True, nothing is spent and the
        stored answer (not ``response``) is returned. ``identity_cap``, when
        given, is the most this identity may spend in the current period (a
        per-coordinator cap from the node's policy). Refusals raise
        :class:`QueryIdConflictError` or :class:`InsufficientBudgetError`, and
        store and spend nothing.
        """
        if not 0 < charge <= requested:
            raise ValueError(
                f"charge {format_amount(charge)} must be positive and at most the requested "
                f"{format_amount(requested)}"
            )
        if not 0 < privacy_map <= charge:
            raise ValueError(
                f"privacy map {format_amount(privacy_map)} must be positive and at most the "
                f"charge {format_amount(charge)}"
            )
        if len(commitment_salt) < 16:
            raise ValueError("a commitment salt of at least 16 random bytes is required")
        if not identity or not query_id:
            raise ValueError("identity and query_id must be non-empty")
        with self._lock, self._tx(immediate=True) as conn:
            now = self._clock()
            label = period_label(self.budget.period, now)
            stored = self._screen(
                identity, query_id, canonical_query, requested, label, identity_cap
            )
            if stored is not None:
                return stored, True
            at = chain_time(now)
            record = ChargeRecord(
                query_id, identity, analyst, kind, canonical_query, requested, charge, label,
                dataset_version, response_commitment=commitment(commitment_salt, response),
                privacy_map=privacy_map,
            )  # fmt: skip
            chained = self._chain_charge(conn, self.ledger_id, at, record)
            cursor = conn.execute(
                "INSERT INTO entries (query_id, identity, analyst, kind, canonical_query, "
                "requested, charge, period, dataset_version, created_at, response, entry_hash, "
                "privacy_map, commitment_salt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    query_id,
                    identity,
                    analyst,
                    kind,
                    canonical_query,
                    format_amount(requested),
                    format_amount(charge),
                    label,
                    dataset_version,
                    at,
                    response,
                    chained.hash,
                    format_amount(privacy_map),
                    commitment_salt,
                ),
            )
            row = conn.execute("SELECT spent FROM spending WHERE period = ?", (label,)).fetchone()
            spent = (Fraction(0) if row is None else read_amount(row[0])) + charge
            conn.execute(
                "INSERT INTO spending (period, spent) VALUES (?, ?) "
                "ON CONFLICT (period) DO UPDATE SET spent = excluded.spent",
                (label, format_amount(spent)),
            )
            seq = cursor.lastrowid
        assert seq is not None
        return StoredAnswer(canonical_query, bytes(response), charge, seq, commitment_salt), False

    def status(self) -> BudgetStatus:
        """Spending as committed: current period, lifetime, and every period with spending."""
        with self._lock, self._tx(immediate=False):
            label = period_label(self.budget.period, self._clock())
            spending = self._spending()

        def period(name: str) -> PeriodBudget:
            start, end = period_bounds(name)
            if name == LIFETIME:
                start = self._created[:10]
            return PeriodBudget(
                name, start, end, self.budget.limit, spending.get(name, Fraction(0))
            )

        return BudgetStatus(
            definition=self.definition,
            per_query_max=self.per_query_max,
            current=period(label),
            lifetime_spent=sum(spending.values(), Fraction(0)),
            lifetime_limit=self.budget.lifetime_limit,
            periods=tuple(period(name) for name in sorted(spending)),
        )

    def entries(self) -> list[LedgerEntry]:
        """Every charged query, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, query_id, identity, analyst, kind, canonical_query, charge, period, "
                "dataset_version, created_at, requested, privacy_map FROM entries ORDER BY seq"
            ).fetchall()
        return [_entry(row) for row in rows]

    def apply_policy(self, policy: Policy) -> None:
        """Enforce ``policy`` from the next charge on, and chain it, in one transaction.

        For a policy re-read while the node serves. The privacy definition
        cannot change under existing spending (:class:`LedgerError`); a new
        period kind regroups the spending by commit time, as at open.
        """
        if policy.privacy_definition is not self.definition:
            raise LedgerError(
                f"{self.path}: the ledger accounts in {self.definition.value!r}; the privacy "
                "definition cannot change under existing spending"
            )
        with self._lock:
            previous = (self.budget, self.per_query_max, self.grants)
            self.budget, self.per_query_max = policy.budget, policy.per_query_max
            self.grants = tuple(policy.coordinators)
            try:
                with self._tx(immediate=True) as conn:
                    kind = conn.execute("SELECT value FROM meta WHERE key = 'period'").fetchone()
                    if kind is None or str(kind[0]) != self.budget.period:
                        self._rebuild_spending()
                    self._ensure_policy(conn, self.ledger_id, chain_time(self._clock()))
            except BaseException:
                self.budget, self.per_query_max, self.grants = previous
                raise

    def record_policy(self) -> None:
        """Chain the policy this object enforces, if it differs from the last one recorded."""
        with self._lock, self._tx(immediate=True) as conn:
            self._ensure_policy(conn, self.ledger_id, chain_time(self._clock()))

    def signing_key(self) -> str | None:
        """The public key the chain last recorded as signing its exports, if any."""
        with self._lock, self._tx(immediate=False) as conn:
            last = last_of_type(conn, SigningKeyRecord.type)
        return None if last is None else str(last.body.get("public_key"))

    def record_signing_key(self, public_key: str) -> bool:
        """Chain the key that signs exports from now on, if it is not the last one recorded.

        True if an entry was appended (durable when this returns).
        """
        record = SigningKeyRecord(public_key)
        with self._lock, self._tx(immediate=True) as conn:
            at = chain_time(self._clock())
            return append_if_changed(conn, self.ledger_id, record.type, at, record.body())

    def chain(self, from_seq: int = 1) -> tuple[tuple[int, str], list[ChainEntry]]:
        """The anchor ``(from_seq - 1, its hash)`` and the entries from ``from_seq`` on.

        Read in one transaction, so the entries are one consistent snapshot.
        """
        with self._lock, self._tx(immediate=False) as conn:
            last, _ = chain_head(conn, self.ledger_id)
            if not 1 <= from_seq <= last + 1:
                raise ValueError(f"the chain has entries 1 to {last}; cannot start at {from_seq}")
            anchor = genesis_hash(self.ledger_id)
            if from_seq > 1:
                row = conn.execute(
                    "SELECT hash FROM chain WHERE seq = ?", (from_seq - 1,)
                ).fetchone()
                anchor = str(row[0])
            return (from_seq - 1, anchor), list(read_entries(conn, from_seq))

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the chain's last entry."""
        with self._lock, self._tx(immediate=False) as conn:
            return chain_head(conn, self.ledger_id)

    def verify(self) -> None:
        """Check the ledger against itself; raise :class:`LedgerError` naming what is wrong.

        Every period total is recomputed from the entries; the hash chain is
        unbroken from the ledger's genesis; every charged entry has its chain
        entry (same query, identity, charge, period and stored answer) and no
        chain charge is missing from the entries.
        """
        with self._lock, self._tx(immediate=False) as conn:
            totals = self._entry_totals()
            spending = self._spending()
            chained = list(read_entries(conn))
            rows = conn.execute(
                "SELECT seq, query_id, identity, charge, period, canonical_query, response, "
                "entry_hash, commitment_salt FROM entries ORDER BY seq"
            ).fetchall()
        if totals != {k: v for k, v in spending.items() if v}:
            raise LedgerError(f"{self.path}: period totals do not match the entries")
        breaks = check_links(chained, genesis_hash(self.ledger_id))
        if breaks:
            first = breaks[0]
            raise LedgerError(
                f"{self.path}: hash chain broken at entry {first.seq}: {first.problem}"
            )
        by_hash = {e.hash: e for e in chained if e.type == ChargeRecord.type}
        if len(by_hash) != len(rows):
            raise LedgerError(
                f"{self.path}: {len(rows)} charged queries but {len(by_hash)} charges in the chain"
            )
        for seq, qid, identity, charge, period, canonical, response, entry_hash, salt in rows:
            entry = by_hash.get(str(entry_hash))
            expected = {
                "query_id": qid,
                "identity": identity,
                "charge": format_amount(read_amount(charge)),
                "period": period,
                "canonical_query": canonical,
            }
            if salt is None:  # written before schema 3
                expected["response_sha256"] = hashlib.sha256(bytes(response)).hexdigest()
            else:
                expected["response_commitment"] = commitment(bytes(salt), bytes(response))
            if entry is None or any(entry.body.get(k) != v for k, v in expected.items()):
                raise LedgerError(
                    f"{self.path}: charged query {seq} ({qid!r}) does not match its chain entry"
                )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _entry(row: Any) -> LedgerEntry:
    seq, query_id, identity, analyst, kind, canonical, charge, period, version, created, req, pm = (
        row
    )
    return LedgerEntry(
        seq=int(seq),
        query_id=str(query_id),
        identity=str(identity),
        analyst=str(analyst),
        kind=str(kind),
        canonical_query=str(canonical),
        charge=read_amount(charge),
        period=str(period),
        dataset_version=str(version),
        created_at=str(created),
        requested=read_amount(req),
        privacy_map=None if pm is None else read_amount(pm),
    )
