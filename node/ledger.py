"""The privacy ledger: the node's durable, authoritative record of privacy spent.

Privacy unit: one client of the node's data set; amounts are privacy loss in
the policy's definition (ε for pure DP, ρ for zCDP). One SQLite file
(:class:`tiaki.chained_ledger.ChainedLedger`: WAL, ``synchronous=FULL``,
``BEGIN IMMEDIATE``) holds every charged query with its stored answer, and a
running total per budget period kept in the same transaction. Amounts are
exact: Fractions written as exact decimal text with
:func:`tiaki.budget.format_amount`, read back with
:func:`tiaki.budget.read_amount`, and only ever added or compared as Fractions.

What is spent, and when it is durable: :meth:`PrivacyLedger.charge` spends the
``charge`` it is given (exactly the requested cost; OpenDP's privacy map at the
noise scales used, at most that, is recorded beside it) in the calendar
period, in UTC, current at commit time. It checks (:mod:`node.spending`) and
spends in one ``BEGIN IMMEDIATE`` transaction and returns only after the
commit has been synced to disk, so an answer that leaves the node has always
been paid for, and a crash before the commit spends nothing and leaks
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

from collections.abc import Callable, Mapping
from datetime import datetime
from fractions import Fraction
from pathlib import Path

from node.config import BudgetPolicy, CoordinatorGrant, Policy
from node.ledger_rows import SELECT_ENTRIES, entry_from_row, first_problem
from node.ledger_rows import LedgerEntry as LedgerEntry  # re-exported: callers name it here
from node.ledger_rows import StoredAnswer as StoredAnswer
from node.spending import budget_status, policy_record, refusal, regroup
from tiaki.budget import BudgetStatus, PrivacyDefinition, format_amount, read_amount
from tiaki.chain import ChainEntry, chain_time, read_entries
from tiaki.chained_ledger import ChainedLedger, utc_now
from tiaki.errors import QueryIdConflictError
from tiaki.ledger_records import NODE_LEDGER, ChargeRecord, PeriodRecord, PolicyRecord
from tiaki.periods import period_bounds, period_label
from tiaki.receipts import commitment

SCHEMA_VERSION = 3

_TABLES = (
    """CREATE TABLE entries (
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
        entry_hash      TEXT,  -- the hash of this charge's entry in the chain
        privacy_map     TEXT,  -- OpenDP's map at the scales used (NULL before schema 3)
        commitment_salt BLOB,  -- opens response_commitment (NULL before schema 3)
        UNIQUE (identity, query_id)
    )""",
    """CREATE TABLE spending (
        period TEXT PRIMARY KEY,
        spent  TEXT NOT NULL
    )""",
)
# Columns schema 3 added to the entries of schema-2 ledgers, whose rows keep NULL
# there. (Those files also keep schema 2's prev_hash column, which nothing reads.)
_V3_COLUMNS = (("privacy_map", "TEXT"), ("commitment_salt", "BLOB"))


class LedgerError(Exception):
    """The ledger file cannot be used as configured (wrong definition, newer schema, damaged)."""


class PrivacyLedger(ChainedLedger):
    """Check-and-spend accounting for one node, durable in a SQLite file.

    ``budget.limit`` caps each period (or the lifetime when ``period`` is
    "none"); ``budget.lifetime_limit``, if set, caps the total across periods.
    """

    noun = "privacy ledger"
    schema_noun = "ledger"
    ledger_kind = NODE_LEDGER
    schema_version = SCHEMA_VERSION
    tables = _TABLES
    error = LedgerError

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
        self.definition = PrivacyDefinition(definition)
        self.budget = budget
        self.per_query_max = per_query_max
        self.node_id = node_id
        self.grants = tuple(grants)
        self._created = ""
        super().__init__(path, clock)

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

    # ------------------------------------------------------------ the file

    def _refuse_foreign(self, tables: set[str], meta: Mapping[str, str]) -> None:
        if "meta" not in tables:
            raise LedgerError(f"{self.path}: an SQLite file, but not a tiaki ledger")

    def _initial_meta(self) -> dict[str, str]:
        return {"definition": self.definition.value, "period": self.budget.period}

    def _upgrade(self, meta: Mapping[str, str]) -> None:
        """Schema 2 to 3: add the privacy-map and commitment-salt columns; old entries
        keep their history."""
        if meta.get("schema_version") != "2":
            return
        self._check_definition(meta)
        present = {str(row[1]) for row in self._db.execute("PRAGMA table_info(entries)")}
        for name, sql_type in _V3_COLUMNS:
            if name not in present:
                self._db.execute(f"ALTER TABLE entries ADD COLUMN {name} {sql_type}")
        self._set_meta("schema_version", "3")

    def _check_meta(self, meta: Mapping[str, str]) -> None:
        super()._check_meta(meta)
        self._check_definition(meta)

    def _check_definition(self, meta: Mapping[str, str]) -> None:
        stored = meta.get("definition")
        if stored != self.definition.value:
            raise LedgerError(
                f"{self.path}: the ledger accounts in {stored!r} but the config says "
                f"privacy_definition {self.definition.value!r}; changing the definition under "
                "existing spending would corrupt the accounting. Restore the config's "
                "privacy_definition, or start a new ledger file (and a new budget) deliberately"
            )

    def _opened(self, meta: Mapping[str, str]) -> None:
        if meta["period"] != self.budget.period:
            self._rebuild_spending()
        self._created = meta["created_at"]

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
        self._set_meta("period", self.budget.period)

    # ------------------------------------------------------------ reading, in a transaction

    def policy_record(self) -> PolicyRecord:
        """The policy this ledger object enforces, as the chain records it."""
        return policy_record(
            node_id=self.node_id,
            definition=self.definition,
            budget=self.budget,
            per_query_max=self.per_query_max,
            grants=self.grants,
        )

    def _chain_charge(self, at: str, record: ChargeRecord) -> ChainEntry:
        """Chain one charge after the policy it was checked against and its period's start."""
        self._append_if_changed(self.policy_record(), at)
        last = self._last(PeriodRecord.type)
        if last is None or last.body.get("period") != record.period:
            self._append(PeriodRecord(record.period, *period_bounds(record.period)), at)
        return self._append(record, at)

    def _spending(self) -> dict[str, Fraction]:
        rows = self._db.execute("SELECT period, spent FROM spending").fetchall()
        return {str(label): read_amount(spent) for label, spent in rows}

    def _entry_totals(self) -> dict[str, Fraction]:
        """Each period's spending summed exactly from the entries, by commit time."""
        rows = self._db.execute("SELECT created_at, charge FROM entries")
        return regroup(rows, self.budget.period)

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
        refused = refusal(
            requested,
            per_query_max=self.per_query_max,
            budget=self.budget,
            spending=self._spending(),
            label=label,
            identity=identity,
            identity_cap=identity_cap,
            identity_spent=(
                Fraction(0) if identity_cap is None else self._identity_spent(identity, label)
            ),
        )
        if refused is not None:
            raise refused
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
        with self._transaction(write=False):
            label = period_label(self.budget.period, self._clock())
            return self._screen(identity, query_id, canonical_query, requested, label, identity_cap)

    def stored_answer(
        self, identity: str, query_id: str, canonical_query: str
    ) -> StoredAnswer | None:
        """This identity's stored answer under ``query_id``, if it asked this query; spends
        nothing. :class:`QueryIdConflictError` if the id holds another query."""
        with self._transaction(write=False):
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
        with self._transaction(write=True) as conn:
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
            chained = self._chain_charge(at, record)
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
        with self._transaction(write=False):
            label = period_label(self.budget.period, self._clock())
            spending = self._spending()
        return budget_status(
            definition=self.definition,
            budget=self.budget,
            per_query_max=self.per_query_max,
            created_at=self._created,
            label=label,
            spending=spending,
        )

    def entries(self) -> list[LedgerEntry]:
        """Every charged query, oldest first."""
        with self._transaction(write=False):
            rows = self._named_rows(SELECT_ENTRIES)
        return [entry_from_row(row) for row in rows]

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
        with self._lock:  # no charge sees half of the new policy
            previous = (self.budget, self.per_query_max, self.grants)
            self.budget, self.per_query_max = policy.budget, policy.per_query_max
            self.grants = tuple(policy.coordinators)
            try:
                with self._transaction(write=True):
                    if self._meta().get("period") != self.budget.period:
                        self._rebuild_spending()
                    self._append_if_changed(self.policy_record(), self._now())
            except BaseException:
                self.budget, self.per_query_max, self.grants = previous
                raise

    def record_policy(self) -> None:
        """Chain the policy this object enforces, if it differs from the last one recorded."""
        with self._transaction(write=True):
            self._append_if_changed(self.policy_record(), self._now())

    def verify(self) -> None:
        """Check the ledger against itself; raise :class:`LedgerError` naming what is wrong.

        Every period total is recomputed from the entries; the hash chain is
        unbroken from the ledger's genesis; every charged entry has its chain
        entry (same query, identity, charge, period and stored answer) and no
        chain charge is missing from the entries.
        """
        with self._transaction(write=False) as conn:
            totals = self._entry_totals()
            spending = self._spending()
            chained = list(read_entries(conn))
            rows = conn.execute(
                "SELECT seq, query_id, identity, charge, period, canonical_query, response, "
                "entry_hash, commitment_salt FROM entries ORDER BY seq"
            ).fetchall()
        problem = first_problem(
            ledger_id=self.ledger_id, totals=totals, spending=spending, chained=chained, rows=rows
        )
        if problem is not None:
            raise LedgerError(f"{self.path}: {problem}")
