"""The mirror's hash chain: what each change appends, and tamper evidence.

Also ``tiaki ledger export`` and ``tiaki ledger verify`` end to end through
:func:`coordinator.cli.main.main` (no nodes needed: both read only the
mirror), and the federation file's ``signing_key`` setting.
"""

from __future__ import annotations

import sqlite3
import stat
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.config import load_federation
from coordinator.mirror import SCHEMA_VERSION, MirrorError, MirrorLedger
from coordinator.results import NodeOutcome, NodeStatus
from tests.conftest import Cli
from tests.unit.test_mirror import answered, failed, intent
from tiaki.chain import ChainEntry, genesis_hash
from tiaki.ledger_export import integrity_problems, parse_export, read_export
from tiaki.ledger_records import Opened, OutcomeRecord
from tiaki.signing import SigningKeyError, create_signing_key, load_signing_key

F = Fraction
CANONICAL = '{"kind":"count"}'


def types(mirror: MirrorLedger) -> list[str]:
    return [e.type for e in mirror.chain_entries()]


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection to the file, as someone editing it by hand would have."""
    return sqlite3.connect(path, isolation_level=None)


def question_body(qid: str, nodes: list[str], requested: str = "0.5") -> dict[str, Any]:
    return {
        "query_id": qid,
        "analyst": "ana",
        "identity": "coord-1",
        "canonical_query": CANONICAL,
        "requested": requested,
        "definition": "pure",
        "nodes": nodes,
    }


# ---------------------------------------------------------------- what is appended


def test_a_new_mirror_starts_its_chain_with_opened(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with MirrorLedger(path) as mirror:
        (opened,) = mirror.chain_entries()
        ledger_id = mirror.ledger_id
        assert len(ledger_id) == 32 and int(ledger_id, 16) >= 0
        assert opened.type == "opened" and opened.seq == 1
        assert opened.body == Opened("coordinator", ledger_id, SCHEMA_VERSION).body()
        assert opened.prev == genesis_hash(ledger_id)
        assert mirror.head() == (1, opened.hash)
        assert mirror.verify() == 1
    conn = raw(path)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    conn.close()
    assert (meta["schema_version"], meta["ledger_id"]) == (str(SCHEMA_VERSION), ledger_id)
    with MirrorLedger(path) as again:  # reopening appends nothing and keeps the id
        assert again.ledger_id == ledger_id and types(again) == ["opened"]
    with MirrorLedger(tmp_path / "other.db") as other:
        assert other.ledger_id != ledger_id


def test_each_change_appends_exactly_its_entries(tmp_path: Path) -> None:
    with MirrorLedger(tmp_path / "m.db") as mirror:
        intent(mirror, "q1")
        assert types(mirror) == ["opened", "question"]
        q_entry = mirror.chain_entries(2)[0]
        assert q_entry.body == question_body("q1", ["a", "b", "c"])
        assert q_entry.at == mirror.questions()[0].created_at

        mirror.record_outcomes(
            "q1", [answered("a", F(1, 2), version="2026-01"), failed("b", NodeStatus.REFUSED)]
        )
        assert types(mirror)[2:] == ["outcome", "outcome"]
        a_entry, b_entry = mirror.chain_entries(3)
        assert OutcomeRecord.from_body(a_entry.body) == OutcomeRecord(
            "q1", "a", "answered", "", F(1, 2), 1, "2026-01", "a-id"
        )
        assert OutcomeRecord.from_body(b_entry.body) == OutcomeRecord(
            "q1", "b", "refused", "nope", None, 3, "", ""
        )
        assert a_entry.at == mirror.questions()[0].outcomes[0].updated_at

        # Re-sent to one more node: an entry naming only the new node.
        intent(mirror, "q1", nodes=("c", "a", "d"))
        assert types(mirror)[4:] == ["question"]
        assert mirror.chain_entries(5)[0].body == question_body("q1", ["d"])
        # Re-sent to nodes all asked before: nothing.
        intent(mirror, "q1", nodes=("a", "b"))
        assert len(mirror.chain_entries()) == 5

        # A replay reporting another charge: the entry carries what this reply said.
        mirror.record_outcome("q1", answered("a", F(1, 4), replayed=True))
        replay = OutcomeRecord.from_body(mirror.chain_entries(6)[0].body)
        assert (replay.status, replay.charge) == ("replayed", F(1, 4))
        assert "keeps 0.5" in replay.reason
        # A failure after the charge: no charge in its entry; the table keeps 0.5.
        mirror.record_outcome("q1", failed("a", NodeStatus.UNREACHABLE, "deadline"))
        assert OutcomeRecord.from_body(mirror.chain_entries(7)[0].body).charge is None
        assert mirror.questions()[0].outcomes[0].charged == F(1, 2)
        assert len(mirror.chain_entries()) == 7
        assert mirror.verify() == 7


def test_refused_changes_append_nothing(tmp_path: Path) -> None:
    with MirrorLedger(tmp_path / "m.db") as mirror:
        intent(mirror, "q1", nodes=("a",))
        before = mirror.chain_entries()
        with pytest.raises(MirrorError, match="different question"):
            intent(mirror, "q1", canonical='{"kind":"sum"}')
        with pytest.raises(MirrorError, match="node 'z'"):
            # One good outcome, one for a node never asked: neither is recorded.
            mirror.record_outcomes("q1", [answered("a", F(1, 2)), answered("z", F(1, 2))])
        with pytest.raises(MirrorError, match="negative attempt"):
            mirror.record_outcome("q1", NodeOutcome("a", NodeStatus.ERROR, attempts=-1))
        assert mirror.chain_entries() == before
        assert mirror.questions()[0].pending_nodes == ("a",)


def test_signing_keys_are_chained_only_when_they_change(tmp_path: Path) -> None:
    one = create_signing_key(tmp_path / "one.key").public_text
    two = create_signing_key(tmp_path / "two.key").public_text
    with MirrorLedger(tmp_path / "m.db") as mirror:
        assert mirror.record_signing_key(one) is True
        assert mirror.record_signing_key(one) is False
        assert mirror.record_signing_key(two) is True
        assert mirror.record_signing_key(one) is True  # back to an older key: a change
        with pytest.raises(SigningKeyError):
            mirror.record_signing_key("not a key")
        keys = [e.body["public_key"] for e in mirror.chain_entries() if e.type == "signing_key"]
        assert keys == [one, two, one]
        assert mirror.verify() == 4


def test_several_writers_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with MirrorLedger(path) as first, MirrorLedger(path) as second:
        intent(first, "q1", nodes=("a", "b"))
        second.record_outcome("q1", answered("b", F(1, 3)))
        first.record_outcome("q1", answered("a", F(1, 3)))
        intent(second, "q2", nodes=("a",))
        assert first.chain_entries() == second.chain_entries()
        assert [e.seq for e in first.chain_entries()] == [1, 2, 3, 4, 5]
        assert first.verify() == second.verify() == 5


# ---------------------------------------------------------------- tamper evidence


def test_the_chain_table_refuses_updates_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with MirrorLedger(path) as mirror:
        intent(mirror, "q1", nodes=("a",))
    conn = raw(path)
    for sql in (
        "UPDATE chain SET body = '{}' WHERE seq = 2",
        "UPDATE chain SET at = 'yesterday'",
        "DELETE FROM chain WHERE seq = 2",
        "DELETE FROM chain",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
    assert conn.execute("SELECT count(*) FROM chain").fetchone()[0] == 2
    conn.close()


def small_mirror(path: Path) -> None:
    """opened(1), question q1(2), outcome a(3), outcome b(4), question q2(5)."""
    with MirrorLedger(path) as mirror:
        intent(mirror, "q1", nodes=("a", "b"))
        mirror.record_outcome("q1", answered("a", F(1, 2)))
        mirror.record_outcome("q1", failed("b", NodeStatus.REFUSED))
        intent(mirror, "q2", nodes=("a",))
        assert mirror.verify() == 5


def edit(path: Path, *statements: str) -> None:
    """Change the file behind the mirror's back, with every protecting trigger dropped."""
    conn = raw(path)
    for trigger in (
        "chain_no_update",
        "chain_no_delete",
        "outcomes_charge_once",
        "outcomes_no_delete",
        "questions_no_update",
        "questions_no_delete",
    ):
        conn.execute(f"DROP TRIGGER {trigger}")
    for statement in statements:
        conn.execute(statement)
    conn.close()


