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

The ``questions`` and ``outcomes`` tables are the queryable state. Beside them
the file keeps a hash chain (:mod:`tiaki.chain`, schema version 2): every
change to the tables appends its entry in the *same* transaction, so the
chain is the tamper-evident log of how the tables came to be, and
:meth:`MirrorLedger.verify` checks that the two agree. Entries: ``opened``
when the file is created, a ``question`` when a question is first recorded
(and again listing only the new nodes when a re-send asks more), an
``outcome`` per node reply, and a ``signing_key`` whenever exports start to be
signed by a new key (see ``tiaki ledger export``). A schema-1 file is upgraded
in place, in one transaction, the first time it is opened.

Amounts are exact: Fractions written with :func:`tiaki.budget.format_amount`,
read with :func:`tiaki.budget.read_amount`, summed only as Fractions. One
connection per object, serialised by a lock, so threads may share it; writes
use ``BEGIN IMMEDIATE`` plus a busy timeout, so other processes may open the
same file. This module must never import the ``node`` package.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from types import TracebackType

from coordinator.mirror_replay import PENDING as PENDING  # re-exported: callers name it here
from coordinator.mirror_replay import (
    ChainDisagreement,
    ChainReplay,
    stored_entry,
    v1_outcomes,
    v1_questions,
)
from coordinator.results import NodeOutcome, NodeStatus
from tiaki.budget import PrivacyDefinition, format_amount, read_amount
from tiaki.chain import (
    ChainEntry,
    append_entry,
    append_if_changed,
    chain_head,
    chain_time,
    check_links,
    create_chain_table,
    genesis_hash,
    read_entries,
)
from tiaki.convert import answer_to_proto
from tiaki.ledger_records import (
    COORDINATOR_LEDGER,
    Opened,
    OutcomeRecord,
    QuestionRecord,
    SigningKeyRecord,
)
from tiaki.signing import parse_public_key

SCHEMA_VERSION = 3
KIND = "tiaki-coordinator-mirror"
BUSY_TIMEOUT_MS = 30_000

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
_SCHEMA = (
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
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
    f"CREATE TRIGGER questions_no_update BEFORE UPDATE ON questions {_APPEND_ONLY}",
    f"CREATE TRIGGER questions_no_delete BEFORE DELETE ON questions {_APPEND_ONLY}",
    f"CREATE TRIGGER outcomes_no_delete BEFORE DELETE ON outcomes {_APPEND_ONLY}",
    """CREATE TRIGGER outcomes_charge_once BEFORE UPDATE OF charged ON outcomes
    WHEN OLD.charged IS NOT NULL AND NEW.charged IS NOT OLD.charged
    BEGIN SELECT RAISE(ABORT, 'a recorded charge never changes'); END""",
)


class MirrorError(Exception):
    """The mirror file cannot be used, or a call contradicts what it already holds."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class MirrorOutcome:
    """One node's part in one question. ``charged`` is None until the node reports a charge."""

    node: str
    status: NodeStatus
    reason: str
    charged: Fraction | None
    attempts: int  # total over every fan-out of this question
    seconds: float  # total over every fan-out of this question
    dataset_version: str
    node_id: str  # the id the node reported for itself ("" until it answers)
    updated_at: str

    @property
    def pending(self) -> bool:
        return self.status == PENDING


@dataclass(frozen=True)
class MirrorQuestion:
    """One question as this coordinator asked it, with every node's outcome."""

    query_id: str
    analyst: str
    identity: str
    canonical_query: str
    requested: Fraction
    definition: PrivacyDefinition
    created_at: str
    outcomes: tuple[MirrorOutcome, ...]

    @property
    def pending_nodes(self) -> tuple[str, ...]:
        return tuple(o.node for o in self.outcomes if o.pending)


@dataclass(frozen=True)
class StoredQuestion:
    """A question as kept for showing again: the request, and each node's answer bytes."""

    query_id: str
    request: bytes | None  # a serialised QueryRequest; None if recorded before schema 3
    require_all: bool
    answers: dict[str, bytes]  # node name -> serialised QueryResponse
    midpoints: dict[str, float]  # node name -> clamping midpoint (means)


@dataclass(frozen=True)
class Discrepancy:
    """A node whose own ledger disagrees with this coordinator's mirror."""

    node: str
    mirror_spent: Fraction
    node_spent: Fraction | None  # None: the node gave no figure to compare
    message: str


