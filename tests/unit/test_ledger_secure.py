"""A node's input to a secure sum, paid for on a real SQLite ledger: both charges, one commit.

The aggregate charge is screened and spent as an answer's; the worst-case
charge against the policy's own caps, per session and over the ledger's
life. Refusals store and spend nothing, replays spend nothing, and a ledger
of the previous schema opens, keeps its history and takes secure charges.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from node.config import BudgetPolicy, CoordinatorGrant, SecureAggregationPolicy
from node.ledger import SCHEMA_VERSION, LedgerError, PrivacyLedger, StoredAnswer
from node.mechanisms import check_share
from tiaki.budget import PrivacyDefinition
from tiaki.chain import ChainFormatError
from tiaki.errors import (
    InsufficientBudgetError,
    PerQueryMaximumError,
    PolicyViolationError,
    QueryIdConflictError,
    WorstCaseExhaustedError,
    WorstCaseMaximumError,
)
from tiaki.ledger_records import (
    ChargeRecord,
    PolicyRecord,
    SecureSessionRecord,
    parse_record,
)
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.secagg.session import Member, SessionParameters
from tiaki.signing import public_key_text

F = Fraction
HALF = F("0.5")
SCHEMA3_LEDGER = Path(__file__).resolve().parents[1] / "data" / "ledger-schema3.sqlite"


def _key() -> str:
    return public_key_text(ed25519.Ed25519PrivateKey.generate().public_key())


def secure_policy(per_query: str = "2", lifetime: str = "5") -> SecureAggregationPolicy:
    return SecureAggregationPolicy.model_validate(
        {
            "peers": [{"node_id": f"ngo-{c}", "signing_key": _key()} for c in "bcde"],
            "min_cohort": 3,
            "colluders": 1,
            "worst_case": {"per_query": per_query, "lifetime": lifetime},
        }
    )


def make(
    path: Path,
    *,
    secure: SecureAggregationPolicy | None = None,
    limit: str = "10",
    per_query_max: str = "1",
    definition: PrivacyDefinition = PrivacyDefinition.ZCDP,
    grants: tuple[CoordinatorGrant, ...] = (),
) -> PrivacyLedger:
    budget = BudgetPolicy.model_validate({"limit": limit, "period": "none"})
    return PrivacyLedger(
        path, definition, budget, F(per_query_max), node_id="ngo-a", grants=grants, secure=secure
    )


def session(n: int = 1) -> SecureSessionRecord:
    return SecureSessionRecord(
        session_id=f"{n:032x}",
        roster_hash="ab" * 32,
        size=5,
        threshold=4,
        colluders=1,
        honest=3,
        scale_factors=(4,),
        share_scales=(2.5,),
        tau_term=F(1, 10**30),
    )


def secure(
    ledger: PrivacyLedger,
    qid: str,
    worst_case: Fraction,
    *,
    charge: Fraction = HALF,
    sid: int = 1,
    identity: str = "ministry",
    identity_cap: Fraction | None = None,
    response: bytes | None = None,
) -> tuple[StoredAnswer, bool]:
    return ledger.charge_secure(
        identity=identity,
        query_id=qid,
        analyst="aroha",
        kind="count",
        canonical_query=f"count {qid}",
        requested=charge,
        charge=charge,
        privacy_map=charge * F(9, 10),
        worst_case=worst_case,
        session=session(sid),
        dataset_version="v1",
        response=response if response is not None else f"noisy {qid}".encode(),
        commitment_salt=secrets.token_bytes(32),
        identity_cap=identity_cap,
    )


def answer(ledger: PrivacyLedger, qid: str, amount: Fraction = HALF) -> None:
    ledger.charge(
        identity="ministry",
        query_id=qid,
        analyst="aroha",
        kind="count",
        canonical_query=f"count {qid}",
        requested=amount,
        charge=amount,
        dataset_version="v1",
        response=b"answer",
        privacy_map=amount,
        commitment_salt=secrets.token_bytes(32),
    )


def snapshot(ledger: PrivacyLedger) -> tuple[Any, ...]:
    """Everything a refusal must leave as it was."""
    return (
        ledger.head(),
        len(ledger.entries()),
        ledger.status().lifetime_spent,
        ledger.worst_case_status().spent,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


# ---------------------------------------------------------------- charging


def test_a_secure_charge_spends_both_amounts_in_one_durable_entry(path: Path) -> None:
    with make(path, secure=secure_policy()) as ledger:
        stored, replayed = secure(ledger, "s-1", F("1.25"), response=b"\x01\x02")
        assert not replayed
        assert (stored.response, stored.charge, stored.session_id) == (
            b"\x01\x02",
            F("0.5"),
            "0" * 31 + "1",
        )
        ledger.verify()
    with make(path, secure=secure_policy()) as ledger:  # reopened: all of it was committed
        assert ledger.status().lifetime_spent == F("0.5")
        status = ledger.worst_case_status()
        assert (status.spent, status.per_query, status.lifetime_limit) == (F("1.25"), F(2), F(5))
        assert status.remaining == F("3.75")
        [entry] = ledger.entries()
        assert (entry.charge, entry.privacy_map, entry.worst_case) == (
            F("0.5"),
            F("0.45"),
            F("1.25"),
        )
        assert entry.secure_session == session(1)
        charge = [r for r in map(parse_record, ledger.chain()[1]) if isinstance(r, ChargeRecord)]
        policy = [r for r in map(parse_record, ledger.chain()[1]) if isinstance(r, PolicyRecord)]
        ledger.verify()
    assert charge[0].worst_case == F("1.25") and charge[0].secure_session == session(1)
    assert charge[0].is_secure
    body = charge[0].body()["secure_session"]
    assert body["share_scales"] == ["2.5"] and body["tau_term"] == "0." + "0" * 29 + "1"
    # The policy the charge was checked against is chained before it, caps and pins included.
    assert policy[-1].secure_aggregation is not None
    assert policy[-1].secure_aggregation.worst_case_lifetime == 5
    assert [p.node_id for p in policy[-1].secure_aggregation.peers] == [f"ngo-{c}" for c in "bcde"]


def test_a_replay_returns_the_stored_vector_and_charges_nothing(path: Path) -> None:
    with make(path, secure=secure_policy(per_query="2", lifetime="2")) as ledger:
        first, _ = secure(ledger, "s-1", F(2), response=b"first noise")
        before = snapshot(ledger)
        # The worst-case total is now at its cap, yet the same session's retry is served.
        again, replayed = secure(ledger, "s-1", F(2), response=b"fresh noise")
        assert replayed and again.response == b"first noise" and again.seq == first.seq
        assert snapshot(ledger) == before


def test_one_query_id_pays_for_one_release(path: Path) -> None:
    with make(path, secure=secure_policy()) as ledger:
        secure(ledger, "s-1", F(1), sid=1)
        answer(ledger, "plain")
        before = snapshot(ledger)
        with pytest.raises(QueryIdConflictError):
            secure(ledger, "s-1", F(1), sid=2)  # another session under the same id
        with pytest.raises(QueryIdConflictError):
            secure(ledger, "plain", F(1))  # an answer's id
        with pytest.raises(QueryIdConflictError):
            answer(ledger, "s-1")  # a session's id, asked as a plain query
        assert snapshot(ledger) == before


def test_the_worst_case_per_query_cap_refuses_and_spends_nothing(path: Path) -> None:
    with make(path, secure=secure_policy(per_query="2", lifetime="5")) as ledger:
        secure(ledger, "s-1", F(2))  # exactly at the cap
        before = snapshot(ledger)
        with pytest.raises(WorstCaseMaximumError) as info:
            secure(ledger, "s-2", F(2) + F(1, 10**30))
        assert (info.value.requested, info.value.remaining) == (F(2) + F(1, 10**30), F(2))
        assert snapshot(ledger) == before


def test_the_worst_case_lifetime_cap_holds_exactly(path: Path) -> None:
    with make(path, secure=secure_policy(per_query="2", lifetime="5")) as ledger:
        for n in range(4):
            secure(ledger, f"s-{n}", F("1.25"), sid=n)  # 4 × 1.25 = 5: exactly the cap
        assert ledger.worst_case_status().remaining == 0
        before = snapshot(ledger)
        with pytest.raises(WorstCaseExhaustedError) as info:
            secure(ledger, "s-9", F(1, 10**30), sid=9)
        assert (info.value.requested, info.value.remaining) == (F(1, 10**30), F(0))
        assert info.value.limit == "remaining worst-case lifetime budget"
        assert snapshot(ledger) == before
        ledger.verify()


def test_the_aggregate_charge_meets_every_ordinary_limit(path: Path) -> None:
    grants = (CoordinatorGrant.model_validate({"identity": "ministry", "budget_cap": "1"}),)
    with make(path, secure=secure_policy(), limit="1.5", grants=grants) as ledger:
        secure(ledger, "s-1", F(1), charge=F("0.75"), identity_cap=F(1))
        before = snapshot(ledger)
        with pytest.raises(PerQueryMaximumError):
            secure(ledger, "s-2", F(1), charge=F("1.25"), sid=2)
        with pytest.raises(InsufficientBudgetError) as capped:  # the coordinator's cap
            secure(ledger, "s-3", F(1), charge=F("0.5"), sid=3, identity_cap=F(1))
        assert "ministry" in capped.value.limit and capped.value.remaining == F("0.25")
        assert snapshot(ledger) == before
        secure(ledger, "s-4", F(1), charge=F("0.75"), sid=4, identity="university")
        with pytest.raises(InsufficientBudgetError) as spent:  # the budget itself
            secure(ledger, "s-5", F(1), charge=F("0.25"), sid=5, identity="university")
        assert spent.value.remaining == 0
        assert not isinstance(spent.value, WorstCaseExhaustedError)
        assert ledger.status().lifetime_spent == F("1.5")
        assert ledger.worst_case_status().spent == 2  # two inputs charged, two worst cases
        assert len(ledger.entries()) == 2


def test_a_node_without_the_policy_takes_no_part(tmp_path: Path) -> None:
    with make(tmp_path / "none.sqlite") as ledger:
        with pytest.raises(PolicyViolationError, match="no secure_aggregation section"):
            secure(ledger, "s-1", F(1))
        assert ledger.entries() == [] and ledger.worst_case_status().lifetime_limit is None
    pure = make(tmp_path / "pure.sqlite", secure=secure_policy(), definition=PrivacyDefinition.PURE)
    with pure, pytest.raises(PolicyViolationError):
        secure(pure, "s-1", F(1))


def test_check_secure_refuses_alike_and_spends_nothing(path: Path) -> None:
    with make(path, secure=secure_policy(per_query="2", lifetime="3")) as ledger:
        sid = session(1).session_id
        assert ledger.check_secure("ministry", "s-1", "count s-1", F("0.5"), F(2), sid) is None
        secure(ledger, "s-1", F(2))
        before = snapshot(ledger)
        stored = ledger.check_secure("ministry", "s-1", "count s-1", F("0.5"), F(2), sid)
        assert stored is not None and stored.response == b"noisy s-1"
        with pytest.raises(WorstCaseExhaustedError):
            ledger.check_secure("ministry", "s-2", "count s-2", F("0.5"), F("1.5"), sid)
        with pytest.raises(WorstCaseMaximumError):
            ledger.check_secure("ministry", "s-2", "count s-2", F("0.5"), F(3), sid)
        assert snapshot(ledger) == before


def test_arguments_out_of_order_are_the_caller_s_mistake(path: Path) -> None:
    with make(path, secure=secure_policy()) as ledger:
        with pytest.raises(ValueError, match="worst-case charge"):
            secure(ledger, "s-1", F(0))
        with pytest.raises(ValueError, match="at most the requested"):
            ledger.charge_secure(
                identity="ministry", query_id="s-1", analyst="", kind="count",
                canonical_query="count", requested=F("0.5"), charge=F(1),
                privacy_map=F("0.5"), worst_case=F(1), session=session(), dataset_version="v1",
                response=b"", commitment_salt=secrets.token_bytes(32),
            )  # fmt: skip
        assert ledger.entries() == []


def test_new_caps_apply_from_the_next_charge_and_the_total_carries_over(path: Path) -> None:
    from node.config import Policy

    def policy(lifetime: str) -> Policy:
        return Policy.model_validate(
            {
                "privacy_definition": "zcdp",
                "budget": {"limit": "10"},
                "per_query_max": "1",
                "max_records_per_client": 1,
                "secure_aggregation": secure_policy(lifetime=lifetime).model_dump(mode="json"),
            }
        )

    with make(path, secure=secure_policy(lifetime="5")) as ledger:
        secure(ledger, "s-1", F(2), sid=1)
        ledger.apply_policy(policy("3"))
        with pytest.raises(WorstCaseExhaustedError) as info:
            secure(ledger, "s-2", F(2), sid=2)
        assert info.value.remaining == 1
        chained = [r for r in map(parse_record, ledger.chain()[1]) if isinstance(r, PolicyRecord)]
        assert chained[-1].secure_aggregation is not None
        assert chained[-1].secure_aggregation.worst_case_lifetime == 3
        ledger.apply_policy(policy("3").model_copy(update={"secure_aggregation": None}))
        assert ledger.worst_case_status().spent == 2  # the history stays
        assert ledger.worst_case_status().remaining is None
        with pytest.raises(PolicyViolationError):
            secure(ledger, "s-3", F(1), sid=3)
        chained = [r for r in map(parse_record, ledger.chain()[1]) if isinstance(r, PolicyRecord)]
        assert chained[-1].secure_aggregation is None
        assert "secure_aggregation" not in chained[-1].body()


def test_verify_names_a_row_whose_worst_case_no_longer_matches_its_chain_entry(
    path: Path,
) -> None:
    with make(path, secure=secure_policy()) as ledger:
        secure(ledger, "s-1", F(2))
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE entries SET worst_case = '0.5'")
    raw.close()
    with make(path, secure=secure_policy()) as ledger, pytest.raises(LedgerError, match="s-1"):
        ledger.verify()


# ---------------------------------------------------------------- the session record


def test_the_session_record_of_real_parameters_and_shares() -> None:
    query = Query(QueryKind.COUNT, PrivacyCost(PrivacyDefinition.ZCDP, F(1, 2)))
    members = tuple(Member(i, f"ngo-{i}", f"ed25519:key{i}") for i in range(1, 6))
    params = SessionParameters(
        session_id=bytes(range(16)), query_id="q-1", query=query, members=members,
        threshold=4, colluders=1, scale_factors=(4,), share_scales=(2.5,),
        not_after=2_000_000_000,
    )  # fmt: skip
    share = check_share(1.0, F(1, 2), params.cohort, 4, 2.5, 1)
    record = SecureSessionRecord.of(params, [share])
    assert record.session_id == bytes(range(16)).hex()
    assert record.roster_hash == params.roster_hash()
    assert (record.size, record.threshold, record.colluders, record.honest) == (5, 4, 1, 3)
    assert (record.scale_factors, record.share_scales) == ((4,), (2.5,))
    assert record.tau_term == share.tau_term
    assert SecureSessionRecord.from_body(json.loads(json.dumps(record.body()))) == record
    with pytest.raises(ValueError, match="scales"):
        SecureSessionRecord.of(params, [check_share(1.0, F(1, 2), params.cohort, 4, 3.0, 1)])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"session_id": "XYZ"}, "session_id"),
        ({"roster_hash": "ab" * 31}, "roster_hash"),
        ({"threshold": 6}, "threshold"),
        ({"share_scales": (2.5, 3.0)}, "per component"),
        ({"honest": 0}, "honest"),
    ],
)
def test_a_malformed_session_record_is_refused(change: dict[str, Any], words: str) -> None:
    body = {**session().body(), **{k: v for k, v in change.items() if k != "share_scales"}}
    if "share_scales" in change:
        body["share_scales"] = [repr(s) for s in change["share_scales"]]
    with pytest.raises(ChainFormatError, match=words):
        SecureSessionRecord.from_body(body)


@pytest.mark.parametrize("scale", ["2.50", "inf", "-2.5", "0x1p1", 2.5])
def test_a_share_scale_is_a_positive_float_s_exact_repr(scale: object) -> None:
    body = {**session().body(), "share_scales": [scale]}
    with pytest.raises(ChainFormatError, match="share_scales"):
        SecureSessionRecord.from_body(body)


# ---------------------------------------------------------------- schema 3 ledgers


def test_a_schema_3_ledger_keeps_its_history_and_takes_secure_charges(tmp_path: Path) -> None:
    # Written by the release before secure sums: zcdp, yearly periods, a cap for coord-a,
    # two answers in 2026 (charges 0.1 and 0.25, maps half of each).
    path = tmp_path / "ledger.sqlite"
    shutil.copyfile(SCHEMA3_LEDGER, path)
    budget = BudgetPolicy.model_validate({"limit": "5", "period": "yearly"})
    grants = (CoordinatorGrant.model_validate({"identity": "coord-a", "budget_cap": "2"}),)
    with PrivacyLedger(
        path, PrivacyDefinition.ZCDP, budget, F(1), node_id="ngo-old", grants=grants,
        secure=secure_policy(),
    ) as ledger:  # fmt: skip
        ledger.verify()
        old = ledger.entries()
        assert [(e.charge, e.privacy_map) for e in old] == [
            (F("0.1"), F("0.05")),
            (F("0.25"), F("0.125")),
        ]
        assert [(e.worst_case, e.secure_session) for e in old] == [(None, None)] * 2
        assert ledger.worst_case_status().spent == 0
        stored, replayed = ledger.charge(
            identity="coord-a", query_id="old-0", analyst="ana", kind="count",
            canonical_query="count old 0", requested=F("0.1"), charge=F("0.1"),
            dataset_version="v2", response=b"other", privacy_map=F("0.1"),
            commitment_salt=secrets.token_bytes(32),
        )  # fmt: skip
        assert replayed and stored.response == b"old answer 0" and stored.session_id is None
        secure(ledger, "s-1", F("1.5"), identity="coord-a")
        ledger.verify()
        charges = [r for r in map(parse_record, ledger.chain()[1]) if isinstance(r, ChargeRecord)]
    assert [c.is_secure for c in charges] == [False, False, True]
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    conn.close()
    assert version == (str(SCHEMA_VERSION),) == ("4",)
    assert {"worst_case", "secure_session"} <= columns
    with PrivacyLedger(
        path, PrivacyDefinition.ZCDP, budget, F(1), node_id="ngo-old", grants=grants,
        secure=secure_policy(),
    ) as ledger:  # fmt: skip
        assert ledger.worst_case_status().spent == F("1.5")
        assert ledger.status().lifetime_spent == F("0.85")
        ledger.verify()


def test_a_reveal_is_chained_once_per_session(tmp_path: Path) -> None:
    from tiaki.ledger_records import SecureRevealRecord

    ledger = make(tmp_path / "ledger.sqlite", secure=secure_policy())
    try:
        first = SecureRevealRecord("ab" * 16, (1, 2, 3), (1, 2, 3), (4,))
        assert ledger.record_reveal(first) is True
        assert ledger.record_reveal(first) is False  # a retry appends nothing
        with pytest.raises(ValueError, match="another reveal"):
            ledger.record_reveal(SecureRevealRecord("ab" * 16, (1, 2), (1, 2), (3, 4)))
        ledger.record_reveal(SecureRevealRecord("cd" * 16, (1, 2), (1, 2), ()))
        ledger.verify()
    finally:
        ledger.close()
