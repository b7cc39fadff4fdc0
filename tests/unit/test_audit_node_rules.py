"""A node ledger replayed against its own policy: over-spending that no signature reveals.

Each ledger here is correctly chained and signed by the node; what it records
breaks the node's own recorded policy, and ``tiaki audit verify`` must say
where.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from tests.unit.audit_ledgers import (
    OTHER_IDENTITY,
    Q1,
    Q2,
    LedgerBuilder,
    at,
    charge,
    policy,
    rechain,
    verify_json,
)
from tiaki.ledger_records import NODE_LEDGER, PeriodRecord, QuestionRecord

START = at("2026-03-01", "08:00:00")


@pytest.fixture
def node(tmp_path: Path) -> LedgerBuilder:
    """A node counting quarterly: limit 2 per quarter, lifetime 5, 1 per query, ministry
    capped at 1.5 per quarter; in its first quarter."""
    builder = LedgerBuilder(tmp_path / "keys", NODE_LEDGER, "ngo-a", START)
    builder.add(policy("ngo-a"), START)
    builder.add(Q1, START)
    return builder


def _clock(n: int) -> str:
    return at("2026-03-02", f"09:{n:02d}:00")


def _errors(capsys: Any, node: LedgerBuilder, tmp_path: Path) -> set[tuple[str, str, int | None]]:
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl"))
    assert run.code == (5 if run.findings() else 0)
    return run.where()


def test_spending_within_the_policy_passes(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(charge("q1", "1", "2026-Q1"), _clock(1))
    node.add(charge("q2", "0.5", "2026-Q1"), _clock(2))
    node.add(charge("q3", "0.5", "2026-Q1", identity=OTHER_IDENTITY), _clock(3))
    assert _errors(capsys, node, tmp_path) == set()  # exactly at the period limit of 2


def test_a_period_over_its_limit_names_the_charge_that_crossed_it(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(charge("q1", "1", "2026-Q1"), _clock(1))
    node.add(charge("q2", "0.75", "2026-Q1", identity=OTHER_IDENTITY), _clock(2))
    node.add(charge("q3", "0.5", "2026-Q1", identity=OTHER_IDENTITY), _clock(3))
    over = node.entries[-1].seq
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl"))
    assert run.where() == {("over-period-limit", "a.jsonl", over)}
    message = run.findings()[0]["message"]
    assert "2026-Q1's spending to 2.25" in message and "limit 2" in message


def test_an_identity_over_its_cap_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(charge("q1", "1", "2026-Q1"), _clock(1))
    node.add(charge("q2", "0.25", "2026-Q1", identity=OTHER_IDENTITY), _clock(2))
    node.add(charge("q3", "0.75", "2026-Q1"), _clock(3))  # ministry: 1.75 > cap 1.5
    assert _errors(capsys, node, tmp_path) == {
        ("over-identity-cap", "a.jsonl", node.entries[-1].seq)
    }


def test_the_cap_counts_per_period(capsys: Any, node: LedgerBuilder, tmp_path: Path) -> None:
    node.add(charge("q1", "1", "2026-Q1"), _clock(1))
    node.add(Q2, at("2026-04-01", "00:00:00"))
    node.add(charge("q2", "1", "2026-Q2"), at("2026-04-02", "09:00:00"))
    assert _errors(capsys, node, tmp_path) == set()


def test_the_lifetime_limit_spans_periods(capsys: Any, tmp_path: Path) -> None:
    node = LedgerBuilder(tmp_path / "keys", NODE_LEDGER, "ngo-m", START)
    node.add(policy("ngo-m", period="monthly", limit="1", lifetime_limit="1.5", cap=None), START)
    node.add(PeriodRecord("2026-03", "2026-03-01", "2026-04-01"), START)
    node.add(charge("q1", "1", "2026-03"), _clock(1))
    node.add(PeriodRecord("2026-04", "2026-04-01", "2026-05-01"), at("2026-04-01", "00:00:00"))
    node.add(charge("q2", "0.25", "2026-04"), at("2026-04-01", "09:00:00"))
    node.add(charge("q3", "0.5", "2026-04"), at("2026-04-01", "10:00:00"))
    assert _errors(capsys, node, tmp_path) == {
        ("over-lifetime-limit", "a.jsonl", node.entries[-1].seq)
    }


def test_a_charge_over_the_per_query_maximum_or_the_request_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(charge("q1", "1.25", "2026-Q1", identity=OTHER_IDENTITY), _clock(1))
    big = node.entries[-1].seq
    node.add(charge("q2", "0.5", "2026-Q1", requested="0.25"), _clock(2))
    greedy = node.entries[-1].seq
    assert _errors(capsys, node, tmp_path) == {
        ("over-per-query-max", "a.jsonl", big),
        ("charge-over-requested", "a.jsonl", greedy),
    }


def test_a_roll_over_without_a_period_entry_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(charge("q1", "0.5", "2026-Q1"), _clock(1))
    node.add(charge("q2", "0.5", "2026-Q2"), at("2026-04-02", "09:00:00"))
    assert _errors(capsys, node, tmp_path) == {
        ("charge-outside-period", "a.jsonl", node.entries[-1].seq)
    }


def test_a_charge_dated_outside_its_period_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    # Labelled Q1 but made in April: the Q1 budget was used after Q1 ended.
    node.add(charge("q1", "0.5", "2026-Q1"), at("2026-04-02", "09:00:00"))
    assert _errors(capsys, node, tmp_path) == {
        ("charge-outside-period", "a.jsonl", node.entries[-1].seq)
    }


def test_a_period_entry_that_does_not_fit_the_policy_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(PeriodRecord("2026-04", "2026-04-01", "2026-05-01"), at("2026-04-01", "00:00"))
    label = node.entries[-1].seq
    node.add(PeriodRecord("2026-Q3", "2026-07-01", "2026-12-01"), at("2026-07-01", "00:00"))
    dates = node.entries[-1].seq
    assert _errors(capsys, node, tmp_path) == {
        ("bad-period-label", "a.jsonl", label),
        ("bad-period-dates", "a.jsonl", dates),
    }


def test_a_query_id_charged_twice_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(charge("q1", "0.25", "2026-Q1"), _clock(1))
    node.add(charge("q1", "0.25", "2026-Q1", identity=OTHER_IDENTITY), _clock(2))  # fine
    node.add(charge("q1", "0.25", "2026-Q1"), _clock(3))
    assert _errors(capsys, node, tmp_path) == {("charged-twice", "a.jsonl", node.entries[-1].seq)}


def test_time_going_backwards_is_named(capsys: Any, node: LedgerBuilder, tmp_path: Path) -> None:
    node.add(charge("q1", "0.25", "2026-Q1"), _clock(5))
    node.add(charge("q2", "0.25", "2026-Q1"), _clock(4))
    assert _errors(capsys, node, tmp_path) == {("time-backwards", "a.jsonl", node.entries[-1].seq)}


def test_an_entry_that_does_not_belong_in_a_node_ledger_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(
        QuestionRecord("q1", "aroha", "ministry", "{}", Fraction(1), "pure", ("ngo-a",)), _clock(1)
    )
    assert _errors(capsys, node, tmp_path) == {
        ("wrong-entry-type", "a.jsonl", node.entries[-1].seq)
    }


class _RawBody:
    """A charge entry with whatever body a careless or hostile writer chose."""

    type = "charge"

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def body(self) -> dict[str, Any]:
        return self._body


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("charge", "a lot"),
        ("charge", "-0.5"),
        # Read naively as a Fraction this is a billion-digit number: it must be refused
        # at once, not computed (the test would time out).
        ("requested", "1e999999999"),
        ("query_id", 7),
    ],
)
def test_a_malformed_entry_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path, field: str, value: object
) -> None:
    body = charge("q1", "0.25", "2026-Q1").body() | {field: value}
    node.add(_RawBody(body), _clock(1))
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl"))
    assert run.where() == {("unreadable-entry", "a.jsonl", node.entries[-1].seq)}
    assert f"'{field}'" in run.findings()[0]["message"]


def test_a_ledger_that_does_not_begin_with_opened_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    entries = rechain(node.ledger_id, node.entries[1:])  # 'opened' dropped, re-linked
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl", entries=entries))
    assert ("not-opened-first", "a.jsonl", 1) in run.where()


def test_a_partial_export_does_not_count_spending_it_cannot_see(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(charge("q1", "1", "2026-Q1"), _clock(1))
    node.add(charge("q2", "0.75", "2026-Q1", identity=OTHER_IDENTITY), _clock(2))
    earlier = node.export(tmp_path / "earlier.jsonl", exported_at=_clock(3))
    node.add(charge("q3", "0.5", "2026-Q1", identity=OTHER_IDENTITY), _clock(4))
    over = node.entries[-1].seq
    tail = node.export(tmp_path / "tail.jsonl", entries=node.entries[-1:])

    alone = verify_json(capsys, tail)
    assert alone.code == 0  # the 1.75 spent before it is not in this export
    assert ("history-unchecked", "tail.jsonl", None) in alone.where("warning")

    anchored = verify_json(capsys, tail, "--since", earlier)
    assert anchored.where() == {("over-period-limit", "tail.jsonl", over)}


def test_after_a_change_of_period_kind_a_period_counts_every_charge_in_its_dates(
    capsys: Any, tmp_path: Path
) -> None:
    # Yearly, then monthly: the node regroups March's earlier charge under "2026-03",
    # so a second March charge that fits the label's own total still overspends March.
    node = LedgerBuilder(tmp_path / "keys", NODE_LEDGER, "ngo-y", START)
    node.add(policy("ngo-y", period="yearly", limit="2", lifetime_limit=None, cap=None), START)
    node.add(PeriodRecord("2026", "2026-01-01", "2027-01-01"), START)
    node.add(charge("q1", "0.75", "2026"), _clock(1))
    node.add(policy("ngo-y", period="monthly", limit="1", lifetime_limit=None, cap=None), _clock(2))
    node.add(PeriodRecord("2026-03", "2026-03-01", "2026-04-01"), _clock(3))
    node.add(charge("q2", "0.5", "2026-03"), _clock(3))
    over = node.entries[-1].seq
    node.add(PeriodRecord("2026-04", "2026-04-01", "2026-05-01"), at("2026-04-01", "00:00"))
    node.add(charge("q3", "1", "2026-04"), at("2026-04-01", "09:00"))  # a fresh month: fine
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl"))
    assert run.where() == {("over-period-limit", "a.jsonl", over)}
    assert "spending to 1.25" in run.findings()[0]["message"]


def test_after_a_change_of_period_kind_an_identity_cap_counts_every_charge_in_its_dates(
    capsys: Any, tmp_path: Path
) -> None:
    # Yearly, then monthly, cap 1 throughout: two charges of 0.5 today under
    # "2026" and a third under "2026-03" are 1.5 in March for the same identity.
    node = LedgerBuilder(tmp_path / "keys", NODE_LEDGER, "ngo-y", START)
    node.add(policy("ngo-y", period="yearly", limit="5", lifetime_limit=None, cap="1"), START)
    node.add(PeriodRecord("2026", "2026-01-01", "2027-01-01"), START)
    node.add(charge("q1", "0.5", "2026"), _clock(1))
    node.add(charge("q2", "0.5", "2026"), _clock(2))
    node.add(policy("ngo-y", period="monthly", limit="5", lifetime_limit=None, cap="1"), _clock(3))
    node.add(PeriodRecord("2026-03", "2026-03-01", "2026-04-01"), _clock(3))
    node.add(charge("q3", "0.5", "2026-03"), _clock(4))
    over = node.entries[-1].seq
    run = verify_json(capsys, node.export(tmp_path / "a.jsonl"))
    assert run.where() == {("over-identity-cap", "a.jsonl", over)}
    assert "2026-03 to 1.5, over its cap 1" in run.findings()[0]["message"]


def test_a_release_whose_privacy_map_exceeds_its_charge_is_named(
    capsys: Any, node: LedgerBuilder, tmp_path: Path
) -> None:
    node.add(charge("q1", "0.5", "2026-Q1", privacy_map="0.4999"), _clock(1))  # honest
    node.add(charge("q2", "0.5", "2026-Q1", privacy_map="0.5000001"), _clock(2))
    cheated = node.entries[-1].seq
    assert _errors(capsys, node, tmp_path) == {("map-over-charge", "a.jsonl", cheated)}
