"""The coordinator's mirror ledger: what this coordinator asked, and what each node charged.

The node's own ledger is the authority on privacy spent. The mirror is the
coordinator's durable copy, so the ministry and an auditor can compare the two
(:func:`reconcile`). One SQLite file (WAL journal, ``synchronous=FULL``):

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

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from coordinator.results import NodeOutcome, NodeStatus
from tiaki.budget import PrivacyDefinition, format_amount, read_amount
from tiaki.chain import (
    ChainEntry,
    ChainFormatError,
    append_entry,
    chain_head,
    check_links,
    create_chain_table,
    genesis_hash,
    last_of_type,
    read_entries,
)
from tiaki.ledger_records import (
    COORDINATOR_LEDGER,
    COORDINATOR_TYPES,
    Opened,
    OutcomeRecord,
    QuestionRecord,
    SigningKeyRecord,
    parse_record,
)
from tiaki.signing import parse_public_key

SCHEMA_VERSION = 2
KIND = "tiaki-coordinator-mirror"
BUSY_TIMEOUT_MS = 30_000
PENDING: Literal["pending"] = "pending"

_APPEND_ONLY = "BEGIN SELECT RAISE(ABORT, 'the mirror ledger is append-only'); END"
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


def timestamp(when: datetime) -> str:
    """A chain and table timestamp: UTC, microseconds, ``Z``."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class MirrorOutcome:
    """One node's part in one question. ``charged`` is None until the node reports a charge."""

    node: str
    status: NodeStatus | Literal["pending"]
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
        now = timestamp(self._clock())
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
        it asked (at its ``created_at``), then an ``outcome`` per answered or
        failed row carrying its stored charge (at its ``updated_at``). Questions
        come first so every outcome follows the question that asked its node.
        Rows still pending get no outcome entry: nothing has happened to them.
        """
        now = timestamp(self._clock())
        meta = self._meta()
        create_chain_table(conn)
        ledger_id = uuid.uuid4().hex
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("ledger_id", ledger_id), ("upgraded_from_1_at", now)],
        )
        opened = Opened(COORDINATOR_LEDGER, ledger_id, SCHEMA_VERSION)
        append_entry(conn, ledger_id, opened.type, meta.get("created_at") or now, opened.body())
        for question, at in _v1_questions(conn):
            append_entry(conn, ledger_id, question.type, at, question.body())
        for outcome, at in _v1_outcomes(conn):
            append_entry(conn, ledger_id, outcome.type, at, outcome.body())
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )

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
    ) -> None:
        """Commit the question and a ``pending`` row per node; call before fan-out.

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
            now = timestamp(self._clock())
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

    def record_outcomes(self, query_id: str, outcomes: Sequence[NodeOutcome]) -> None:
        """Commit several nodes' outcomes in one durable transaction.

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
        now = timestamp(self._clock())
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
                    status=PENDING if status == PENDING else NodeStatus(status),
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
        with self._lock, self._tx() as conn:
            last = last_of_type(conn, SigningKeyRecord.type)
            if last is not None and last.body.get("public_key") == public_text:
                return False
            record = SigningKeyRecord(public_text)
            append_entry(conn, self.ledger_id, record.type, timestamp(self._clock()), record.body())
            return True

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
            entries = [_stored_entry(row) for row in rows]
            breaks = check_links(entries, genesis_hash(self.ledger_id))
            if breaks:
                raise _Disagreement(f"chain entry {breaks[0].seq}: {breaks[0].problem}")
            replay = _Replay(self.ledger_id)
            for entry in entries:
                replay.apply(entry)
            replay.compare_questions(questions)
            replay.compare_outcomes(outcomes)
        except _Disagreement as exc:
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


# ---------------------------------------------------------------- the chain, rebuilt and replayed


def _v1_questions(conn: sqlite3.Connection) -> list[tuple[QuestionRecord, str]]:
    """A schema-1 file's questions as ``question`` entries, with their creation times."""
    asked: dict[str, list[str]] = {}
    for query_id, node in conn.execute("SELECT query_id, node FROM outcomes ORDER BY rowid"):
        asked.setdefault(str(query_id), []).append(str(node))
    rows = conn.execute(
        "SELECT query_id, analyst, identity, canonical_query, requested, definition, created_at "
        "FROM questions ORDER BY seq"
    ).fetchall()
    return [
        (
            QuestionRecord(
                str(qid),
                str(analyst),
                str(identity),
                str(canonical),
                read_amount(requested),
                str(definition),
                tuple(asked.get(str(qid), ())),
            ),
            str(created),
        )
        for qid, analyst, identity, canonical, requested, definition, created in rows
    ]