TAMPERING = {
    "entry body altered": (
        ["UPDATE chain SET body = replace(body, '\"0.5\"', '\"0.1\"') WHERE seq = 3"],
        r"chain entry 3: its content does not match its hash",
    ),
    "entry time altered": (
        ["UPDATE chain SET at = '2020-01-01T00:00:00.000000Z' WHERE seq = 4"],
        r"chain entry 4: its content does not match its hash",
    ),
    "entry deleted": (
        ["DELETE FROM chain WHERE seq = 3"],
        r"chain entry 4: entry numbered 4 where 3 was due",
    ),
    "last entry deleted": (
        ["DELETE FROM chain WHERE seq = 5"],
        r"question 'q2' is in the questions table but no chain entry records it",
    ),
    "entry body not JSON": (
        ["UPDATE chain SET body = 'oops' WHERE seq = 2"],
        r"chain entry 2: its body is not a JSON object",
    ),
    "charge changed in the table": (
        ["UPDATE outcomes SET charged = '0.1' WHERE node = 'a' AND query_id = 'q1'"],
        r"chain entry 3 \(question 'q1', node 'a'\): the chain says charge 0.5 but the "
        r"outcomes table holds 0.1",
    ),
    "charge erased in the table": (
        ["UPDATE outcomes SET charged = NULL WHERE node = 'a' AND query_id = 'q1'"],
        r"chain entry 3 .*charge 0.5 but the outcomes table holds None",
    ),
    "status changed in the table": (
        ["UPDATE outcomes SET status = 'answered' WHERE node = 'b'"],
        r"chain entry 4 \(question 'q1', node 'b'\): the chain says status 'refused'",
    ),
    "question cost changed in the table": (
        ["UPDATE questions SET requested = '0.01' WHERE query_id = 'q2'"],
        r"chain entry 5 \(question 'q2'\): the chain says requested 0.5 but the questions "
        r"table holds 0.01",
    ),
    "outcome row deleted": (
        ["DELETE FROM outcomes WHERE query_id = 'q2'"],
        r"chain entry 5 \(question 'q2', node 'a'\): the outcomes table has no row",
    ),
    "question added behind the chain": (
        [
            "INSERT INTO questions (query_id, analyst, identity, canonical_query, requested, "
            "definition, created_at) VALUES ('q9', 'eve', 'x', '{}', '9', 'pure', 'now')"
        ],
        r"question 'q9' is in the questions table but no chain entry records it",
    ),
    "node added behind the chain": (
        [
            "INSERT INTO outcomes (query_id, node, status, updated_at) "
            "VALUES ('q2', 'z', 'pending', 'now')"
        ],
        r"node 'z' for question 'q2', but no chain entry asked",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_makes_verify_fail_naming_the_entry(tmp_path: Path, case: str) -> None:
    path = tmp_path / "m.db"
    small_mirror(path)
    statements, message = TAMPERING[case]
    edit(path, *statements)
    with MirrorLedger(path) as mirror, pytest.raises(MirrorError) as caught:
        mirror.verify()
    assert "does not verify" in str(caught.value)
    assert caught.match(message), str(caught.value)


def test_an_untouched_file_with_triggers_dropped_still_verifies(tmp_path: Path) -> None:
    """The control for the tampering cases: dropping triggers alone changes nothing."""
    path = tmp_path / "m.db"
    small_mirror(path)
    edit(path)
    with MirrorLedger(path) as mirror:
        assert mirror.verify() == 5


# ---------------------------------------------------------------- the signing key setting


def test_the_signing_key_lives_beside_the_ledger_unless_the_file_says(tmp_path: Path) -> None:
    fed = tmp_path / "conf" / "federation.yaml"
    fed.parent.mkdir()
    fed.write_text(yaml.safe_dump({"analyst": "ana", "ledger": "state/ledger.sqlite"}))
    config = load_federation(fed)
    assert config.signing_key == tmp_path / "conf" / "state" / "coordinator-signing.key"
    assert config.signing_key_path == config.signing_key
    fed.write_text(yaml.safe_dump({"analyst": "ana", "signing_key": "keys/ledger.key"}))
    assert load_federation(fed).signing_key == tmp_path / "conf" / "keys" / "ledger.key"


# ---------------------------------------------------------------- tiaki ledger export / verify


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    """A federation file whose mirror holds one question and one outcome."""
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump({"analyst": "ana", "identity": "msd-coordinator"}))
    with MirrorLedger(load_federation(path).ledger) as mirror:
        intent(mirror, "q1", nodes=("a", "b"))
        mirror.record_outcome("q1", answered("a", F(1, 2)))
    return path


def test_export_is_signed_by_the_key_file_and_verifies(cli: Cli, fed: Path) -> None:
    out = fed.parent / "out" / "coordinator.jsonl"
    out.parent.mkdir()
    run = cli("ledger", "export", "--config", fed, "--out", out)
    assert run.code == 0, run.err
    key_file = fed.parent / "coordinator-signing.key"
    key = load_signing_key(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert f"created the coordinator's ledger signing key {key_file}" in run.err
    assert key.public_text in run.err
    assert f"signed by key {key.key_id}" in run.err and "entries 1..4 (4)" in run.err

    export = read_export(out)
    assert integrity_problems(export) == []
    assert export.public_key == key.public_text
    assert (export.source, export.subject) == ("coordinator", "msd-coordinator")
    assert export.header["definition"] is None and export.header["policy"] == {}
    assert [e.type for e in export.entries] == [
        "opened",
        "question",
        "outcome",
        "signing_key",  # chained before export: the key that signs is itself on record
    ]
    assert export.entries[-1].body == {"public_key": key.public_text}
    with MirrorLedger(load_federation(fed).ledger) as mirror:
        assert list(export.entries) == mirror.chain_entries()
        assert export.ledger_id == mirror.ledger_id
        assert export.head == mirror.head()[1]


def test_export_twice_same_key_and_a_chain_that_extends(cli: Cli, fed: Path) -> None:
    first_file, second_file = fed.parent / "1.jsonl", fed.parent / "2.jsonl"
    assert cli("ledger", "export", "--config", fed, "--out", first_file).code == 0
    with MirrorLedger(load_federation(fed).ledger) as mirror:
        mirror.record_outcome("q1", failed("b", NodeStatus.UNREACHABLE))
    run = cli("ledger", "export", "--config", fed, "--out", second_file)
    assert run.code == 0 and "created" not in run.err
    first, second = read_export(first_file), read_export(second_file)
    assert first.public_key == second.public_key
    assert second.entries[: len(first.entries)] == first.entries
    assert [e.type for e in second.entries[len(first.entries) :]] == ["outcome"]
    assert integrity_problems(second) == []


def test_export_to_stdout_is_exactly_the_signed_lines(cli: Cli, fed: Path) -> None:
    run = cli("ledger", "export", "--config", fed)
    assert run.code == 0
    assert run.out.endswith("}\n") and not run.out.endswith("\n\n")
    export = parse_export(run.out.split("\n")[:-1], "stdout")
    assert integrity_problems(export) == []
    # The signature covers these exact bytes: one changed character and it does not verify.
    tampered = run.out.replace('"analyst":"ana"', '"analyst":"eve"')
    assert tampered != run.out
    assert integrity_problems(parse_export(tampered.splitlines(), "tampered")) != []


def test_export_from_a_later_entry_anchors_on_the_one_before(cli: Cli, fed: Path) -> None:
    out = fed.parent / "tail.jsonl"
    assert cli("ledger", "export", "--config", fed, "--out", out, "--from-seq", "3").code == 0
    export = read_export(out)
    assert integrity_problems(export) == []
    with MirrorLedger(load_federation(fed).ledger) as mirror:
        entries: list[ChainEntry] = mirror.chain_entries()
    assert export.anchor == entries[1].hash
    assert [e.seq for e in export.entries] == [3, 4]
    run = cli("ledger", "export", "--config", fed, "--from-seq", "9")
    assert run.code == 2 and run.out == ""
    assert run.err.strip().splitlines()[-1] == (
        "error: --from-seq 9: the mirror ledger's chain ends at entry 4, so an export can "
        "start at entry 5 at the latest"
    )
    assert cli("ledger", "export", "--config", fed, "--from-seq", "0").code == 2


def test_export_with_an_unusable_key_file_is_a_clear_error(cli: Cli, fed: Path) -> None:
    (fed.parent / "coordinator-signing.key").write_text("not a key")
    run = cli("ledger", "export", "--config", fed)
    assert run.code == 2 and run.out == ""
    assert run.err.startswith("error: ") and "not an unencrypted PEM private key" in run.err
    assert len(run.err.strip().splitlines()) == 1


def test_verify_says_ok_then_names_the_tampered_entry(cli: Cli, fed: Path) -> None:
    run = cli("ledger", "verify", "--config", fed)
    assert run.code == 0 and run.out.startswith("ok: ") and "3 chained entries" in run.out
    edit(load_federation(fed).ledger, "UPDATE chain SET at = 'x' WHERE seq = 2")
    run = cli("ledger", "verify", "--config", fed)
    assert run.code == 2 and run.out == ""
    assert "error: " in run.err and "chain entry 2: its content does not match its hash" in run.err


def test_verify_without_a_mirror_creates_nothing(cli: Cli, tmp_path: Path) -> None:
    fed = tmp_path / "federation.yaml"
    fed.write_text(yaml.safe_dump({"analyst": "ana"}))
    run = cli("ledger", "verify", "--config", fed)
    assert run.code == 2 and "no mirror ledger yet" in run.err
    assert not (tmp_path / "coordinator-ledger.sqlite").exists()
