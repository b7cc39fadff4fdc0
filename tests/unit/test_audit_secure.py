"""Secure sums in a node's ledger, audited: both caps, the session's arithmetic, tampering.

The first tests build correctly chained, signed ledgers whose secure-sum
charges break the node's own recorded rules for secure sums, and check that
``tiaki audit verify`` names the entry. The last ones export a real node
ledger (SQLite, the node's own export code) that paid for secure sums, and
check that it verifies, and that an edit to a secure entry after signing
does not.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from node.config import NodeConfig, load_config
from node.exports import export_ledger
from node.ledger import PrivacyLedger
from tests.unit.audit_ledgers import (
    Q1,
    LedgerBuilder,
    at,
    charge,
    edit_lines,
    policy,
    run_audit,
    verify_json,
)
from tiaki.ledger_records import (
    NODE_LEDGER,
    ChargeRecord,
    PolicyRecord,
    SecureAggregationRecord,
    SecurePeerRecord,
    SecureSessionRecord,
)
from tiaki.signing import create_signing_key, public_key_text

F = Fraction
START = at("2026-03-01", "08:00:00")
ROOT = Path(__file__).resolve().parents[2]
PEER_KEY = "ed25519:T4GRJrjDeBCRF88wmQpfm1Nn0jCgqHV7oPDIIaBmPSE="

RULES = SecureAggregationRecord(
    peers=tuple(SecurePeerRecord(f"ngo-{c}", PEER_KEY) for c in "bcde"),
    min_cohort=4,
    colluders=1,
    worst_case_per_query=F(2),
    worst_case_lifetime=F(5),
)


def zcdp_policy(rules: SecureAggregationRecord | None = RULES) -> PolicyRecord:
    return dataclasses.replace(policy("ngo-a"), definition="zcdp", secure_aggregation=rules)


def session(n: int = 1, **changes: Any) -> SecureSessionRecord:
    base = SecureSessionRecord(
        session_id=f"{n:032x}",
        roster_hash="cd" * 32,
        size=5,
        threshold=4,
        colluders=1,
        honest=3,
        scale_factors=(4,),
        share_scales=(2.5,),
        tau_term=F(0),
    )
    return dataclasses.replace(base, **changes)


def secure_charge(query_id: str, worst_case: str, n: int = 1, **changes: Any) -> ChargeRecord:
    return dataclasses.replace(
        charge(query_id, "0.25", "2026-Q1", privacy_map="0.125"),
        worst_case=F(worst_case),
        secure_session=session(n, **changes),
    )


@pytest.fixture
def node(tmp_path: Path) -> LedgerBuilder:
    """A zcdp node counting quarterly that takes part in secure sums: worst case at most 2
    per session and 5 over its life, cohorts of 4 or more, 1 colluder assumed."""
    builder = LedgerBuilder(tmp_path / "keys", NODE_LEDGER, "ngo-a", START)
    builder.add(zcdp_policy(), START)
    builder.add(Q1, START)
    return builder


def _clock(n: int) -> str:
    return at("2026-03-02", f"09:{n:02d}:00")


def _errors(capsys: Any, node: LedgerBuilder, tmp_path: Path) -> set[tuple[str, str, int | None]]:
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl", definition="zcdp"))
    return run.where()


def test_secure_charges_within_both_caps_pass(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(secure_charge("q1", "2", 1), _clock(1))  # the per-query cap exactly
    node.add(secure_charge("q2", "1.5", 2), _clock(2))
    node.add(secure_charge("q3", "1.5", 3), _clock(3))  # the lifetime cap exactly
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl", definition="zcdp"))
    assert run.code == 0 and run.findings() == []
    assert [f["code"] for f in run.findings("warning")] == ["keys-not-pinned"]


def test_a_worst_case_over_the_per_query_cap_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(secure_charge("q1", "2.000001", 1), _clock(1))
    over = node.entries[-1].seq
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl", definition="zcdp"))
    assert run.where() == {("over-worst-case-per-query", "a.jsonl", over)}
    message = run.findings()[0]["message"]
    assert "worst case of 2.000001" in message and "per-query cap 2 (policy entry 3)" in message


def test_the_charge_that_takes_the_worst_case_total_over_its_cap_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(secure_charge("q1", "2", 1), _clock(1))
    node.add(charge("q2", "0.5", "2026-Q1"), _clock(2))  # an answer: no worst case
    node.add(secure_charge("q3", "2", 3), _clock(3))
    node.add(secure_charge("q4", "1.25", 4), _clock(4))
    over = node.entries[-1].seq
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl", definition="zcdp"))
    assert run.where() == {("over-worst-case-lifetime", "a.jsonl", over)}
    assert "total to 5.25, over the worst-case lifetime cap 5" in run.findings()[0]["message"]


def test_the_caps_are_those_of_the_policy_in_force(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(secure_charge("q1", "2", 1), _clock(1))  # fine under the first policy
    lower = dataclasses.replace(RULES, worst_case_per_query=F(1), worst_case_lifetime=F(3))
    node.add(zcdp_policy(lower), _clock(2))
    node.add(secure_charge("q2", "1", 2), _clock(3))  # total 3: exactly the new cap
    node.add(secure_charge("q3", "1", 3), _clock(4))  # total 4 > 3
    node.add(zcdp_policy(None), _clock(5))
    node.add(secure_charge("q4", "0.5", 4), _clock(6))  # the node no longer takes part
    seqs = [e.seq for e in node.entries if e.type == "charge"]
    assert _errors(capsys, node, tmp_path) == {
        ("over-worst-case-lifetime", "a.jsonl", seqs[2]),
        ("secure-without-policy", "a.jsonl", seqs[3]),
    }


def test_a_pure_node_never_charges_a_secure_sum(capsys: Any, tmp_path: Path) -> None:
    node = LedgerBuilder(tmp_path / "keys", NODE_LEDGER, "ngo-a", START)
    node.add(dataclasses.replace(policy("ngo-a"), secure_aggregation=RULES), START)
    node.add(Q1, START)
    node.add(secure_charge("q1", "1", 1), _clock(1))
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl"))
    assert run.where() == {("secure-without-policy", "a.jsonl", node.entries[-1].seq)}
    assert "accounts in 'pure'" in run.findings()[0]["message"]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"size": 3, "threshold": 3, "honest": 2}, "secure-cohort-too-small"),
        ({"colluders": 0, "honest": 4}, "secure-colluders-too-few"),
        ({"honest": 4}, "secure-honest-miscounted"),
        ({"size": 7, "threshold": 4, "honest": 3}, "secure-threshold-unsafe"),
    ],
)
def test_a_session_the_policy_or_the_arithmetic_forbids_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path, changes: dict[str, int], code: str
) -> None:
    node.add(secure_charge("q1", "1", 1, **changes), _clock(1))
    assert _errors(capsys, node, tmp_path) == {(code, "a.jsonl", node.entries[-1].seq)}


def test_a_malformed_secure_entry_is_unreadable_and_left_out(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    from tiaki.chain import append_entry

    body = secure_charge("q1", "1", 1).body()
    body["secure_session"] = {**body["secure_session"], "share_scales": [2.5]}  # not text
    with node.conn:
        append_entry(node.conn, node.ledger_id, "charge", _clock(1), body)
    body = secure_charge("q2", "1", 2).body()
    del body["secure_session"]  # a worst case without its session
    with node.conn:
        append_entry(node.conn, node.ledger_id, "charge", _clock(2), body)
    seqs = [e.seq for e in node.entries if e.type == "charge"]
    assert _errors(capsys, node, tmp_path) == {
        ("unreadable-entry", "a.jsonl", seqs[0]),
        ("unreadable-entry", "a.jsonl", seqs[1]),
    }


# ---------------------------------------------------------------- a real node's export


def _key() -> str:
    return public_key_text(ed25519.Ed25519PrivateKey.generate().public_key())


def _config(tmp_path: Path) -> NodeConfig:
    raw = yaml.safe_load((ROOT / "node" / "templates" / "node.yaml").read_text())
    raw["node_id"] = "ngo-a"
    raw["data_dir"] = str(tmp_path / "data")
    raw["policy"]["privacy_definition"] = "zcdp"
    raw["policy"]["secure_aggregation"] = {
        "peers": [{"node_id": f"ngo-{c}", "signing_key": _key()} for c in "bcde"],
        "min_cohort": 4,
        "colluders": 1,
        "worst_case": {"per_query": "2", "lifetime": "5"},
    }  # fmt: skip
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def _exported(tmp_path: Path) -> Path:
    config = _config(tmp_path)
    config.paths.data_dir.mkdir()
    key = create_signing_key(config.paths.signing_key)
    with PrivacyLedger.open(config.paths.ledger, config.policy, node_id=config.node_id) as ledger:
        for n, worst in enumerate(["2", "1.75"], start=1):
            ledger.charge_secure(
                identity="ministry", query_id=f"s-{n}", analyst="aroha", kind="count",
                canonical_query=f"count s-{n}", requested=F("0.5"), charge=F("0.5"),
                privacy_map=F("0.4"), worst_case=F(worst), session=session(n),
                dataset_version="v1", response=b"noisy", commitment_salt=secrets.token_bytes(32),
            )  # fmt: skip
        out = tmp_path / "ngo-a.jsonl"
        out.write_text("\n".join(export_ledger(ledger, key, config)) + "\n", encoding="utf-8")
    return out


def test_a_real_node_s_secure_charges_export_and_verify(capsys: Any, tmp_path: Path) -> None:
    path = _exported(tmp_path)
    run = verify_json(capsys, path)
    assert run.code == 0 and run.findings() == []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    header = records[0]
    assert header["policy"]["secure_aggregation"]["worst_case_lifetime"] == "5"
    charges = [r["body"] for r in records if r.get("type") == "charge"]
    assert [c["worst_case"] for c in charges] == ["2", "1.75"]
    assert charges[0]["secure_session"] == session(1).body()


def test_a_secure_entry_edited_after_signing_is_named(capsys: Any, tmp_path: Path) -> None:
    path = _exported(tmp_path)

    def lower(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for record in records:
            if record.get("type") == "charge" and record["body"]["query_id"] == "s-2":
                record["body"]["worst_case"] = "0.5"
                seq.append(record["seq"])
        return records

    seq: list[int] = []
    run = verify_json(capsys, edit_lines(path, lower))
    assert run.code == 5
    assert {f["seq"] for f in run.findings() if f["code"] == "integrity"} == set(seq)


def _member(tmp_path: Path, name: str) -> LedgerBuilder:
    builder = LedgerBuilder(tmp_path / f"keys-{name}", NODE_LEDGER, name, START)
    builder.add(dataclasses.replace(zcdp_policy(), node_id=name), START)
    builder.add(Q1, START)
    return builder


def test_members_that_recorded_one_session_differently_are_named(
    capsys: Any, tmp_path: Path
) -> None:
    a, b, c = (_member(tmp_path, n) for n in ("ngo-a", "ngo-b", "ngo-c"))
    a.add(secure_charge("q1", "1.5", 7), _clock(1))
    b.add(secure_charge("q1", "1.5", 7), _clock(1))
    # ngo-c was shown another threshold under the same session id.
    c.add(secure_charge("q1", "1.5", 7, threshold=5, honest=4), _clock(1))
    exports = [n.export(tmp_path / f"{n.subject}.jsonl", definition="zcdp") for n in (a, b, c)]
    seq = c.seq_of(lambda e: e.type == "charge")
    found = verify_json(capsys, *exports).where()
    assert ("secure-session-mismatch", "ngo-c.jsonl", seq) in found
    assert not {f for f in found if f[0] == "secure-session-mismatch" and f[1] != "ngo-c.jsonl"}


def test_members_that_recorded_one_session_alike_pass(capsys: Any, tmp_path: Path) -> None:
    a, b = (_member(tmp_path, n) for n in ("ngo-a", "ngo-b"))
    a.add(secure_charge("q1", "1.5", 7), _clock(1))
    b.add(secure_charge("q1", "1.5", 7), _clock(2))
    exports = [n.export(tmp_path / f"{n.subject}.jsonl", definition="zcdp") for n in (a, b)]
    assert not {f for f in verify_json(capsys, *exports).where() if "secure" in f[0]}


def test_the_report_shows_worst_case_beside_aggregate(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(secure_charge("q1", "2", 1), _clock(1))
    node.add(secure_charge("q2", "1.5", 2), _clock(2))
    node.add(charge("q3", "0.25", "2026-Q1", privacy_map="0.25"), _clock(3))
    export = node.export(tmp_path / "a.jsonl", definition="zcdp")
    run = run_audit(capsys, "report", export, "--format", "json")
    assert run.code == 0, run.err
    (doc,) = run.doc()["nodes"]
    # Two secure sums of 0.25 each (map 0.125 each), worst cases 2 + 1.5 of the cap 5.
    assert doc["secure_sums"] == {
        "sessions": 2,
        "charged": "0.5",
        "aggregate_guarantee": "0.25",
        "worst_case": "3.5",
        "worst_case_lifetime": "5",
        "worst_case_remaining": "1.5",
    }
    assert doc["spent"] == "0.75"
    table = run_audit(capsys, "report", export)
    assert "worst case left" in table.out and "3.5" in table.out
    page = tmp_path / "report.html"
    html = run_audit(capsys, "report", export, "--format", "html", "--out", page)
    assert html.code == 0, html.err
    text = page.read_text(encoding="utf-8")
    assert "aggregate beside worst case" in text
    assert 'data-field="worst-case-total" title="3.5"' in text
    assert 'data-field="secure-sums">2<' in text


def reveal(n: int, survivors: tuple[int, ...], mask_keys: tuple[int, ...] = ()) -> Any:
    from tiaki.ledger_records import SecureRevealRecord

    return SecureRevealRecord(f"{n:032x}", survivors, survivors, mask_keys)


def test_reveals_that_would_unmask_a_member_are_named_across_ledgers(
    capsys: Any, tmp_path: Path
) -> None:
    a, b, c = (_member(tmp_path, n) for n in ("ngo-a", "ngo-b", "ngo-c"))
    for node in (a, b, c):
        node.add(secure_charge("q1", "1.5", 7), _clock(1))
    # ngo-a and ngo-b unmask for survivors 1-4 (member 5 dropped: its mask key is
    # revealed); ngo-c was shown survivors 1-5 and revealed member 5's self-mask share.
    a.add(reveal(7, (1, 2, 3, 4), (5,)), _clock(2))
    b.add(reveal(7, (1, 2, 3, 4), (5,)), _clock(2))
    c.add(reveal(7, (1, 2, 3, 4, 5)), _clock(2))
    exports = [n.export(tmp_path / f"{n.subject}.jsonl", definition="zcdp") for n in (a, b, c)]
    found = verify_json(capsys, *exports).where()
    seq = a.seq_of(lambda e: e.type == "secure_reveal")
    assert ("secure-reveal-both", "ngo-a.jsonl", seq) in found
    assert ("secure-reveal-both", "ngo-b.jsonl", seq) in found
    assert ("secure-survivors-differ", "ngo-c.jsonl", seq) in found


def test_reveals_as_the_protocol_makes_them_pass_and_one_without_input_is_named(
    capsys: Any, tmp_path: Path
) -> None:
    a, b = (_member(tmp_path, n) for n in ("ngo-a", "ngo-b"))
    a.add(secure_charge("q1", "1.5", 7), _clock(1))
    b.add(secure_charge("q1", "1.5", 7), _clock(1))
    a.add(reveal(7, (1, 2, 3, 4), (5,)), _clock(2))
    b.add(reveal(7, (1, 2, 3, 4), (5,)), _clock(2))
    exports = [n.export(tmp_path / f"{n.subject}.jsonl", definition="zcdp") for n in (a, b)]
    assert not {f for f in verify_json(capsys, *exports).where() if "secure" in f[0]}
    b.add(reveal(8, (1, 2, 3, 4)), _clock(3))  # a session ngo-b never sent an input to
    exports = [n.export(tmp_path / f"{n.subject}.jsonl", definition="zcdp") for n in (a, b)]
    seq = b.seq_of(lambda e: e.type == "secure_reveal" and e.body["session_id"].endswith("8"))
    assert ("secure-reveal-without-input", "ngo-b.jsonl", seq) in verify_json(
        capsys, *exports
    ).where()
