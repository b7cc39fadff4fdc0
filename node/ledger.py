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

Secure sums: :meth:`PrivacyLedger.charge_secure` pays for this node's noised
input to one secure sum as :meth:`~PrivacyLedger.charge` pays for an answer
(the same checks and budget), and also spends its worst-case charge against
the worst-case caps of the policy's ``secure_aggregation`` section, all in
the same transaction; the entry records the session. Its tables and their
upgrades are in :mod:`node.ledger_schema`; the file and the reads and writes
the operations here are made of, in :mod:`node.ledger_core`.

Concurrency: one connection per ledger object, serialised by a lock, so any
number of threads may share one object; other processes may open the same file
(``BEGIN IMMEDIATE`` plus a busy timeout serialises writers across processes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from fractions import Fraction
from pathlib import Path

from node.config import Policy
from node.ledger_core import LedgerCore, check_charge_arguments
from node.ledger_core import LedgerError as LedgerError  # re-exported: callers name it here
from node.ledger_rows import SELECT_ENTRIES, entry_from_row, first_problem
from node.ledger_rows import LedgerEntry as LedgerEntry
from node.ledger_rows import StoredAnswer as StoredAnswer
from node.ledger_schema import SCHEMA_VERSION as SCHEMA_VERSION
from node.spending import WorstCaseStatus, budget_status
from tiaki.budget import BudgetStatus, format_amount
from tiaki.chain import read_entries
from tiaki.chained_ledger import utc_now
from tiaki.errors import QueryIdConflictError
from tiaki.ledger_records import ChargeRecord, SecureRevealRecord, SecureSessionRecord
from tiaki.periods import period_label
from tiaki.receipts import commitment


class PrivacyLedger(LedgerCore):
    """Check-and-spend accounting for one node, durable in a SQLite file.

    ``budget.limit`` caps each period (or the lifetime when ``period`` is
    "none"); ``budget.lifetime_limit``, if set, caps the total across periods;
    ``secure``, the policy's ``secure_aggregation`` section, caps the
    worst-case charges of secure sums (None: the node takes no part in them).
    """

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
            secure=policy.secure_aggregation,
        )

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
        check_charge_arguments(identity, query_id, requested, charge, privacy_map, commitment_salt)
        with self._transaction(write=True):
            now = self._clock()
            label = period_label(self.budget.period, now)
            stored = self._screen(
                identity, query_id, canonical_query, requested, label, identity_cap
            )
            if stored is not None:
                return stored, True
            record = ChargeRecord(
                query_id, identity, analyst, kind, canonical_query, requested, charge, label,
                dataset_version, response_commitment=commitment(commitment_salt, response),
                privacy_map=privacy_map,
            )  # fmt: skip
            seq = self._spend(now, record, response, commitment_salt)
        return StoredAnswer(canonical_query, bytes(response), charge, seq, commitment_salt), False

    def check_secure(
        self,
        identity: str,
        query_id: str,
        canonical_query: str,
        requested: Fraction,
        worst_case: Fraction,
        session_id: str,
        identity_cap: Fraction | None = None,
    ) -> StoredAnswer | None:
        """:meth:`check` for a secure sum's input, with its worst-case charge; spends nothing.

        Only :meth:`charge_secure` is authoritative.
        """
        with self._transaction(write=False):
            label = period_label(self.budget.period, self._clock())
            return self._screen_secure(
                identity, query_id, canonical_query, requested, worst_case, label,
                identity_cap, session_id,
            )  # fmt: skip

    def charge_secure(
        self,
        *,
        identity: str,
        query_id: str,
        analyst: str,
        kind: str,
        canonical_query: str,
        requested: Fraction,
        charge: Fraction,
        privacy_map: Fraction,
        worst_case: Fraction,
        session: SecureSessionRecord,
        dataset_version: str,
        response: bytes,
        commitment_salt: bytes,
        identity_cap: Fraction | None = None,
    ) -> tuple[StoredAnswer, bool]:
        """Pay for this node's input to the secure sum ``session``: :meth:`charge`, and more.

        ``charge`` is spent against the budget exactly as an answer's (period
        and lifetime limits, the per-query maximum, ``identity_cap``);
        ``privacy_map`` is the aggregate guarantee, OpenDP's map of the honest
        shares' sum plus the τ term (0 < map <= charge); ``worst_case`` is
        OpenDP's map of this node's share alone, spent against the policy's
        worst-case caps (:class:`WorstCaseMaximumError` above the per-query
        cap, :class:`WorstCaseExhaustedError` over what is left of the
        lifetime cap). ``response`` is the noised vector before masking. One
        transaction, durable before it returns; refusals store and spend
        nothing. A replay (same identity, query id, canonical query and
        session) spends nothing and returns the stored vector; the same id for
        another session or for an answer is :class:`QueryIdConflictError`.
        A node with no ``secure_aggregation`` policy refuses
        (:class:`PolicyViolationError`).
        """
        check_charge_arguments(identity, query_id, requested, charge, privacy_map, commitment_salt)
        if worst_case <= 0:
            raise ValueError(f"worst-case charge {format_amount(worst_case)} must be positive")
        with self._transaction(write=True):
            now = self._clock()
            label = period_label(self.budget.period, now)
            stored = self._screen_secure(
                identity, query_id, canonical_query, requested, worst_case, label,
                identity_cap, session.session_id,
            )  # fmt: skip
            if stored is not None:
                return stored, True
            record = ChargeRecord(
                query_id, identity, analyst, kind, canonical_query, requested, charge, label,
                dataset_version, response_commitment=commitment(commitment_salt, response),
                privacy_map=privacy_map, worst_case=worst_case, secure_session=session,
            )  # fmt: skip
            seq = self._spend(now, record, response, commitment_salt)
        stored = StoredAnswer(
            canonical_query, bytes(response), charge, seq, commitment_salt, session.session_id
        )
        return stored, False

    def record_reveal(self, reveal: SecureRevealRecord) -> bool:
        """Chain what this node revealed to unmask a secure sum; once per session.

        The session file is what stops a second, different reveal; this entry
        is the record an auditor reads. A repeat of the same reveal (a retry,
        or a restart between the session file's commit and this one) appends
        nothing and returns False; a different one for the same session is
        refused with ValueError, which the protocol makes impossible.
        """
        with self._transaction(write=True):
            for (body,) in self._db.execute(
                "SELECT body FROM chain WHERE type = ?", (SecureRevealRecord.type,)
            ):
                earlier = SecureRevealRecord.from_body(json.loads(body))
                if earlier.session_id == reveal.session_id:
                    if earlier != reveal:
                        raise ValueError(
                            f"session {reveal.session_id} already has another reveal recorded"
                        )
                    return False
            self._append(reveal, self._now())
            return True

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

    def worst_case_status(self) -> WorstCaseStatus:
        """Worst-case charges over the ledger's life, against the caps now in force.

        Not part of :class:`BudgetStatus` (nor of the wire) yet.
        """
        with self._transaction(write=False):
            spent = self._worst_case_spent()
            secure = self.secure
        caps = None if secure is None else secure.worst_case
        return WorstCaseStatus(
            spent,
            None if caps is None else caps.per_query,
            None if caps is None else caps.lifetime,
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
            previous = (self.budget, self.per_query_max, self.grants, self.secure)
            self.budget, self.per_query_max = policy.budget, policy.per_query_max
            self.grants = tuple(policy.coordinators)
            self.secure = policy.secure_aggregation
            try:
                with self._transaction(write=True):
                    if self._meta().get("period") != self.budget.period:
                        self._rebuild_spending()
                    self._append_if_changed(self.policy_record(), self._now())
            except BaseException:
                self.budget, self.per_query_max, self.grants, self.secure = previous
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
                "entry_hash, commitment_salt, worst_case, secure_session FROM entries ORDER BY seq"
            ).fetchall()
        problem = first_problem(
            ledger_id=self.ledger_id, totals=totals, spending=spending, chained=chained, rows=rows
        )
        if problem is not None:
            raise LedgerError(f"{self.path}: {problem}")
