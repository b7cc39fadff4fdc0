"""A real node over gRPC on a free port: every query kind, on synthetic and PUMS data.

Exact values are computed here straight from the CSV with the csv module,
independently of the node's engine; a noisy answer must fall within a few
times its own stated 95% accuracy of them.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.client import new_query_id
from tests.integration.conftest import LiveNode
from tiaki.answer import Answer
from tiaki.budget import PrivacyDefinition
from tiaki.query import (
    Bounds,
    DateRange,
    InSet,
    NumericRange,
    PrivacyCost,
    Query,
    QueryKind,
)

PURE = PrivacyDefinition.PURE
ZCDP = PrivacyDefinition.ZCDP
# P(|noise| > 4 x its 95% half-width) is below 1e-5 per cell for both mechanisms.
SLACK = 4.0


def eps(text: str) -> PrivacyCost:
    return PrivacyCost.parse(PURE, text)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ask(node: LiveNode, query: Query, identity: str = "coordinator-a") -> Answer:
    with node.client(identity) as client:
        return client.query(query, query_id=new_query_id(), analyst="test")


def assert_close(answer: Answer, exact: Mapping[Any, float]) -> None:
    cells = {cell.group + ((cell.bin,) if cell.bin else ()): cell for cell in answer.cells}
    assert set(cells) == set(exact)
    for key, cell in cells.items():
        assert abs(cell.value - exact[key]) <= SLACK * cell.accuracy_95 + 1e-9, (key, cell)


@pytest.fixture
def synth_node(
    make_node_config: Callable[..., Path], start_node: Callable[..., LiveNode], synth_csv: Path
) -> LiveNode:
    # k = 50 keeps every synthetic episode, so exact values can be read off the CSV.
    config = make_node_config(policy={"max_records_per_client": 50})
    return start_node(config, synth_csv)


def test_health_and_info(synth_node: LiveNode) -> None:
    with synth_node.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tiaki.v1.Node"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with synth_node.client() as client:
        info = client.info()
    names = {c.name for c in info.columns}
    assert "client_name" not in names and "address" not in names and "client_id" not in names
    assert {"region", "service", "circumstances_change", "episode_start"} <= names
    assert info.identifier_column == "client_id"
    assert info.dataset_version


def test_every_kind_on_synthetic_data(synth_node: LiveNode, synth_csv: Path) -> None:
    data = rows(synth_csv)

    by_service: Counter[tuple[str, ...]] = Counter()
    for r in data:
        by_service[(r["service"],)] += 1
    answer = ask(synth_node, Query(QueryKind.COUNT, eps("1"), group_by=("service",)))
    assert_close(answer, dict(by_service))
    assert answer.charged.amount <= 1 and answer.charged.amount > 0.999

    clients: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for r in data:
        if r["service"] == "family_violence":
            clients[(r["region"],)].add(r["client_id"])
    query = Query(
        QueryKind.COUNT_CLIENTS,
        eps("1"),
        filters=(InSet("service", ("family_violence",)),),
        group_by=("region",),
    )
    regions = synth_node.config.schema.columns["region"].categories  # type: ignore[union-attr]
    assert_close(ask(synth_node, query), {(g,): len(clients[(g,)]) for g in regions})

    in_2024 = [r for r in data if "2024-01-01" <= r["episode_start"] <= "2024-12-31"]
    total = sum(int(r["sessions"]) for r in in_2024)
    query = Query(
        QueryKind.SUM,
        eps("1"),
        column="sessions",
        filters=(DateRange("episode_start", date(2024, 1, 1), date(2024, 12, 31)),),
    )
    assert_close(ask(synth_node, query), {(): total})


def test_mean_proportion_histogram_on_synthetic(synth_node: LiveNode, synth_csv: Path) -> None:
    data = [r for r in rows(synth_csv) if r["circumstances_post"]]
    budgeting = [r for r in data if r["service"] == "budgeting"]
    change = [int(r["circumstances_post"]) - int(r["circumstances_pre"]) for r in budgeting]
    query = Query(
        QueryKind.MEAN,
        eps("1"),
        column="circumstances_change",
        bounds=Bounds(-4, 4),
        filters=(InSet("service", ("budgeting",)),),
    )
    answer = ask(synth_node, query)
    assert_close(answer, {(): sum(change) / len(change)})
    assert [c.name for c in answer.cells[0].components] == ["shifted_sum", "count"]

    per_client_improved: dict[str, bool] = {}
    for r in data:
        improved = int(r["goals_post"]) - int(r["goals_pre"]) >= 1
        per_client_improved[r["client_id"]] = (
            per_client_improved.get(r["client_id"], False) or improved
        )
    share = sum(per_client_improved.values()) / len(per_client_improved)
    query = Query(
        QueryKind.PROPORTION,
        eps("1"),
        filters=(NumericRange("goals_change", min=-4),),
        condition=(NumericRange("goals_change", min=1),),
    )
    assert_close(ask(synth_node, query), {(): share})

    all_rows = rows(synth_csv)
    edges = (0.0, 5.0, 10.0, 60.0)
    hist: dict[tuple[str, str], float] = {}
    labels = ["[0, 5)", "[5, 10)", "[10, 60]"]
    for service in ("budgeting", "youth"):
        values = [int(r["sessions"]) for r in all_rows if r["service"] == service]
        hist[(service, labels[0])] = sum(v < 5 for v in values)
        hist[(service, labels[1])] = sum(5 <= v < 10 for v in values)
        hist[(service, labels[2])] = sum(v >= 10 for v in values)
    query = Query(
        QueryKind.HISTOGRAM,
        eps("1"),
        column="sessions",
        bin_edges=edges,
        filters=(InSet("service", ("budgeting", "youth")),),
        group_by=("service",),
    )
    answer = ask(synth_node, query)
    others = {(s, b): 0.0 for s in ("counselling", "family_violence", "housing") for b in labels}
    assert_close(answer, {**hist, **others})


@pytest.mark.parametrize("definition", [PURE, ZCDP])
def test_pums_every_kind(
    definition: PrivacyDefinition,
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    pums_dup: Path,
) -> None:
    from tests.conftest import PUMS_SCHEMA

    policy = {
        "privacy_definition": definition.value,
        "budget": {"limit": 20, "period": "none"},
        "per_query_max": 2,
        "max_records_per_client": 4,
    }
    node = start_node(make_node_config(schema=PUMS_SCHEMA, policy=policy), pums_dup)
    data = rows(pums_dup)
    amount = "2" if definition is PURE else "0.5"
    cost = PrivacyCost.parse(definition, amount)

    by_sex: Counter[tuple[str, ...]] = Counter()
    for r in data:
        by_sex[(r["sex"],)] += 1
    assert_close(ask(node, Query(QueryKind.COUNT, cost, group_by=("sex",))), dict(by_sex))

    people = {r["pid"] for r in data}
    assert_close(ask(node, Query(QueryKind.COUNT_CLIENTS, cost)), {(): len(people)})

    incomes = [float(r["income"]) for r in data]
    answer = ask(node, Query(QueryKind.MEAN, cost, column="income", bounds=Bounds(0, 200000)))
    exact_mean = sum(min(x, 200000) for x in incomes) / len(incomes)
    assert_close(answer, {(): exact_mean})

    ages = [int(r["age"]) for r in data]
    answer = ask(node, Query(QueryKind.SUM, cost, column="age"))
    assert_close(answer, {(): sum(ages)})

    married: dict[str, bool] = defaultdict(bool)
    for r in data:
        married[r["pid"]] |= r["married"] == "1"
    answer = ask(node, Query(QueryKind.PROPORTION, cost, condition=(InSet("married", ("1",)),)))
    assert_close(answer, {(): sum(married.values()) / len(married)})

    answer = ask(node, Query(QueryKind.HISTOGRAM, cost, column="age", bin_edges=(0, 18, 65, 100)))
    exact = {
        ("[0, 18)",): sum(a < 18 for a in ages),
        ("[18, 65)",): sum(18 <= a < 65 for a in ages),
        ("[65, 100]",): sum(a >= 65 for a in ages),
    }
    assert_close(answer, exact)
    distribution = answer.cells[0].components[0].distribution
    assert distribution == ("discrete_laplace" if definition is PURE else "discrete_gaussian")
    spent = node.budget().lifetime_spent
    assert spent <= 6 * cost.amount and spent > 0
