"""The privacy ledger's file, and the reads and writes every one of its operations is made of.

:class:`LedgerCore` is the base of :class:`node.ledger.PrivacyLedger`, which
holds the operations (check, charge, status, policy, verify) and documents
what they guarantee. Here: opening the file for a policy (refusing a change
of privacy definition, regrouping the spending when the period kind
changes, upgrading older schemas with :mod:`node.ledger_schema`), reading
the spending and the stored answers inside a transaction, screening a
request against every limit (:mod:`node.spending`), and spending a screened
charge: its chain entries, its row and its period's total, written in the
caller's write transaction. Nothing here opens a transaction of its own
except to rebuild the spending on open.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from fractions import Fraction
from pathlib import Path

from node.config import BudgetPolicy, CoordinatorGrant, SecureAggregationPolicy
from node.ledger_rows import StoredAnswer, session_record, session_text
from node.ledger_schema import SCHEMA_VERSION, TABLES, upgradable, upgrade_entries
from node.spending import policy_record, refusal, regroup, worst_case_refusal
from tiaki.budget import PrivacyDefinition, format_amount, read_amount
from tiaki.chain import ChainEntry, chain_time
from tiaki.chained_ledger import ChainedLedger, utc_now
from tiaki.errors import PolicyViolationError, QueryIdConflictError
from tiaki.ledger_records import NODE_LEDGER, ChargeRecord, PeriodRecord, PolicyRecord
from tiaki.periods import period_bounds


class LedgerError(Exception):
    """The ledger file cannot be used as configured (wrong definition, newer schema, damaged)."""


class LedgerCore(ChainedLedger):
    """The privacy ledger's file and the limits it enforces; :class:`node.ledger.PrivacyLedger`
    adds the operations. The limits may change while it is open (``apply_policy``), under
    the object's lock."""

    noun = "privacy ledger"
    schema_noun = "ledger"
    ledger_kind = NODE_LEDGER
    schema_version = SCHEMA_VERSION
    tables = TABLES
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
        secure: SecureAggregationPolicy | None = None,
    ) -> None:
        self.definition = PrivacyDefinition(definition)
        self.budget = budget
        self.per_query_max = per_query_max
        self.node_id = node_id
        self.grants = tuple(grants)
        self.secure = secure  # None: this node takes no part in secure sums
        self._created = ""
        super().__init__(path, clock)

    # ------------------------------------------------------------ the file

    def _refuse_foreign(self, tables: set[str], meta: Mapping[str, str]) -> None:
        if "meta" not in tables:
            raise LedgerError(f"{self.path}: an SQLite file, but not a tiaki ledger")

    def _initial_meta(self) -> dict[str, str]:
        return {"definition": self.definition.value, "period": self.budget.period}

    def _upgrade(self, meta: Mapping[str, str]) -> None:
        """Schemas 2 and 3 gain the columns they lack; old entries keep their history."""
        version = meta.get("schema_version", "")
        if not upgradable(version):
            return
        self._check_definition(meta)
        upgrade_entries(self._db, int(version))

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
            secure=self.secure,
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
            "SELECT canonical_query, response, charge, seq, commitment_salt, secure_session "
            "FROM entries WHERE identity = ? AND query_id = ?",
            (identity, query_id),
        ).fetchone()
        if row is None:
            return None
        salt = b"" if row[4] is None else bytes(row[4])
        session = None if row[5] is None else session_record(str(row[5])).session_id
        return StoredAnswer(
            str(row[0]), bytes(row[1]), read_amount(row[2]), int(row[3]), salt, session
        )

    def _worst_case_spent(self) -> Fraction:
        """Every worst-case charge over the ledger's life, summed exactly."""
        rows = self._db.execute("SELECT worst_case FROM entries WHERE worst_case IS NOT NULL")
        return sum((read_amount(r[0]) for r in rows), Fraction(0))

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
        session_id: str | None = None,
    ) -> StoredAnswer | None:
        """Every check, against the state the current transaction sees.

        ``session_id`` is the secure sum a charge is for (None: an answer). A
        query id paid for one release only: an answer's id cannot pay for a
        session's input, nor one session's for another's.
        """
        stored = self._stored(identity, query_id)
        if stored is not None:
            if stored.canonical_query != canonical_query or stored.session_id != session_id:
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

    def _screen_secure(
        self,
        identity: str,
        query_id: str,
        canonical_query: str,
        requested: Fraction,
        worst_case: Fraction,
        label: str,
        identity_cap: Fraction | None,
        session_id: str,
    ) -> StoredAnswer | None:
        """:meth:`_screen`, then the worst-case caps (a replay is never refused by them)."""
        secure = self.secure
        if secure is None or self.definition is not PrivacyDefinition.ZCDP:
            raise PolicyViolationError(
                "this node takes no part in secure sums: its policy has no secure_aggregation "
                "section (which needs privacy_definition zcdp)"
            )
        stored = self._screen(
            identity, query_id, canonical_query, requested, label, identity_cap, session_id
        )
        if stored is not None:
            return stored
        refused = worst_case_refusal(worst_case, secure=secure, spent=self._worst_case_spent())
        if refused is not None:
            raise refused
        return None

    def _spend(
        self, now: datetime, record: ChargeRecord, response: bytes, commitment_salt: bytes
    ) -> int:
        """Chain ``record``, store its entry and add its charge to its period's total; call in
        the write transaction that screened it. Returns the entry's ``seq``."""
        at = chain_time(now)
        chained = self._chain_charge(at, record)
        secure = record.secure_session
        cursor = self._db.execute(
            "INSERT INTO entries (query_id, identity, analyst, kind, canonical_query, "
            "requested, charge, period, dataset_version, created_at, response, entry_hash, "
            "privacy_map, commitment_salt, worst_case, secure_session) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.query_id,
                record.identity,
                record.analyst,
                record.kind,
                record.canonical_query,
                format_amount(record.requested),
                format_amount(record.charge),
                record.period,
                record.dataset_version,
                at,
                response,
                chained.hash,
                None if record.privacy_map is None else format_amount(record.privacy_map),
                commitment_salt,
                None if record.worst_case is None else format_amount(record.worst_case),
                None if secure is None else session_text(secure),
            ),
        )
        label = record.period
        row = self._db.execute("SELECT spent FROM spending WHERE period = ?", (label,)).fetchone()
        spent = (Fraction(0) if row is None else read_amount(row[0])) + record.charge
        self._db.execute(
            "INSERT INTO spending (period, spent) VALUES (?, ?) "
            "ON CONFLICT (period) DO UPDATE SET spent = excluded.spent",
            (label, format_amount(spent)),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid


def check_charge_arguments(
    identity: str,
    query_id: str,
    requested: Fraction,
    charge: Fraction,
    privacy_map: Fraction,
    commitment_salt: bytes,
) -> None:
    """The caller's side of a charge (ValueError): amounts in order, a salt, names."""
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