def _v1_outcomes(conn: sqlite3.Connection) -> list[tuple[OutcomeRecord, str]]:
    """A schema-1 file's settled outcome rows as ``outcome`` entries, oldest update first."""
    rows = conn.execute(
        "SELECT query_id, node, status, reason, charged, attempts, dataset_version, node_id, "
        "updated_at FROM outcomes WHERE status != ? ORDER BY updated_at, rowid",
        (PENDING,),
    ).fetchall()
    return [
        (
            OutcomeRecord(
                str(qid),
                str(node),
                str(status),
                str(reason),
                None if charged is None else read_amount(charged),
                int(attempts),
                str(version),
                str(node_id),
            ),
            str(updated),
        )
        for qid, node, status, reason, charged, attempts, version, node_id, updated in rows
    ]


class _Disagreement(Exception):
    """Where the chain breaks or disagrees with the tables (turned into a MirrorError)."""


def _stored_entry(row: tuple[Any, ...]) -> ChainEntry:
    seq, type_, at, body, prev, hash_ = row
    try:
        parsed = json.loads(body)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        raise _Disagreement(f"chain entry {seq}: its body is not a JSON object (it was altered)")
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
class _ReplayedRow:
    """What the chain says one ``outcomes`` row holds, and the last entry that said so."""

    seq: int
    status: str = PENDING
    reason: str = ""
    charged: Fraction | None = None
    attempts: int = 0
    dataset_version: str = ""
    node_id: str = ""
    # Set by outcome entries only: a row added by a re-send before schema 2 has no
    # entry of its own saying when it was added.
    updated_at: str | None = None

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


class _Replay:
    """The tables as the chain's entries say they must be."""

    def __init__(self, ledger_id: str) -> None:
        self.ledger_id = ledger_id
        self.questions: dict[str, _AskedQuestion] = {}
        self.rows: dict[tuple[str, str], _ReplayedRow] = {}

    def apply(self, entry: ChainEntry) -> None:
        where = f"chain entry {entry.seq} ({entry.type})"
        if entry.type not in COORDINATOR_TYPES:
            raise _Disagreement(f"{where}: not a kind of entry a coordinator ledger holds")
        try:
            record = parse_record(entry)
        except ChainFormatError as exc:
            raise _Disagreement(f"{where}: malformed: {exc}") from None
        if isinstance(record, Opened):
            self._opened(entry.seq, record, where)
        elif entry.seq == 1:
            raise _Disagreement(f"{where}: the chain must begin with its 'opened' entry")
        elif isinstance(record, QuestionRecord):
            self._question(entry, record, where)
        elif isinstance(record, OutcomeRecord):
            self._outcome(entry, record, where)
        # A signing_key entry has nothing in the tables to agree with.

    def _opened(self, seq: int, record: Opened, where: str) -> None:
        if seq != 1:
            raise _Disagreement(f"{where}: a ledger is opened once, by its first entry")
        if record.ledger != COORDINATOR_LEDGER or record.ledger_id != self.ledger_id:
            raise _Disagreement(
                f"{where}: opens {record.ledger} ledger {record.ledger_id!r}, not this "
                f"coordinator mirror {self.ledger_id!r}"
            )

    def _question(self, entry: ChainEntry, record: QuestionRecord, where: str) -> None:
        asked = self.questions.get(record.query_id)
        if asked is None:
            asked = self.questions[record.query_id] = _AskedQuestion(entry.seq, entry.at, record)
        elif replace(record, nodes=()) != replace(asked.record, nodes=()):
            raise _Disagreement(
                f"{where}: re-records question {record.query_id!r} with another analyst, "
                f"identity, query, cost or definition than entry {asked.seq}"
            )
        if not record.nodes:
            raise _Disagreement(f"{where}: asks no nodes")
        for node in record.nodes:
            if (record.query_id, node) in self.rows:
                raise _Disagreement(
                    f"{where}: asks node {node!r} question {record.query_id!r} a second time"
                )
            self.rows[record.query_id, node] = _ReplayedRow(entry.seq)
            asked.nodes.append(node)

    def _outcome(self, entry: ChainEntry, record: OutcomeRecord, where: str) -> None:
        row = self.rows.get((record.query_id, record.node))
        if row is None:
            raise _Disagreement(
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
                raise _Disagreement(
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
                raise _Disagreement(
                    f"chain entry {asked.seq} (question {qid!r}): the chain says {key} "
                    f"{_show(chained)} but the questions table holds {_show(stored)}"
                )
        for qid, asked in self.questions.items():
            if qid not in stored_ids:
                raise _Disagreement(
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
                raise _Disagreement(
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
            if row.updated_at is not None:
                chained["updated_at"] = row.updated_at
            difference = _first_difference(chained, stored)
            if difference is not None:
                key, said, held = difference
                raise _Disagreement(
                    f"chain entry {row.seq} (question {qid!r}, node {node!r}): the chain says "
                    f"{key} {_show(said)} but the outcomes table holds {_show(held)}"
                )
        for (qid, node), row in self.rows.items():
            if (qid, node) not in stored_keys:
                raise _Disagreement(
                    f"chain entry {row.seq} (question {qid!r}, node {node!r}): the outcomes "
                    "table has no row for it"
                )


def reconcile(mirror: dict[str, Fraction], node_reported: dict[str, Fraction]) -> list[Discrepancy]:
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
