"""The coordinator's mirror ledger: what this coordinator asked, and what each node charged.

The node's own ledger is the authority on privacy spent. The mirror is the
coordinator's durable copy, so the ministry and an auditor can compare the two
(:func:`spending_disagreements`). One SQLite file (WAL journal, ``synchronous=FULL``):

- :meth:`MirrorLedger.record_intent` commits the question and one ``pending``
  row per node *before* fan-out, so a crash mid-question leaves a visible
  record of every node that may have charged.
- :meth:`MirrorLedger.record_outcome` commits each node's outcome as it
  arrives. A row's ``status`` is the latest outcome; its ``charged`` is the
  charge the node reported for this question, recorded once: a retry that is
  answered by replay (or that fails) never changes or adds to it, and a
  trigger in the file refuses any change to a recorded charge.

The ``questions`` and ``outcomes`` tables are the queryable state (read back as
:mod:`coordinator.mirror_views`). Beside them the file keeps a hash chain
(:mod:`tiaki.chain`; the file is a :class:`tiaki.chained_ledger.ChainedLedger`):
every change to the tables appends its entry in the *same* transaction, so the
chain is the tamper-evident log of how the tables came to be, and
:meth:`MirrorLedger.verify` checks that the two agree. Entries: ``opened``
when the file is created, a ``question`` when a question is first recorded
(and again listing only the new nodes when a re-send asks more), an
``outcome`` per node reply, and a ``signing_key`` whenever exports start to be
signed by a new key (see ``tiaki ledger export``). A schema-2 file gains the
``requests`` and ``answers`` tables, and a schema-3 file the ``secure_sums``
table (a secure sum's session, beside its decoded total in ``answers``), in
one transaction, the first time it is opened.

Amounts are exact: Fractions written with :func:`tiaki.budget.format_amount`,
read with :func:`tiaki.budget.read_amount`, summed only as Fractions. One
connection per object, serialised by a lock, so threads may share it; writes
use ``BEGIN IMMEDIATE`` plus a busy timeout, so other processes may open the
same file. This module must never import the ``node`` package.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from fractions import Fraction
from pathlib import Path

# PENDING, the views and utc_now are re-exported: callers name them here.
from coordinator.mirror_replay import PENDING as PENDING
from coordinator.mirror_replay import ChainDisagreement, ChainReplay, stored_entry
from coordinator.mirror_views import SELECT_OUTCOMES, SELECT_QUESTIONS, questions_from_rows
from coordinator.mirror_views import Discrepancy as Discrepancy
from coordinator.mirror_views import MirrorOutcome as MirrorOutcome
from coordinator.mirror_views import MirrorQuestion as MirrorQuestion
from coordinator.mirror_views import StoredQuestion as StoredQuestion
from coordinator.mirror_views import spending_disagreements as spending_disagreements
from coordinator.results import NodeOutcome, NodeStatus
from tiaki.answer import Answer
from tiaki.budget import PrivacyDefinition, format_amount, read_amount
from tiaki.chain import check_links, genesis_hash
from tiaki.chained_ledger import ChainedLedger
from tiaki.chained_ledger import utc_now as utc_now
from tiaki.convert import answer_to_proto
from tiaki.ledger_records import COORDINATOR_LEDGER, OutcomeRecord, QuestionRecord
from tiaki.signing import parse_public_key

SCHEMA_VERSION = 4
KIND = "tiaki-coordinator-mirror"

_APPEND_ONLY = "BEGIN SELECT RAISE(ABORT, 'the mirror ledger is append-only'); END"
# Schema 3: what each question was and every answer that came back, so that
# nothing paid for is lost and a past answer can be shown again without asking.
_ANSWER_TABLES = (
    """CREATE TABLE requests (
        query_id    TEXT PRIMARY KEY REFERENCES questions (query_id),
        request     BLOB NOT NULL,
        require_all INTEGER NOT NULL
    )""",
    """CREATE TABLE answers (
        query_id  TEXT NOT NULL REFERENCES questions (query_id),
        node      TEXT NOT NULL,
        response  BLOB NOT NULL,
        midpoint  REAL,
        stored_at TEXT NOT NULL,
        PRIMARY KEY (query_id, node)
    )""",
    f"CREATE TRIGGER requests_no_update BEFORE UPDATE ON requests {_APPEND_ONLY}",
    f"CREATE TRIGGER requests_no_delete BEFORE DELETE ON requests {_APPEND_ONLY}",
    f"CREATE TRIGGER answers_no_update BEFORE UPDATE ON answers {_APPEND_ONLY}",
    f"CREATE TRIGGER answers_no_delete BEFORE DELETE ON answers {_APPEND_ONLY}",
)
# Schema 4: a question asked as a secure sum keeps its session as the analyst was
# shown it (JSON), beside the decoded total kept in ``answers`` under SECURE_TOTAL.
_SECURE_TABLES = (
    """CREATE TABLE secure_sums (
        query_id  TEXT PRIMARY KEY REFERENCES questions (query_id),
        session   TEXT NOT NULL,
        stored_at TEXT NOT NULL
    )""",
    f"CREATE TRIGGER secure_sums_no_update BEFORE UPDATE ON secure_sums {_APPEND_ONLY}",
    f"CREATE TRIGGER secure_sums_no_delete BEFORE DELETE ON secure_sums {_APPEND_ONLY}",
)
# The ``answers`` row of a secure sum's total: not a node name (those have no spaces).
SECURE_TOTAL = "secure sum"
_SCHEMA = (
    """CREATE TABLE questions (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        query_id        TEXT NOT NULL UNIQUE,
        analyst         TEXT NOT NULL,
        identity        TEXT NOT NULL,
        canonical_query TEXT NOT NULL,
        requested       TEXT NOT NULL,
        definition      TEXT NOT NULL,
        created_at      TEXT NOT NULL
    )""",
    """CREATE TABLE outcomes (
        query_id        TEXT NOT NULL REFERENCES questions (query_id),
        node            TEXT NOT NULL,
        status          TEXT NOT NULL,
        reason          TEXT NOT NULL DEFAULT '',
        charged         TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        seconds         REAL NOT NULL DEFAULT 0,
        dataset_version TEXT NOT NULL DEFAULT '',
        node_id         TEXT NOT NULL DEFAULT '',
        updated_at      TEXT NOT NULL,
        PRIMARY KEY (query_id, node)
    )""",
    *_ANSWER_TABLES,
    *_SECURE_TABLES,
    f"CREATE TRIGGER questions_no_update BEFORE UPDATE ON questions {_APPEND_ONLY}",
    f"CREATE TRIGGER questions_no_delete BEFORE DELETE ON questions {_APPEND_ONLY}",
    f"CREATE TRIGGER outcomes_no_delete BEFORE DELETE ON outcomes {_APPEND_ONLY}",
    """CREATE TRIGGER outcomes_charge_once BEFORE UPDATE OF charged ON outcomes
    WHEN OLD.charged IS NOT NULL AND NEW.charged IS NOT OLD.charged
    BEGIN SELECT RAISE(ABORT, 'a recorded charge never changes'); END""",
)


class MirrorError(Exception):
    """The mirror file cannot be used, or a call contradicts what it already holds."""


class MirrorLedger(ChainedLedger):
    """The coordinator's durable record of questions asked and charges reported."""

    noun = "mirror ledger"
    schema_noun = "mirror"
    ledger_kind = COORDINATOR_LEDGER
    schema_version = SCHEMA_VERSION
    tables = _SCHEMA
    error = MirrorError

    def __init__(self, path: Path, clock: Callable[[], datetime] = utc_now) -> None:
        super().__init__(path, clock, make_parent=True)

    def _refuse_foreign(self, tables: set[str], meta: Mapping[str, str]) -> None:
        if meta.get("kind") != KIND:
            raise MirrorError(
                f"{self.path}: an SQLite file, but not a tiaki coordinator mirror ledger; "
                "refusing to write to it (check the mirror path in the coordinator config)"
            )

    def _initial_meta(self) -> dict[str, str]:
        return {"kind": KIND}

    def _upgrade(self, meta: Mapping[str, str]) -> None:
        """Schema 2 to 3: add the tables that keep questions and answers; earlier
        questions have none. Schema 3 to 4: add the table of secure sums."""
        version = meta.get("schema_version")
        if version == "2":
            for statement in _ANSWER_TABLES:
                self._db.execute(statement)
            version = "3"
        if version == "3":
            for statement in _SECURE_TABLES:
                self._db.execute(statement)
            self._set_meta("schema_version", "4")

    # ------------------------------------------------------------ API

    def record_intent(
        self,
        *,
        query_id: str,
        analyst: str,
        identity: str,
        canonical_query: str,
        nodes: Sequence[str],
        requested: Fraction,
        definition: PrivacyDefinition,
        request: bytes | None = None,
        require_all: bool = False,
    ) -> None:
        """Commit the question and a ``pending`` row per node; call before fan-out.

        ``request`` (the question as a serialised ``QueryRequest``) and
        ``require_all`` are kept, from the first time, so that the answer can
        be combined and shown again later without asking any node.

        Re-sending the same question (same ``query_id`` and the same analyst,
        identity, query, cost and definition) keeps the original intent and its
        rows; only nodes not asked before get new ``pending`` rows. Reusing a
        ``query_id`` for anything else raises :class:`MirrorError`.

        Chained in the same transaction: a ``question`` entry listing the nodes
        newly asked (all of them the first time; none, so no entry, when a
        re-send adds nobody). Durable when this returns.
        """
        if not query_id or not identity or not analyst:
            raise ValueError("query_id, analyst and identity must be non-empty")
        if not nodes or len(set(nodes)) != len(nodes) or not all(nodes):
            raise ValueError(f"nodes must be non-empty, distinct names, not {list(nodes)!r}")
        if not isinstance(requested, Fraction) or requested <= 0:
            raise ValueError(f"requested must be a positive Fraction, not {requested!r}")
        definition = PrivacyDefinition(definition)
        intent = (analyst, identity, canonical_query, format_amount(requested), definition.value)
        with self._transaction(write=True) as conn:
            now = self._now()
            row = conn.execute(
                "SELECT analyst, identity, canonical_query, requested, definition "
                "FROM questions WHERE query_id = ?",
                (query_id,),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO questions (query_id, analyst, identity, canonical_query, "
                    "requested, definition, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (query_id, *intent, now),
                )
            elif tuple(row) != intent:
                raise MirrorError(
                    f"query id {query_id!r} was already recorded for a different question "
                    "(analyst, identity, query, cost or definition differ); nodes refuse a "
                    "reused id, so use a new query id"
                )
            if request is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO requests (query_id, request, require_all) "
                    "VALUES (?, ?, ?)",
                    (query_id, request, int(require_all)),
                )
            asked = {
                str(r[0])
                for r in conn.execute("SELECT node FROM outcomes WHERE query_id = ?", (query_id,))
            }
            new_nodes = tuple(node for node in nodes if node not in asked)
            if not new_nodes:
                return
            conn.executemany(
                "INSERT INTO outcomes (query_id, node, status, updated_at) VALUES (?, ?, ?, ?)",
                [(query_id, node, PENDING, now) for node in new_nodes],
            )
            question = QuestionRecord(
                query_id,
                analyst,
                identity,
                canonical_query,
                requested,
                definition.value,
                new_nodes,
            )
            self._append(question, now)

    def record_outcome(self, query_id: str, outcome: NodeOutcome) -> None:
        """Commit one node's outcome for a question whose intent is recorded."""
        self.record_outcomes(query_id, [outcome])

    def record_outcomes(
        self,
        query_id: str,
        outcomes: Sequence[NodeOutcome],
        midpoints: Mapping[str, float] | None = None,
    ) -> None:
        """Commit several nodes' outcomes in one durable transaction.

        Every answer is stored with them (the first one per node; a replay is
        the same answer), with the node's clamping midpoint for a mean from
        ``midpoints``: what combining needs to rebuild the result later.

        Each row takes the latest status and reason; attempts and seconds add
        up over retries; the charge is set from the first answered or replayed
        outcome that reports one and never changes after (the node charged
        once). A later replay reporting a different charge is noted in the
        reason, not counted.

        Chained in the same transaction: one ``outcome`` entry per outcome,
        carrying the charge *this* reply reported (None unless answered or
        replayed) and the reason as stored. Durable when this returns; if any
        outcome is refused, none of them is recorded.
        """
        with self._transaction(write=True) as conn:
            for outcome in outcomes:
                self._write_outcome(conn, query_id, outcome)
                if outcome.answer is not None:
                    conn.execute(
                        "INSERT OR IGNORE INTO answers (query_id, node, response, midpoint, "
                        "stored_at) VALUES (?, ?, ?, ?, ?)",
                        (
                            query_id,
                            outcome.node,
                            answer_to_proto(outcome.answer).SerializeToString(deterministic=True),
                            (midpoints or {}).get(outcome.node),
                            self._now(),
                        ),
                    )

    def record_secure_total(self, query_id: str, total: Answer | None, session: str) -> None:
        """Keep a secure sum's decoded total and its session (JSON), once; durable on return.

        The total is what the analyst was shown, before combining (the nodes'
        own charges are the ``outcome`` rows and entries); ``session`` is how
        it was made. Together they let the answer be shown again.
        """
        with self._transaction(write=True) as conn:
            if conn.execute("SELECT 1 FROM questions WHERE query_id = ?", (query_id,)).fetchone():
                now = self._now()
                if total is not None:  # None: the session aborted and released nothing
                    conn.execute(
                        "INSERT OR IGNORE INTO answers (query_id, node, response, midpoint, "
                        "stored_at) VALUES (?, ?, ?, ?, ?)",
                        (
                            query_id,
                            SECURE_TOTAL,
                            answer_to_proto(total).SerializeToString(deterministic=True),
                            total.midpoint,
                            now,
                        ),
                    )
                conn.execute(
                    "INSERT OR IGNORE INTO secure_sums (query_id, session, stored_at) "
                    "VALUES (?, ?, ?)",
                    (query_id, session, now),
                )
                return
        raise MirrorError(f"no recorded intent for question {query_id!r}")

    def _write_outcome(self, conn: sqlite3.Connection, query_id: str, outcome: NodeOutcome) -> None:
        status = NodeStatus(outcome.status)
        if outcome.attempts < 0:
            raise MirrorError(f"node {outcome.node!r}: negative attempt count {outcome.attempts}")
        reported: Fraction | None = None
        if outcome.answered:
            reported = outcome.charged
            if reported is None and outcome.answer is not None:
                reported = outcome.answer.charged.amount
            if reported is not None and reported < 0:
                raise MirrorError(f"node {outcome.node!r} reported a negative charge {reported}")
        answer = outcome.answer
        row = conn.execute(
            "SELECT charged FROM outcomes WHERE query_id = ? AND node = ?",
            (query_id, outcome.node),
        ).fetchone()
        if row is None:
            raise MirrorError(
                f"no recorded intent asks node {outcome.node!r} question {query_id!r}; "
                "record_intent must be committed before fan-out"
            )
        reason = outcome.reason
        charged: str | None = row[0]
        if charged is None and reported is not None:
            charged = format_amount(reported)
        elif charged is not None and reported is not None and read_amount(charged) != reported:
            note = (
                f"node now reports charge {format_amount(reported)}; the mirror keeps "
                f"{charged}, recorded first"
            )
            reason = f"{reason}; {note}" if reason else note
        now = self._now()
        # An empty version or node id (no answer) keeps the stored one, so the
        # table holds the last one reported: what the chain's entries replay to.
        version = answer.dataset_version if answer is not None else ""
        node_id = answer.node_id if answer is not None else ""
        conn.execute(
            "UPDATE outcomes SET status = ?, reason = ?, charged = ?, "
            "attempts = attempts + ?, seconds = seconds + ?, "
            "dataset_version = coalesce(?, dataset_version), "
            "node_id = coalesce(?, node_id), updated_at = ? "
            "WHERE query_id = ? AND node = ?",
            (
                status.value,
                reason,
                charged,
                outcome.attempts,
                outcome.seconds,
                version or None,
                node_id or None,
                now,
                query_id,
                outcome.node,
            ),
        )
        record = OutcomeRecord(
            query_id,
            outcome.node,
            status.value,
            reason,
            reported,
            outcome.attempts,
            version,
            node_id,
        )
        self._append(record, now)

    def spent_by_node(self) -> dict[str, Fraction]:
        """Exact sum of the charges each node reported to this coordinator (0 if none).

        Raises :class:`MirrorError` if one node's charges were recorded under
        two privacy definitions: ε and ρ cannot be added.
        """
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT o.node, o.charged, q.definition FROM outcomes o "
                "JOIN questions q ON q.query_id = o.query_id"
            ).fetchall()
        spent: dict[str, Fraction] = {}
        definitions: dict[str, str] = {}
        for node, charged, definition in rows:
            spent.setdefault(node, Fraction(0))
            if charged is None:
                continue
            if definitions.setdefault(node, definition) != definition:
                raise MirrorError(
                    f"node {node!r} has charges recorded under both {definitions[node]!r} and "
                    f"{definition!r}; they cannot be summed"
                )
            spent[node] += read_amount(charged)
        return dict(sorted(spent.items()))

    def questions(self) -> list[MirrorQuestion]:
        """Every question, oldest first, each with its node outcomes in the order asked."""
        with self._transaction(write=False):
            qrows = self._named_rows(SELECT_QUESTIONS)
            orows = self._named_rows(SELECT_OUTCOMES)
        return questions_from_rows(qrows, orows)

    def stored_question(self, query_id: str) -> StoredQuestion | None:
        """What was kept of question ``query_id`` to show it again; None if it is unknown.

        ``request`` is None for questions recorded before the mirror kept them.
        """
        with self._transaction(write=False) as conn:
            known = conn.execute(
                "SELECT 1 FROM questions WHERE query_id = ?", (query_id,)
            ).fetchone()
            if known is None:
                return None
            row = conn.execute(
                "SELECT request, require_all FROM requests WHERE query_id = ?", (query_id,)
            ).fetchone()
            answers = conn.execute(
                "SELECT node, response, midpoint FROM answers WHERE query_id = ?", (query_id,)
            ).fetchall()
            secure = conn.execute(
                "SELECT session FROM secure_sums WHERE query_id = ?", (query_id,)
            ).fetchone()
        return StoredQuestion(
            query_id=query_id,
            request=None if row is None else bytes(row[0]),
            require_all=bool(row[1]) if row is not None else False,
            answers={str(node): bytes(response) for node, response, _ in answers},
            midpoints={str(node): float(mid) for node, _, mid in answers if mid is not None},
            secure_session=None if secure is None else str(secure[0]),
        )

    # ------------------------------------------------------------ the chain

    def record_signing_key(self, public_key: str) -> bool:
        """Chain ``public_key`` as the key that signs this ledger's exports from here on.

        Appends a ``signing_key`` entry only if it differs from the last one
        recorded; True if it did. Durable when this returns.
        """
        parse_public_key(public_key)  # refuse to chain something that is not a key
        return super().record_signing_key(public_key)

    def verify(self) -> int:
        """Check the chain and that it accounts for the tables exactly; the entries checked.

        The chain must link unbroken from this ledger's genesis hash, start
        with its ``opened`` entry and hold only well-formed coordinator
        entries; replaying its ``question`` and ``outcome`` entries must give
        every row of ``questions`` and ``outcomes`` as stored (all but the
        ``seconds`` timing, which the chain does not carry). Raises
        :class:`MirrorError` naming the first entry (or row) that disagrees.
        Changes nothing.
        """
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT seq, type, at, body, prev, hash FROM chain ORDER BY seq"
            ).fetchall()
            questions = conn.execute(
                "SELECT query_id, analyst, identity, canonical_query, requested, definition, "
                "created_at FROM questions ORDER BY seq"
            ).fetchall()
            outcomes = conn.execute(
                "SELECT query_id, node, status, reason, charged, attempts, dataset_version, "
                "node_id, updated_at FROM outcomes ORDER BY rowid"
            ).fetchall()
        try:
            entries = [stored_entry(row) for row in rows]
            breaks = check_links(entries, genesis_hash(self.ledger_id))
            if breaks:
                raise ChainDisagreement(f"chain entry {breaks[0].seq}: {breaks[0].problem}")
            replay = ChainReplay(self.ledger_id)
            for entry in entries:
                replay.apply(entry)
            replay.compare_questions(questions)
            replay.compare_outcomes(outcomes)
        except ChainDisagreement as exc:
            raise MirrorError(f"{self.path}: the mirror ledger does not verify: {exc}") from None
        return len(entries)
