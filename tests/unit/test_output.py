"""Federated answers as a table, JSON, CSV and a plot; single-node views still work."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from fractions import Fraction
from pathlib import Path

import pytest

from coordinator.answer_plot import plot
from coordinator.output import (
    OutputError,
    answer_json,
    answer_table,
    federated_csv,
    federated_json,
    federated_table,
)
from coordinator.results import (
    DP_NOISE_ONLY,
    CombinedCell,
    FederatedAnswer,
    NodeOutcome,
    NodeStatus,
)
from tiaki.answer import Answer, Cell, Component
from tiaki.budget import PrivacyDefinition, format_amount
from tiaki.query import PrivacyCost, Query, QueryKind

# Schema order, deliberately not alphabetical: youth comes before housing.
SERVICES = ("budgeting", "counselling", "family_violence", "youth", "housing")
# OpenDP's privacy maps return binary floats; the exact charge is a long decimal.
CHARGE = Fraction(0.1)
EPSILON = PrivacyCost(PrivacyDefinition.PURE, Fraction(1, 2))
METHOD = "normal approximation to the sum of the nodes' noise"

OUTCOMES = (
    NodeOutcome("ngo-a", NodeStatus.ANSWERED, charged=CHARGE, attempts=1, seconds=0.25),
    NodeOutcome("ngo-b", NodeStatus.REPLAYED, charged=Fraction(0), attempts=1, seconds=0.5),
    NodeOutcome(
        "ngo-c",
        NodeStatus.UNREACHABLE,
        reason="no answer within 30 s after 3 attempts",
        attempts=3,
        seconds=30.0,
    ),
    NodeOutcome(
        "ngo-d",
        NodeStatus.REFUSED,
        reason="budget exhausted for 2026; nothing was spent",
        attempts=1,
        seconds=0.125,
    ),
)


def _cell(group: tuple[str, ...], estimate: float, half: float, bin_: str = "") -> CombinedCell:
    return CombinedCell(
        group=group,
        bin=bin_,
        estimate=estimate,
        half_width=half,
        ci_low=estimate - half,
        ci_high=estimate + half,
        method=METHOD,
        nodes=2,
    )


def count_answer(released: bool = True) -> FederatedAnswer:
    query = Query(kind=QueryKind.COUNT_CLIENTS, cost=EPSILON, group_by=("service",))
    cells = tuple(_cell((s,), 100.0 + 10 * i, 12.4) for i, s in enumerate(SERVICES))
    return FederatedAnswer("q-count-1", query, ("service",), cells, OUTCOMES, released)


def mean_answer() -> FederatedAnswer:
    query = Query(
        kind=QueryKind.MEAN,
        cost=EPSILON,
        column="circumstances_change",
        group_by=("service", "region"),
    )
    cells = (
        _cell(("budgeting", "northland"), 0.512345, 0.1234567),
        _cell(("budgeting", "auckland"), -0.25, 0.2),
        _cell(("housing", "northland"), 1.5, 0.3),
    )
    return FederatedAnswer("q-mean-1", query, ("service", "region"), cells, OUTCOMES, True)


def histogram_answer() -> FederatedAnswer:
    query = Query(
        kind=QueryKind.HISTOGRAM,
        cost=EPSILON,
        column="sessions",
        group_by=("service",),
        bin_edges=(0.0, 5.0, 60.0),
    )
    cells = tuple(
        _cell((s,), 40.0 + i, 9.0, bin_)
        for i, (s, bin_) in enumerate((s, b) for s in SERVICES[:2] for b in ("[0, 5)", "[5, 60]"))
    )
    return FederatedAnswer("q-hist-1", query, ("service",), cells, OUTCOMES, True)


# ---------------------------------------------------------------- table


def test_table_rows_follow_schema_order_and_counts_are_integers() -> None:
    text = federated_table(count_answer())
    positions = [text.index(service) for service in SERVICES]
    assert positions == sorted(positions)
    assert "count_clients by service" in text
    budgeting = next(line for line in text.splitlines() if line.startswith("budgeting"))
    # 100 ± 12.4 -> the interval is widened outwards to whole clients.
    assert budgeting.split() == ["budgeting", "100", "87", "–", "113", "2"]
    assert "100.0" not in text


def test_table_reports_coverage_reasons_charges_method_and_note() -> None:
    text = federated_table(count_answer())
    assert "coverage: 2 of 4 nodes (ngo-a, ngo-b)" in text
    assert "ngo-c: unreachable — no answer within 30 s after 3 attempts" in text
    assert "ngo-d: refused — budget exhausted for 2026; nothing was spent" in text
    assert "ngo-a: answered" not in text  # only nodes that did not answer are listed
    assert "ngo-a epsilon 0.1" in text
    assert "ngo-b replayed, no charge" in text  # the words JSON uses too
    assert "query id q-count-1" in text
    assert f"CI method: {METHOD}" in text
    assert text.rstrip().endswith(DP_NOISE_ONLY)


def test_table_shows_other_values_to_four_significant_digits() -> None:
    text = federated_table(mean_answer())
    row = next(line for line in text.splitlines() if "northland" in line and "budgeting" in line)
    assert row.split() == ["budgeting", "northland", "0.5123", "0.3889", "–", "0.6358", "2"]
    assert "mean of circumstances_change by service, region" in text


def test_table_histogram_has_a_bin_column() -> None:
    text = federated_table(histogram_answer())
    header = text.splitlines()[2].split()
    assert header[:3] == ["service", "bin", "estimate"]
    assert "[5, 60]" in text


def test_table_when_nothing_was_released_says_so_and_shows_no_estimates() -> None:
    text = federated_table(count_answer(released=False))
    assert "Nothing was released" in text
    assert "--require-all" in text
    assert "2 of 4 could not (ngo-c, ngo-d)" in text
    for outcome in OUTCOMES:
        assert f"  {outcome.node}: {outcome.status.value}" in text
    assert "no answer within 30 s after 3 attempts" in text
    assert "budgeting" not in text  # no cell is shown
    assert "ngo-a epsilon 0.1" in text  # what was spent is still reported


# ---------------------------------------------------------------- JSON


def test_json_has_exactly_the_documented_fields_and_exact_charges() -> None:
    answer = count_answer()
    doc = json.loads(federated_json(answer))
    assert set(doc) == {
        "query_id",
        "title",
        "query",
        "cost_per_node",
        "counting",
        "released",
        "coverage",
        "cells",
        "nodes",
        "note",
    }
    assert doc["query_id"] == "q-count-1"
    assert doc["query"] == json.loads(answer.query.canonical())
    assert doc["released"] is True
    assert doc["coverage"] == {"answered": ["ngo-a", "ngo-b"], "total": 4}
    assert doc["note"] == DP_NOISE_ONLY
    charges = {n["node"]: n["charged"] for n in doc["nodes"]}
    assert charges == {
        "ngo-a": "0.1000000000000000055511151231257827021181583404541015625",
        "ngo-b": "0",
        "ngo-c": None,
        "ngo-d": None,
    }
    assert charges["ngo-a"] == format_amount(CHARGE)
    assert Fraction(charges["ngo-a"]) == CHARGE
    for node in doc["nodes"]:
        assert set(node) == {
            "node",
            "status",
            "reason",
            "charged",
            "charged_now",
            "charge",
            "attempts",
            "seconds",
        }
    unreachable = doc["nodes"][2]
    assert unreachable["status"] == "unreachable"
    assert unreachable["reason"] == "no answer within 30 s after 3 attempts"
    assert (unreachable["attempts"], unreachable["seconds"]) == (3, 30.0)


def test_json_cells_in_order_with_intervals() -> None:
    doc = json.loads(federated_json(count_answer()))
    assert [c["group"] for c in doc["cells"]] == [{"service": s} for s in SERVICES]
    first = doc["cells"][0]
    assert set(first) == {
        "group",
        "estimate",
        "ci95",
        "half_width",
        "method",
        "nodes",
        "reliable",
        "unreliable_reasons",
    }
    assert first["estimate"] == 100.0
    assert first["ci95"] == [100.0 - 12.4, 100.0 + 12.4]
    assert first["half_width"] == 12.4
    assert (first["method"], first["nodes"]) == (METHOD, 2)


def test_json_histogram_cells_carry_their_bin() -> None:
    doc = json.loads(federated_json(histogram_answer()))
    assert [c["bin"] for c in doc["cells"]] == ["[0, 5)", "[5, 60]"] * 2


def test_json_not_released_has_no_cells_and_non_finite_numbers_are_null() -> None:
    doc = json.loads(federated_json(count_answer(released=False)))
    assert doc["released"] is False
    assert doc["cells"] == []
    answer = count_answer()
    nan_cell = dataclasses.replace(answer.cells[0], estimate=float("nan"), ci_low=float("-inf"))
    text = federated_json(dataclasses.replace(answer, cells=(nan_cell,)))
    cell = json.loads(text)["cells"][0]  # strict JSON: no NaN or Infinity tokens
    assert cell["estimate"] is None
    assert cell["ci95"][0] is None


# ---------------------------------------------------------------- CSV


def test_csv_one_row_per_cell_with_full_precision() -> None:
    answer = mean_answer()
    rows = list(csv.reader(io.StringIO(federated_csv(answer))))
    header, body = rows[0], rows[1:]
    assert header == [
        "service",
        "region",
        "estimate",
        "ci_low",
        "ci_high",
        "half_width",
        "nodes",
        "method",
        "reliable",
        "unreliable_reasons",
        "query_id",
        "question",
        "cost_per_node",
        "definition",
        "nodes_covered",
    ]
    assert len(body) == len(answer.cells)
    for row, cell in zip(body, answer.cells, strict=True):
        record = dict(zip(header, row, strict=True))
        assert (record["service"], record["region"]) == cell.group
        assert float(record["estimate"]) == cell.estimate
        assert float(record["ci_low"]) == cell.ci_low
        assert float(record["ci_high"]) == cell.ci_high
        assert float(record["half_width"]) == cell.half_width
        assert int(record["nodes"]) == cell.nodes
        assert record["method"] == METHOD
        # Every row says what it is of.
        assert record["query_id"] == answer.query_id
        assert record["question"].startswith("mean of ")
        assert record["cost_per_node"] == format_amount(answer.query.cost.amount)
        assert record["definition"] == answer.query.cost.definition.value
        assert record["nodes_covered"] == ";".join(answer.answered_nodes)
        assert record["reliable"] == ("true" if cell.reliable else "false")


def test_csv_histogram_has_bin_column_and_unreleased_has_header_only() -> None:
    rows = list(csv.DictReader(io.StringIO(federated_csv(histogram_answer()))))
    assert len(rows) == 4
    assert [r["bin"] for r in rows] == ["[0, 5)", "[5, 60]"] * 2
    unreleased = list(csv.reader(io.StringIO(federated_csv(count_answer(released=False)))))
    assert unreleased == [
        [
            "service",
            "estimate",
            "ci_low",
            "ci_high",
            "half_width",
            "nodes",
            "method",
            "reliable",
            "unreliable_reasons",
            "query_id",
            "question",
            "cost_per_node",
            "definition",
            "nodes_covered",
        ]
    ]


# ---------------------------------------------------------------- plot


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for answer in (count_answer(), mean_answer(), histogram_answer()):
        path = tmp_path / f"{answer.query_id}.png"
        plot(answer, path)
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(data) > 1000


def test_plot_without_matplotlib_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    with pytest.raises(OutputError, match=r"pip install 'tiaki\[plot\]'"):
        plot(count_answer(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_refuses_when_nothing_was_released(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="nothing was released"):
        plot(count_answer(released=False), tmp_path / "x.png")


# ---------------------------------------------------------------- single node


def test_single_node_views_still_render() -> None:
    component = Component("count", 41.0, "discrete_laplace", 2.0, 6.0)
    answer = Answer(
        query_id="q-1",
        node_id="ngo-a",
        canonical_query=Query(kind=QueryKind.COUNT, cost=EPSILON).canonical(),
        group_by=(),
        cells=(Cell((), "", 41.0, 6.0, (component,)),),
        charged=EPSILON,
        dataset_version="v1",
        replayed=False,
        budget=None,
    )
    assert "node ngo-a: charged epsilon 0.5" in answer_table(answer)
    assert json.loads(answer_json(answer))["charged"] == {"epsilon": "0.5"}
