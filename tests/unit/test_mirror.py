"""The coordinator's mirror ledger: durable intent, exact charges, once each, and disagreements."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import pytest

from coordinator.mirror import (
    PENDING,
    Discrepancy,
    MirrorError,
    MirrorLedger,
    MirrorQuestion,
    spending_disagreements,
)
from coordinator.results import NodeOutcome, NodeStatus
from tiaki.answer import Answer
from tiaki.budget import PrivacyDefinition
from tiaki.query import PrivacyCost

F = Fraction
HALF = F(1, 2)
PURE = PrivacyDefinition.PURE
ROOT = Path(__file__).resolve().parents[2]


def intent(
    mirror: MirrorLedger,
    qid: str,
    nodes: tuple[str, ...] = ("a", "b", "c"),
    requested: Fraction = HALF,
    canonical: str = '{"kind":"count"}',
    analyst: str = "ana",
    definition: PrivacyDefinition = PURE,
) -> None:
    mirror.record_intent(
        query_id=qid,
        analyst=analyst,
        identity="coord-1",
        canonical_query=canonical,
        nodes=nodes,
        requested=requested,
        definition=definition,
    )


def answered(
    node: str,
    charged: Fraction,
    *,
    replayed: bool = False,
    attempts: int = 1,
    version: str = "v1",
    with_answer: bool = True,
) -> NodeOutcome:
    answer = Answer(
        query_id="q",
        node_id=f"{node}-id",
        canonical_query="{}",
        group_by=(),
        cells=(),
        charged=PrivacyCost(PURE, charged),
        dataset_version=version,
        replayed=replayed,
        budget=None,
    )
    return NodeOutcome(
        node=node,
        status=NodeStatus.REPLAYED if replayed else NodeStatus.ANSWERED,
        charged=charged,
        answer=answer if with_answer else None,
        attempts=attempts,
        seconds=0.25,
    )


def failed(node: str, status: NodeStatus, reason: str = "nope") -> NodeOutcome:
    return NodeOutcome(node=node, status=status, reason=reason, attempts=3, seconds=2.0)


def only(mirror: MirrorLedger) -> MirrorQuestion:
    (question,) = mirror.questions()
    return question


def test_intent_then_outcomes_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "mirror.db"
    with MirrorLedger(path) as mirror:
        intent(mirror, "q1", requested=F(3, 4))
        mirror.record_outcome("q1", answered("a", F(3, 4), version="2026-01"))
        mirror.record_outcome("q1", failed("b", NodeStatus.REFUSED, "budget exhausted"))
        mirror.record_outcome("q1", failed("c", NodeStatus.UNREACHABLE, "deadline"))
        q = only(mirror)
        assert (q.query_id, q.analyst, q.identity) == ("q1", "ana", "coord-1")
        assert (q.requested, q.definition, q.canonical_query) == (F(3, 4), PURE, '{"kind":"count"}')
        assert q.created_at.endswith("Z")
        a, b, c = q.outcomes
        assert (a.node, a.status, a.charged, a.attempts) == ("a", NodeStatus.ANSWERED, F(3, 4), 1)
        assert (a.dataset_version, a.node_id, a.seconds) == ("2026-01", "a-id", 0.25)
        assert (b.status, b.reason, b.charged, b.attempts) == (
            NodeStatus.REFUSED,
            "budget exhausted",
            None,
            3,
        )
        assert (c.status, c.reason, c.dataset_version, c.node_id) == (
            NodeStatus.UNREACHABLE,
            "deadline",
            "",
            "",
        )
        assert q.pending_nodes == ()
        assert mirror.spent_by_node() == {"a": F(3, 4), "b": F(0), "c": F(0)}
    assert str(sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]) == "wal"


def test_charge_taken_from_answer_when_outcome_has_none(tmp_path: Path) -> None:
    with MirrorLedger(tmp_path / "m.db") as mirror:
        intent(mirror, "q1", nodes=("a",))
        outcome = answered("a", F(1, 8))
        mirror.record_outcome("q1", NodeOutcome("a", NodeStatus.ANSWERED, answer=outcome.answer))
        assert mirror.spent_by_node() == {"a": F(1, 8)}


def test_pending_rows_survive_a_crash_between_intent_and_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    mirror = MirrorLedger(path)
    intent(mirror, "q1")
    mirror.record_outcome("q1", answered("a", F(1, 2)))
    mirror.close()
    with MirrorLedger(path) as reopened:
        q = only(reopened)
        assert q.pending_nodes == ("b", "c")
        assert [o.status for o in q.outcomes] == [NodeStatus.ANSWERED, PENDING, PENDING]
        assert all(o.pending for o in q.outcomes[1:])


def test_intent_is_durable_when_the_process_dies_without_closing(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    script = (
        "import os, sys\n"
        "from fractions import Fraction\n"
        "from pathlib import Path\n"
        "from coordinator.mirror import MirrorLedger\n"
        "from tiaki.budget import PrivacyDefinition\n"
        "m = MirrorLedger(Path(sys.argv[1]))\n"
        "m.record_intent(query_id='q9', analyst='ana', identity='coord-1', canonical_query='{}',"
        " nodes=['x', 'y'], requested=Fraction(1, 10), definition=PrivacyDefinition.ZCDP)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=ROOT, timeout=60)
    with MirrorLedger(path) as mirror:
        q = only(mirror)
        assert (q.query_id, q.requested, q.definition) == ("q9", F(1, 10), PrivacyDefinition.ZCDP)
        assert q.pending_nodes == ("x", "y")


def test_retry_keeps_original_intent_and_replay_does_not_double_count(tmp_path: Path) -> None:
    with MirrorLedger(tmp_path / "m.db") as mirror:
        intent(mirror, "q1", nodes=("a", "b"))
        mirror.record_outcome("q1", answered("a", F(1, 2)))
        mirror.record_outcome("q1", failed("b", NodeStatus.UNREACHABLE))
        # The same question re-sent, to one more node as well.
        intent(mirror, "q1", nodes=("a", "b", "c"))
        mirror.record_outcome("q1", answered("a", F(1, 2), replayed=True))
        mirror.record_outcome("q1", answered("b", F(1, 2), replayed=True))  # first reply lost
        mirror.record_outcome("q1", answered("c", F(1, 2)))
        q = only(mirror)
        a, b, c = q.outcomes
        assert (a.status, a.charged, a.attempts) == (NodeStatus.REPLAYED, F(1, 2), 2)
        assert (b.status, b.charged, b.attempts) == (NodeStatus.REPLAYED, F(1, 2), 4)
        assert c.charged == F(1, 2)
        # A later failed retry does not erase the charge that happened.
        mirror.record_outcome("q1", failed("a", NodeStatus.UNREACHABLE))
        assert mirror.spent_by_node() == {"a": F(1, 2), "b": F(1, 2), "c": F(1, 2)}
        assert len(mirror.questions()) == 1


def test_replay_reporting_a_different_charge_is_noted_not_counted(tmp_path: Path) -> None:
    with MirrorLedger(tmp_path / "m.db") as mirror:
        intent(mirror, "q1", nodes=("a",))
        mirror.record_outcome("q1", answered("a", F(1, 4)))
        mirror.record_outcome("q1", answered("a", F(1, 2), replayed=True))
        (a,) = only(mirror).outcomes
        assert a.charged == F(1, 4)
        assert "now reports charge 0.5" in a.reason and "keeps 0.25" in a.reason
        assert mirror.spent_by_node() == {"a": F(1, 4)}


def test_reusing_a_query_id_for_another_question_is_refused(tmp_path: Path) -> None:
    with MirrorLedger(tmp_path / "m.db") as mirror:
        intent(mirror, "q1")
        with pytest.raises(MirrorError, match="different question"):
            intent(mirror, "q1", canonical='{"kind":"sum"}')
        with pytest.raises(MirrorError, match="different question"):
            intent(mirror, "q1", requested=F(1, 3))
        with pytest.raises(MirrorError, match="different question"):
            intent(mirror, "q1", analyst="someone-else")
        assert only(mirror).canonical_query == '{"kind":"count"}'


def test_bad_calls_are_rejected(tmp_path: Path) -> None:
    with MirrorLedger(tmp_path / "m.db") as mirror:
        with pytest.raises(ValueError, match="non-empty, distinct names"):
            intent(mirror, "q1", nodes=())
        with pytest.raises(ValueError, match="non-empty, distinct names"):
            intent(mirror, "q1", nodes=("a", "a"))
        with pytest.raises(ValueError, match="positive Fraction"):
            intent(mirror, "q1", requested=F(0))
        with pytest.raises(MirrorError, match="record_intent"):
            mirror.record_outcome("never", answered("a", F(1)))
        intent(mirror, "q1", nodes=("a",))
        with pytest.raises(MirrorError, match="node 'z'"):
            mirror.record_outcome("q1", answered("z", F(1)))
        with pytest.raises(MirrorError, match="negative"):
            mirror.record_outcome("q1", NodeOutcome("a", NodeStatus.ANSWERED, charged=F(-1)))
        assert mirror.questions()[0].pending_nodes == ("a",)
    with pytest.raises(MirrorError, match="closed"):
        mirror.questions()


def test_sums_are_exact(tmp_path: Path) -> None:
    dyadic = [F(x) for x in (0.1, 0.2, 0.30000000000000004, 1e-9, 2.5e-7)]
    with MirrorLedger(tmp_path / "m.db") as mirror:
        for i in range(10):
            intent(mirror, f"tenth-{i}", nodes=("a",), requested=F(1, 10))
            mirror.record_outcome(f"tenth-{i}", answered("a", F(1, 10)))
        for i, amount in enumerate(dyadic):
            intent(mirror, f"dy-{i}", nodes=("b",), requested=amount)
            mirror.record_outcome(f"dy-{i}", answered("b", amount))
        spent = mirror.spent_by_node()
        assert spent["a"] == 1
        assert spent["b"] == sum(dyadic, F(0))
        assert spent["b"] != F(0.1 + 0.2 + 0.30000000000000004 + 1e-9 + 2.5e-7)
        assert [o.charged for q in mirror.questions()[10:] for o in q.outcomes] == dyadic
        assert [q.requested for q in mirror.questions()[10:]] == dyadic


def test_mixed_definitions_for_one_node_cannot_be_summed(tmp_path: Path) -> None:
    with MirrorLedger(tmp_path / "m.db") as mirror:
        intent(mirror, "q1", nodes=("a",))
        intent(mirror, "q2", nodes=("a",), definition=PrivacyDefinition.ZCDP)
        mirror.record_outcome("q1", answered("a", F(1, 2)))
        mirror.record_outcome("q2", answered("a", F(1, 2)))
        with pytest.raises(MirrorError, match="cannot be summed"):
            mirror.spent_by_node()


def test_concurrent_outcomes_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    nodes = tuple(f"n{i}" for i in range(8))
    questions = [f"q{i}" for i in range(12)]
    errors: list[BaseException] = []
    with MirrorLedger(path) as mirror, MirrorLedger(path) as other:
        for qid in questions:
            intent(mirror, qid, nodes=nodes, requested=F(1, 10))
        barrier = threading.Barrier(len(nodes))

        def work(node: str, ledger: MirrorLedger) -> None:
            try:
                barrier.wait()
                for qid in questions:
                    ledger.record_outcome(qid, answered(node, F(1, 10)))
                    ledger.record_outcome(qid, answered(node, F(1, 10), replayed=True))
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(n, mirror if i % 2 else other))
            for i, n in enumerate(nodes)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert mirror.spent_by_node() == {n: F(12, 10) for n in nodes}
        assert all(o.attempts == 2 for q in mirror.questions() for o in q.outcomes)


def test_reopen_preserves_everything(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with MirrorLedger(path) as mirror:
        intent(mirror, "q1")
        intent(mirror, "q2", nodes=("b",), requested=F(1, 3))
        mirror.record_outcome("q1", answered("a", F(1, 2)))
        mirror.record_outcome("q2", answered("b", F(1, 3)))
        before, spent = mirror.questions(), mirror.spent_by_node()
    with MirrorLedger(path) as mirror:
        assert mirror.questions() == before
        assert mirror.spent_by_node() == spent == {"a": F(1, 2), "b": F(1, 3), "c": F(0)}


def test_the_file_refuses_changed_charges_and_deletions(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with MirrorLedger(path) as mirror:
        intent(mirror, "q1", nodes=("a",))
        mirror.record_outcome("q1", answered("a", F(1, 2)))
    conn = sqlite3.connect(path)
    for sql in (
        "UPDATE outcomes SET charged = '0.1'",
        "UPDATE outcomes SET charged = NULL",
        "DELETE FROM outcomes",
        "UPDATE questions SET requested = '9'",
        "DELETE FROM questions",
    ):
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(sql)
    conn.close()


def test_files_that_are_not_a_mirror_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE clients (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(MirrorError, match="not a tiaki coordinator mirror"):
        MirrorLedger(other)
    conn = sqlite3.connect(other)  # left as it was: not switched to WAL, nothing added
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("clients",)]
    conn.close()
    # A node ledger also has a meta table with a schema version: still not a mirror.
    ledger = tmp_path / "ledger.db"
    conn = sqlite3.connect(ledger)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.commit()
    conn.close()
    with pytest.raises(MirrorError, match="not a tiaki coordinator mirror"):
        MirrorLedger(ledger)
    # A newer schema and a file that is not SQLite: tests/unit/test_chained_ledger.py.


def test_reconcile_flags_both_directions_and_nothing_when_equal() -> None:
    mirror = {"a": F(1, 2), "b": F(1, 2), "c": F(3, 10), "d": F(1, 5)}
    reported = {"a": F(1, 2), "b": F(7, 10), "c": F(1, 10), "e": F(1, 4)}
    found = spending_disagreements(mirror, reported)
    assert [(d.node, d.mirror_spent, d.node_spent) for d in found] == [
        ("b", F(1, 2), F(7, 10)),
        ("c", F(3, 10), F(1, 10)),
        ("d", F(1, 5), None),
        ("e", F(0), F(1, 4)),
    ]
    more, less, silent, other = (d.message for d in found)
    assert "node reports more than this coordinator's mirror" in more
    assert "other coordinators or lost replies" in more and "difference 0.2" in more
    assert "node reports LESS than the mirror" in less and "investigate" in less
    assert "difference 0.2" in less
    assert "cannot reconcile" in silent
    assert "other coordinators" in other
    assert spending_disagreements({"a": F(1, 10) * 10}, {"a": F(1)}) == []
    assert spending_disagreements({"a": F(0)}, {}) == []
    assert spending_disagreements({}, {}) == []
    assert isinstance(found[0], Discrepancy)


def test_a_schema_3_mirror_from_the_previous_release_is_upgraded_in_place(
    tmp_path: Path,
) -> None:
    """The fixture was written by the release before secure sums (schema 3)."""
    path = tmp_path / "mirror.sqlite"
    path.write_bytes((ROOT / "tests" / "data" / "mirror-schema3.sqlite").read_bytes())
    with MirrorLedger(path) as mirror:
        (question,) = mirror.questions()
        assert question.query_id == "q-old-1"
        assert {o.node: o.charged for o in question.outcomes} == {
            "ngo-a": Fraction(1, 2),
            "ngo-b": None,
        }
        stored = mirror.stored_question("q-old-1")
        assert stored is not None and stored.secure_session is None
        assert mirror.verify() >= 3  # the chain the old release wrote still checks
        mirror.record_intent(
            query_id="q-new-1", analyst="ana", identity="msd-coordinator",
            canonical_query='{"kind":"count"}', nodes=["ngo-a"], requested=Fraction(1, 4),
            definition=PrivacyDefinition.ZCDP,
        )  # fmt: skip
        mirror.record_secure_total("q-new-1", None, '{"stopped": "test"}')
        again = mirror.stored_question("q-new-1")
        assert again is not None and again.secure_session == '{"stopped": "test"}'
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == ("4",)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM secure_sums")
    finally:
        conn.close()
