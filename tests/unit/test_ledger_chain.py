"""The node ledger's hash chain: what each charge appends, and that tampering is caught."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest

from node.config import BudgetPolicy, CoordinatorGrant
from node.ledger import LedgerError, PrivacyLedger
from tests.unit.test_ledger import Clock, make, spend
from tiaki.budget import PrivacyDefinition
from tiaki.chain import check_links, genesis_hash
from tiaki.errors import InsufficientBudgetError
from tiaki.ledger_records import ChargeRecord, PeriodRecord, PolicyRecord, parse_record

F = Fraction


def types(ledger: PrivacyLedger) -> list[str]:
    return [e.type for e in ledger.chain()[1]]


def test_a_new_ledger_opens_its_chain(tmp_path: Path) -> None:
    with make(tmp_path / "l.sqlite") as ledger:
        anchor, entries = ledger.chain()
        assert anchor == (0, genesis_hash(ledger.ledger_id))
        assert [e.type for e in entries] == ["opened"]
        assert entries[0].body["ledger_id"] == ledger.ledger_id
        assert ledger.head() == (1, entries[0].hash)


def test_the_first_charge_chains_policy_period_and_charge(tmp_path: Path) -> None:
    with make(tmp_path / "l.sqlite", limit="2", per_query_max="1") as ledger:
        stored, _ = spend(ledger, "q1", F("0.25"), response=b"answer-bytes")
        assert types(ledger) == ["opened", "policy", "period", "charge"]
        entries = ledger.chain()[1]
        policy = parse_record(entries[1])
        assert isinstance(policy, PolicyRecord)
        assert (policy.limit, policy.per_query_max, policy.period) == (F(2), F(1), "none")
        period = parse_record(entries[2])
        assert isinstance(period, PeriodRecord) and period.period == "lifetime"
        charge = parse_record(entries[3])
        assert isinstance(charge, ChargeRecord)
        assert (charge.query_id, charge.identity, charge.charge) == ("q1", "coord-a", F("0.25"))
        # A commitment under the salt only the asker receives, never a bare hash.
        assert charge.response_sha256 is None and len(stored.commitment_salt) == 32
        assert (
            charge.response_commitment
            == hashlib.sha256(
                b"tiaki-receipt-v1\x00" + stored.commitment_salt + b"answer-bytes"
            ).hexdigest()
        )
        assert charge.privacy_map == F("0.25")
        spend(ledger, "q2", F("0.25"))
        assert types(ledger)[-1] == "charge" and types(ledger).count("period") == 1
        assert check_links(ledger.chain()[1], genesis_hash(ledger.ledger_id)) == []
        ledger.verify()


def test_replays_and_refusals_append_nothing(tmp_path: Path) -> None:
    with make(tmp_path / "l.sqlite", limit="0.5") as ledger:
        spend(ledger, "q1", F("0.25"))
        before = ledger.head()
        spend(ledger, "q1", F("0.25"))  # replay
        with pytest.raises(InsufficientBudgetError):
            spend(ledger, "q2", F("0.5"))  # over budget
        assert ledger.head() == before


def test_each_new_period_is_an_entry_before_its_first_charge(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 30, 12, tzinfo=UTC))
    with make(tmp_path / "l.sqlite", period="monthly", clock=clock) as ledger:
        spend(ledger, "nov", F("0.1"))
        clock.now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
        spend(ledger, "dec", F("0.1"))
        entries = ledger.chain()[1]
        periods = [parse_record(e) for e in entries if e.type == "period"]
        assert periods == [
            PeriodRecord("2026-11", "2026-11-01", "2026-12-01"),
            PeriodRecord("2026-12", "2026-12-01", "2027-01-01"),
        ]
        order = [(e.type, e.body.get("period")) for e in entries if e.type in ("period", "charge")]
        assert order == [
            ("period", "2026-11"),
            ("charge", "2026-11"),
            ("period", "2026-12"),
            ("charge", "2026-12"),
        ]


def test_a_changed_policy_is_chained_before_the_next_charge(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with make(path, limit="1") as ledger:
        spend(ledger, "q1", F("0.1"))
    with make(path, limit="1") as ledger:  # same policy: nothing new
        ledger.record_policy()
        assert types(ledger).count("policy") == 1
    grants = (CoordinatorGrant.model_validate({"identity": "coord-a", "budget_cap": "0.5"}),)
    budget = BudgetPolicy.model_validate({"limit": "3"})
    with PrivacyLedger(
        path, PrivacyDefinition.PURE, budget, F(1), node_id="ngo-x", grants=grants
    ) as ledger:
        spend(ledger, "q2", F("0.1"))
        assert types(ledger)[-3:] == ["charge", "policy", "charge"]
        policy = parse_record(ledger.chain()[1][-2])
        assert isinstance(policy, PolicyRecord)
        assert (policy.node_id, policy.limit, policy.cap_for("coord-a")) == (
            "ngo-x",
            F(3),
            F("0.5"),
        )


def test_signing_key_is_chained_once_per_change(tmp_path: Path) -> None:
    with make(tmp_path / "l.sqlite") as ledger:
        ledger.record_signing_key("ed25519:AAAA")
        ledger.record_signing_key("ed25519:AAAA")
        ledger.record_signing_key("ed25519:BBBB")
        assert types(ledger) == ["opened", "signing_key", "signing_key"]


def test_the_chain_table_refuses_updates_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with make(path) as ledger:
        spend(ledger, "q1", F("0.1"))
    raw = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("UPDATE chain SET body = '{}' WHERE seq = 4")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("DELETE FROM chain WHERE seq = 4")
    raw.close()


def _tamper(path: Path, *statements: str) -> None:
    raw = sqlite3.connect(path)
    raw.execute("DROP TRIGGER chain_no_update")
    raw.execute("DROP TRIGGER chain_no_delete")
    for statement in statements:
        raw.execute(statement)
    raw.commit()
    raw.close()


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        (
            ["UPDATE chain SET body = replace(body, '\"0.1\"', '\"0.01\"') WHERE seq = 4"],
            "entry 4",
        ),
        (["DELETE FROM chain WHERE seq = 5"], "entry 6"),
        (["UPDATE entries SET charge = '0.01' WHERE query_id = 'q1'"], "totals"),
        (
            [
                "UPDATE entries SET charge = '0.01' WHERE query_id = 'q1'",
                "UPDATE spending SET spent = '0.21'",
            ],
            "'q1'",
        ),
    ],
)
def test_verify_names_what_was_tampered_with(
    tmp_path: Path, statements: list[str], message: str
) -> None:
    path = tmp_path / "l.sqlite"
    with make(path) as ledger:
        spend(ledger, "q1", F("0.1"))
        spend(ledger, "q2", F("0.1"))
        spend(ledger, "q3", F("0.1"))
        ledger.verify()
    _tamper(path, *statements)
    with make(path) as ledger, pytest.raises(LedgerError, match=message):
        ledger.verify()


def test_a_grants_signing_key_for_relayed_questions_is_chained_with_the_policy() -> None:
    from node.spending import policy_record

    key = "ed25519:T4GRJrjDeBCRF88wmQpfm1Nn0jCgqHV7oPDIIaBmPSE="
    budget = BudgetPolicy.model_validate({"limit": "5", "period": "none"})
    grants = (
        CoordinatorGrant(identity="msd", signing_key=key),
        CoordinatorGrant(identity="direct-only"),
    )
    record = policy_record(
        node_id="ngo-a", definition=PrivacyDefinition.PURE, budget=budget,
        per_query_max=Fraction(1), grants=grants,
    )  # fmt: skip
    relayed, direct = record.body()["coordinators"]
    assert relayed["signing_key"] == key  # an auditor sees which key may ask through a hub
    assert "signing_key" not in direct  # and a grant without one reads as before hubs
    assert PolicyRecord.from_body(record.body()) == record
