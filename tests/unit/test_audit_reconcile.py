"""Reconciliation in ``tiaki audit verify``: the coordinator's ledger against each node's.

Every ledger here is correctly chained and signed by its owner: the
disagreements are in what the two sides recorded, which no signature can
catch. Each test checks the finding's kind and the entry it names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.unit.audit_ledgers import (
    Federation,
    LedgerBuilder,
    at,
    charge,
    federation,
    outcome,
    question,
    rechain,
    verify_json,
    with_body,
)
from tiaki.chain import ChainEntry


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return federation(tmp_path / "keys")


def _forge(
    builder: LedgerBuilder,
    path: Path,
    change: Callable[[list[ChainEntry]], list[ChainEntry]],
) -> Path:
    """The ledger rewritten by its owner: changed, re-linked and signed with its own key."""
    return builder.export(path, entries=rechain(builder.ledger_id, change(builder.entries)))


def _charge_seq(builder: LedgerBuilder, query_id: str) -> int:
    return builder.seq_of(lambda e: e.type == "charge" and e.body["query_id"] == query_id)


def _outcome_seq(builder: LedgerBuilder, query_id: str, node: str, status: str) -> int:
    return builder.seq_of(
        lambda e: (
            e.type == "outcome"
            and e.body["query_id"] == query_id
            and e.body["node"] == node
            and e.body["status"] == status
        )
    )


def _all(fed: Federation, tmp_path: Path) -> tuple[Path, Path, Path]:
    folder = tmp_path / "exports"
    folder.mkdir(exist_ok=True)
    return fed.export_all(folder)


def test_a_matched_federation_has_no_errors_or_warnings(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    run = verify_json(capsys, *_all(fed, tmp_path), "--keys", fed.keys_file(tmp_path / "k.yaml"))
    assert run.code == 0
    assert run.findings("error") == []
    # ngo-b reported node id "ngo-b-id" under federation name "ngo-b": matched, not missing;
    # q3's lost first reply was followed by a replay: reconciled, no warning.
    assert run.findings("warning") == []
    # The other identity's charges are listed, not judged.
    assert run.where("info") == {("other-identity", "ngo-a.jsonl", None)}
    [other] = run.findings("info")
    assert "2 charge(s) totalling about 0.375 by 'university'" in other["message"]


def test_a_coordinator_under_reporting_a_charge_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    a, b, _ = _all(fed, tmp_path)
    k_seq = _outcome_seq(fed.ministry, "q4", "ngo-a", "answered")
    k = _forge(
        fed.ministry,
        tmp_path / "ministry.jsonl",
        lambda es: [with_body(e, charge="0.25") if e.seq == k_seq else e for e in es],
    )
    run = verify_json(capsys, a, b, k)
    assert run.code == 5
    seq = _charge_seq(fed.ngo_a, "q4")
    assert run.where() == {("coordinator-under-reports", "ngo-a.jsonl", seq)}
    [finding] = run.findings()
    assert "coordinator under-reports" in finding["message"]
    assert "charged 0.5" in finding["message"]
    assert "recorded 0.25" in finding["message"]
    assert f"ministry.jsonl entry {k_seq}" in finding["message"]


def test_a_node_over_reporting_a_charge_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    _, b, k = _all(fed, tmp_path)
    seq = _charge_seq(fed.ngo_a, "q4")
    a = _forge(
        fed.ngo_a,
        tmp_path / "ngo-a.jsonl",
        lambda es: [
            with_body(e, charge="0.75", requested="0.75") if e.seq == seq else e for e in es
        ],
    )
    run = verify_json(capsys, a, b, k)
    assert run.code == 5
    assert run.where() == {("coordinator-under-reports", "ngo-a.jsonl", seq)}
    assert "node over-reports" in run.findings()[0]["message"]


def test_a_node_charge_the_coordinator_never_asked_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    fed.ngo_a.add(charge("q9", "0.25", "2026-Q2"), at("2026-04-02", "11:00"))
    seq = fed.ngo_a.entries[-1].seq
    run = verify_json(capsys, *_all(fed, tmp_path))
    assert run.code == 5
    assert run.where() == {("node-over-reports", "ngo-a.jsonl", seq)}
    assert "never asked" in run.findings()[0]["message"]


def test_a_node_charge_after_the_coordinator_export_is_only_a_warning(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    k = fed.ministry.export(folder / "ministry.jsonl")  # taken on 3 April
    fed.ngo_a.add(charge("q9", "0.25", "2026-Q2"), at("2026-04-04", "11:00"))
    a = fed.ngo_a.export(folder / "ngo-a.jsonl", exported_at=at("2026-04-05", "00:00"))
    b = fed.ngo_b.export(folder / "ngo-b.jsonl")
    run = verify_json(capsys, a, b, k)
    assert run.code == 0
    seq = fed.ngo_a.entries[-1].seq
    assert ("charge-not-in-coordinator-export", "ngo-a.jsonl", seq) in run.where("warning")


def test_a_charge_for_a_question_sent_to_another_node_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    fed.ministry.add(question("q6", ["ngo-a"]), at("2026-04-02", "12:00"))
    fed.ministry.add(
        outcome("q6", "ngo-a", "answered", "0.5", "ngo-a"), at("2026-04-02", "12:00:01")
    )
    fed.ngo_a.add(charge("q6", "0.5", "2026-Q2"), at("2026-04-02", "12:00:00.5"))
    fed.ngo_b.add(charge("q6", "0.5", "lifetime"), at("2026-04-02", "12:00:00.5"))
    run = verify_json(capsys, *_all(fed, tmp_path))
    assert run.code == 5
    seq = _charge_seq(fed.ngo_b, "q6")
    assert run.where() == {("node-over-reports", "ngo-b.jsonl", seq)}
    assert "was not sent to this node" in run.findings()[0]["message"]


def test_a_charge_for_a_different_query_under_the_same_id_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    seq = _charge_seq(fed.ngo_b, "q4")
    b = _forge(
        fed.ngo_b,
        tmp_path / "ngo-b.jsonl",
        lambda es: [
            with_body(e, canonical_query='{"kind":"count"}') if e.seq == seq else e for e in es
        ],
    )
    a, _, k = _all(fed, tmp_path)
    run = verify_json(capsys, a, b, k)
    assert run.where() == {("node-over-reports", "ngo-b.jsonl", seq)}
    assert "different query" in run.findings()[0]["message"]


def test_a_charge_the_coordinator_recorded_as_refused_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    # ngo-b refused q3 as far as the coordinator knows, yet its ledger charged it.
    fed.ngo_b.add(charge("q3", "0.5", "lifetime", analyst="mere"), at("2026-04-02", "11:00"))
    run = verify_json(capsys, *_all(fed, tmp_path))
    seq = _charge_seq(fed.ngo_b, "q3")
    assert run.where() == {("coordinator-under-reports", "ngo-b.jsonl", seq)}
    assert "'refused'" in run.findings()[0]["message"]


def test_an_outcome_the_coordinator_never_learned_is_a_warning(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    # Without the retry's replay, the coordinator's last word on q3 at ngo-a is
    # "unreachable" while the node did charge: after a crash, not a failure.
    replay = _outcome_seq(fed.ministry, "q3", "ngo-a", "replayed")
    k = _forge(
        fed.ministry, tmp_path / "ministry.jsonl", lambda es: [e for e in es if e.seq != replay]
    )
    a, b, _ = _all(fed, tmp_path)
    run = verify_json(capsys, a, b, k)
    assert run.code == 0
    seq = _charge_seq(fed.ngo_a, "q3")
    assert run.where("warning") == {
        ("outcome-unknown", "ngo-a.jsonl", seq),
        ("keys-not-pinned", "", None),
    }
    message = next(f for f in run.findings("warning") if f["code"] == "outcome-unknown")
    assert "the coordinator never learned this outcome" in message["message"]


def test_a_charge_missing_from_the_node_ledger_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    gone = _charge_seq(fed.ngo_b, "q4")
    b = _forge(fed.ngo_b, tmp_path / "ngo-b.jsonl", lambda es: [e for e in es if e.seq != gone])
    a, _, k = _all(fed, tmp_path)
    run = verify_json(capsys, a, b, k)
    assert run.code == 5
    k_seq = _outcome_seq(fed.ministry, "q4", "ngo-b", "answered")
    assert run.where() == {("node-under-reports", "ministry.jsonl", k_seq)}
    assert "has no such charge" in run.findings()[0]["message"]


def test_a_node_charging_less_than_it_told_the_coordinator_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    seq = _charge_seq(fed.ngo_b, "q4")
    b = _forge(
        fed.ngo_b,
        tmp_path / "ngo-b.jsonl",
        lambda es: [with_body(e, charge="0.5") if e.seq == seq else e for e in es],
    )
    a, _, k = _all(fed, tmp_path)
    run = verify_json(capsys, a, b, k)
    assert run.where() == {("node-under-reports", "ngo-b.jsonl", seq)}


def test_questions_to_a_node_without_an_export_are_a_warning(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    a, _, k = _all(fed, tmp_path)
    run = verify_json(capsys, a, k)
    assert run.code == 0
    first_question = fed.ministry.seq_of(lambda e: e.type == "question")
    assert ("node-not-given", "ministry.jsonl", first_question) in run.where("warning")
    [missing] = [f for f in run.findings("warning") if f["code"] == "node-not-given"]
    assert "'ngo-b'" in missing["message"] and "'ngo-b-id'" in missing["message"]


def test_a_coordinator_ledger_that_contradicts_itself_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    fed.ministry.add(outcome("q7", "ngo-a", "answered", "0.5", "ngo-a"), at("2026-04-02", "12:00"))
    orphan = fed.ministry.entries[-1].seq
    reused = replace(question("q1", ["ngo-a"]), canonical_query="{}")
    fed.ministry.add(reused, at("2026-04-02", "12:01"))
    reuse = fed.ministry.entries[-1].seq
    fed.ministry.add(
        outcome("q4", "ngo-b", "replayed", "0.5", "ngo-b-id"), at("2026-04-02", "12:02")
    )
    changed = fed.ministry.entries[-1].seq
    run = verify_json(capsys, fed.ministry.export(tmp_path / "ministry.jsonl"))
    assert run.where() == {
        ("outcome-without-question", "ministry.jsonl", orphan),
        ("query-id-reused", "ministry.jsonl", reuse),
    }
    assert ("charge-changed", "ministry.jsonl", changed) in run.where("warning")


def test_only_the_coordinators_identity_is_reconciled(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    # A charge by another coordinator with a query id this coordinator also used is
    # not this coordinator's business.
    fed.ngo_b.add(charge("q3", "0.5", "lifetime", identity="university"), at("2026-04-02", "11:00"))
    run = verify_json(capsys, *_all(fed, tmp_path))
    assert run.code == 0
    assert ("other-identity", "ngo-b.jsonl", None) in run.where("info")


def test_a_coordinator_export_named_unlike_its_questions_is_a_warning(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    k = fed.ministry.export(tmp_path / "ministry.jsonl", subject="coordinator")
    run = verify_json(capsys, k)
    assert ("subject-mismatch", "ministry.jsonl", None) in run.where("warning")
    honest = verify_json(capsys, fed.ministry.export(tmp_path / "honest.jsonl"))
    assert "subject-mismatch" not in {f["code"] for f in honest.findings("warning")}