class MirrorLedger:
    """The coordinator's durable record of questions asked and charges reported."""

    def __init__(self, path: Path, clock: Callable[[], datetime] = utc_now) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._ledger_id = ""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except (OSError, sqlite3.Error) as exc:
            raise MirrorError(f"{self.path}: cannot open the mirror ledger: {exc}") from None
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _setup(self) -> None:
        conn = self._db
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self._tables():  # check whose file it is before changing anything in it
                self._check_kind(self._meta())
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode != "wal":
                raise MirrorError(f"{self.path}: cannot use WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            # Decided inside the write transaction: another process may be creating or
            # upgrading the same file at the same moment.
            with self._tx():
                if not self._tables():
                    self._create(conn)
                elif self._meta().get("schema_version") == "1":
                    self._upgrade_from_v1(conn)
                if self._meta().get("schema_version") == "2":
                    self._upgrade_to_v3(conn)
                self._ledger_id = self._check_meta(self._meta())
        except sqlite3.DatabaseError as exc:
            raise MirrorError(f"{self.path}: not a usable mirror ledger: {exc}") from None

    def _tables(self) -> set[str]:
        return {str(r[0]) for r in self._db.execute("SELECT name FROM sqlite_master")}

    def _meta(self) -> dict[str, str]:
        if "meta" not in self._tables():
            return {}
        return {str(k): str(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def _check_kind(self, meta: dict[str, str]) -> None:
        if meta.get("kind") != KIND:
            raise MirrorError(
                f"{self.path}: an SQLite file, but not a tiaki coordinator mirror ledger; "
                "refusing to write to it (check the mirror path in the coordinator config)"
            )

    def _check_meta(self, meta: dict[str, str]) -> str:
        """Refuse a file this release cannot read; its ledger id if it can."""
        self._check_kind(meta)
        version = meta.get("schema_version", "")
        if version != str(SCHEMA_VERSION):
            raise MirrorError(
                f"{self.path}: mirror schema version {version or 'unknown'}, this tiaki reads "
                f"version {SCHEMA_VERSION}; use the tiaki release that wrote it"
            )
        ledger_id = meta.get("ledger_id", "")
        if not ledger_id or "chain" not in self._tables():
            raise MirrorError(
                f"{self.path}: the mirror ledger has no hash chain or ledger id; it was damaged "
                "or written by something other than tiaki"
            )
        return ledger_id

    def _create(self, conn: sqlite3.Connection) -> None:
        """A new, empty mirror whose chain starts with its ``opened`` entry."""
        now = chain_time(self._clock())
        for statement in _SCHEMA:
            conn.execute(statement)
        create_chain_table(conn)
        ledger_id = uuid.uuid4().hex
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("kind", KIND),
                ("schema_version", str(SCHEMA_VERSION)),
                ("created_at", now),
                ("ledger_id", ledger_id),
            ],
        )
        opened = Opened(COORDINATOR_LEDGER, ledger_id, SCHEMA_VERSION)
        append_entry(conn, ledger_id, opened.type, now, opened.body())

    def _upgrade_from_v1(self, conn: sqlite3.Connection) -> None:
        """Give a schema-1 mirror its chain, in the caller's transaction.

        The chain is rebuilt from the tables as they stand: ``opened`` (at the
        file's creation time), a ``question`` per question listing every node
        it asked (at its ``created_at``) and an ``outcome`` per answered or
        failed row carrying its stored charge (at its ``updated_at``), in time
        order, so every outcome follows the question that asked its node.
        Rows still pending get no outcome entry: nothing has happened to them.
        """
        now = chain_time(self._clock())
        meta = self._meta()
        create_chain_table(conn)
        ledger_id = uuid.uuid4().hex
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("ledger_id", ledger_id), ("upgraded_from_1_at", now)],
        )
        opened = Opened(COORDINATOR_LEDGER, ledger_id, 2)  # the schema whose chain this is
        append_entry(conn, ledger_id, opened.type, meta.get("created_at") or now, opened.body())
        try:
            questions, outcomes = v1_questions(conn), v1_outcomes(conn)
        except (ValueError, ZeroDivisionError) as exc:  # rolled back: the file stays schema 1
            raise MirrorError(
                f"{self.path}: cannot upgrade this schema-1 mirror ledger: a stored amount is "
                f"unreadable ({exc}); it was changed outside tiaki"
            ) from None
        # One timeline: each record at its own time (a stable sort keeps a
        # question before the outcomes stamped in the same instant).
        history: list[tuple[QuestionRecord | OutcomeRecord, str]] = [*questions, *outcomes]
        for record, at in sorted(history, key=lambda item: item[1]):
            append_entry(conn, ledger_id, record.type, at, record.body())
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    def _upgrade_to_v3(self, conn: sqlite3.Connection) -> None:
        """Add the tables that keep questions and answers; earlier questions have none."""
        for statement in _ANSWER_TABLES:
            conn.execute(statement)
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")

    # ------------------------------------------------------------ plumbing

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise MirrorError(f"{self.path}: the mirror ledger is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._db
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise MirrorError(f"{self.path}: mirror ledger database error: {exc}") from exc

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
        with self._lock, self._tx() as conn:
            now = chain_time(self._clock())
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
            append_entry(conn, self.ledger_id, question.type, now, question.body())

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
        with self._lock, self._tx() as conn:
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
                            chain_time(self._clock()),
                        ),
                    )

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
        now = chain_time(self._clock())
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
        append_entry(conn, self.ledger_id, record.type, now, record.body())

    def spent_by_node(self) -> dict[str, Fraction]:
        """Exact sum of the charges each node reported to this coordinator (0 if none).

        Raises :class:`MirrorError` if one node's charges were recorded under
        two privacy definitions: ε and ρ cannot be added.
        """
        with self._lock, self._tx() as conn:
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
        with self._lock, self._tx() as conn:
            qrows = conn.execute(
                "SELECT query_id, analyst, identity, canonical_query, requested, definition, "
                "created_at FROM questions ORDER BY seq"
            ).fetchall()
            orows = conn.execute(
                "SELECT query_id, node, status, reason, charged, attempts, seconds, "
                "dataset_version, node_id, updated_at FROM outcomes ORDER BY rowid"
            ).fetchall()
        outcomes: dict[str, list[MirrorOutcome]] = {}
        for qid, node, status, reason, charged, attempts, seconds, version, node_id, at in orows:
            outcomes.setdefault(qid, []).append(
                MirrorOutcome(
                    node=str(node),
                    status=NodeStatus(status),
                    reason=str(reason),
                    charged=None if charged is None else read_amount(charged),
                    attempts=int(attempts),
                    seconds=float(seconds),
                    dataset_version=str(version),
                    node_id=str(node_id),
                    updated_at=str(at),
                )
            )
        return [
            MirrorQuestion(
                query_id=str(qid),
                analyst=str(analyst),
                identity=str(identity),
                canonical_query=str(canonical),
                requested=read_amount(requested),
                definition=PrivacyDefinition(definition),
                created_at=str(created),
                outcomes=tuple(outcomes.get(qid, ())),
            )
            for qid, analyst, identity, canonical, requested, definition, created in qrows
        ]

    def stored_question(self, query_id: str) -> StoredQuestion | None:
        """What was kept of question ``query_id`` to show it again; None if it is unknown.

        ``request`` is None for questions recorded before the mirror kept them.
        """
        with self._lock, self._tx() as conn:
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
        return StoredQuestion(
            query_id=query_id,
            request=None if row is None else bytes(row[0]),
            require_all=bool(row[1]) if row is not None else False,
            answers={str(node): bytes(response) for node, response, _ in answers},
            midpoints={str(node): float(mid) for node, _, mid in answers if mid is not None},
        )

    # ------------------------------------------------------------ the chain

    @property
    def ledger_id(self) -> str:
        """This mirror's random id: its chain's genesis hash derives from it."""
        return self._ledger_id

    def chain_entries(self, from_seq: int = 1) -> list[ChainEntry]:
        """The chain's entries from ``from_seq`` on, oldest first, exactly as stored."""
        with self._lock, self._tx() as conn:
            return list(read_entries(conn, from_seq))

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the chain's last entry."""
        with self._lock, self._tx() as conn:
            return chain_head(conn, self.ledger_id)

    def record_signing_key(self, public_text: str) -> bool:
        """Chain ``public_text`` as the key that signs this ledger's exports from here on.

        Appends a ``signing_key`` entry only if it differs from the last one
        recorded; True if it did. Durable when this returns.
        """
        parse_public_key(public_text)  # refuse to chain something that is not a key
        record = SigningKeyRecord(public_text)
        with self._lock, self._tx() as conn:
            at = chain_time(self._clock())
            return append_if_changed(conn, self.ledger_id, record.type, at, record.body())

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
        with self._lock, self._tx() as conn:
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

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> MirrorLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def spending_disagreements(
    mirror: dict[str, Fraction], node_reported: dict[str, Fraction]
) -> list[Discrepancy]:
    """Every node whose own lifetime spending differs from this coordinator's mirror.

    ``mirror`` is :meth:`MirrorLedger.spent_by_node`; ``node_reported`` is each
    node's lifetime spending as its ledger reports it. A node absent from the
    mirror counts as 0 there. A node the mirror charged but that gave no figure
    is flagged too: silence is not agreement. Sorted by node.
    """
    found: list[Discrepancy] = []
    for node in sorted(set(mirror) | set(node_reported)):
        ours = mirror.get(node, Fraction(0))
        theirs = node_reported.get(node)
        if theirs is None:
            if ours:
                found.append(
                    Discrepancy(
                        node,
                        ours,
                        None,
                        f"node {node}: the mirror records {format_amount(ours)} charged but the "
                        "node reported no spending to compare; cannot reconcile",
                    )
                )
            continue
        if theirs == ours:
            continue
        gap = format_amount(abs(theirs - ours))
        if theirs > ours:
            why = (
                "node reports more than this coordinator's mirror: other coordinators "
                "or lost replies"
            )
        else:
            why = (
                "node reports LESS than the mirror: the mirror over-counts or the node's "
                "ledger lost entries — investigate"
            )
        found.append(
            Discrepancy(
                node,
                ours,
                theirs,
                f"node {node}: node reports {format_amount(theirs)}, mirror "
                f"{format_amount(ours)} (difference {gap}); {why}",
            )
        )
    return found
