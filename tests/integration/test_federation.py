"""A federation of five real node servers on free ports, asked through the coordinator.

Five NGOs hold different synthetic data (seed decides size and mix). Exact
values come from the CSVs, read here with the csv module.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.cli.main import main
from coordinator.config import CoordinatorTls, FederationConfig, NodeEntry
from coordinator.fanout import Federation
from coordinator.federated import ask_federation
from coordinator.mirror import MirrorLedger
from coordinator.planning import choose_cost, plan_question
from coordinator.results import FederatedAnswer, NodeStatus
from node.synth import write_csv
from tests.conftest import FederationPki
from tests.integration.conftest import LiveNode
from tiaki.budget import PrivacyDefinition
from tiaki.query import InSet, NumericRange, PrivacyCost, Query, QueryKind

SEEDS = (3, 5, 8, 13, 21)
CLIENTS = (900, 600, 400, 700, 500)


def eps(text: str) -> PrivacyCost:
    return PrivacyCost.parse(PrivacyDefinition.PURE, text)


@pytest.fixture(scope="module")
def csvs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("federation-data")
    paths = []
    for seed, clients in zip(SEEDS, CLIENTS, strict=True):
        path = root / f"ngo-{seed}.csv"
        write_csv(path, clients, seed)
        paths.append(path)
    return paths


@pytest.fixture
def five_nodes(
    make_node_config: Callable[..., Path], start_node: Callable[..., LiveNode], csvs: list[Path]
) -> list[LiveNode]:
    policy = {
        "budget": {"limit": "1000", "period": "none"},
        "per_query_max": "2",
        "max_records_per_client": 50,  # keeps every synthetic episode: exact values from CSV
    }
    return [
        start_node(make_node_config(node_id=f"ngo-{seed}", policy=policy), path)
        for seed, path in zip(SEEDS, csvs, strict=True)
    ]


@pytest.fixture
def federation_file(tmp_path: Path, five_nodes: list[LiveNode], pki: FederationPki) -> Path:
    path = tmp_path / "federation.yaml"
    tls = pki.federation_tls()
    for node in five_nodes:
        argv = ["nodes", "add", node.config.node_id, node.address, "--config", str(path)]
        argv += ["--analyst", "ana", "--tls-ca", tls["ca"], "--tls-cert", tls["cert"]]
        argv += ["--tls-key", tls["key"]]
        assert main(argv) == 0
    return path


@pytest.fixture
def federation(
    tmp_path: Path, five_nodes: list[LiveNode], pki: FederationPki
) -> Iterator[tuple[Federation, MirrorLedger]]:
    config = FederationConfig(
        analyst="ana",
        ledger=tmp_path / "mirror.sqlite",
        tls=CoordinatorTls.model_validate(pki.federation_tls()),
        nodes=tuple(NodeEntry(name=n.config.node_id, address=n.address) for n in five_nodes),
    )
    with Federation(config) as fed, MirrorLedger(config.ledger) as mirror:
        yield fed, mirror


def rows(paths: list[Path]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for path in paths:
        with path.open(newline="", encoding="utf-8") as f:
            out.extend(csv.DictReader(f))
    return out


def covered(answer: FederatedAnswer, exact: dict[tuple[str, ...], float]) -> list[bool]:
    return [
        cell.ci_low <= exact[cell.group + ((cell.bin,) if cell.bin else ())] <= cell.ci_high
        for cell in answer.cells
    ]


def test_combined_estimates_cover_the_truth_about_95_percent(
    federation: tuple[Federation, MirrorLedger], csvs: list[Path]
) -> None:
    fed, mirror = federation
    data = rows(csvs)
    by_service: dict[tuple[str, ...], float] = {}
    for r in data:
        by_service[(r["service"],)] = by_service.get((r["service"],), 0) + 1
    with_post = [r for r in data if r["circumstances_post"]]
    change = [int(r["circumstances_post"]) - int(r["circumstances_pre"]) for r in with_post]
    mean_change = sum(change) / len(change)
    improved: dict[str, bool] = {}
    for r in with_post:
        up = int(r["circumstances_post"]) - int(r["circumstances_pre"]) >= 1
        improved[r["client_id"]] = improved.get(r["client_id"], False) or up
    share = sum(improved.values()) / len(improved)

    count = Query(QueryKind.COUNT, eps("0.2"), group_by=("service",))
    mean = Query(QueryKind.MEAN, eps("0.2"), column="circumstances_change")
    proportion = Query(
        QueryKind.PROPORTION,
        eps("0.2"),
        filters=(NumericRange("circumstances_change", min=-4),),
        condition=(NumericRange("circumstances_change", min=1),),
    )
    hits: list[bool] = []
    trials = 40
    for _ in range(trials):
        hits += covered(ask_federation(fed, count, analyst="t", mirror=mirror), by_service)
        hits += covered(ask_federation(fed, mean, analyst="t", mirror=mirror), {(): mean_change})
        hits += covered(ask_federation(fed, proportion, analyst="t", mirror=mirror), {(): share})
    # 280 intervals at a nominal 95%: the binomial sd of the hit rate is 0.013,
    # so [0.89, 0.995] is about 4.5 sd below and 3.5 sd above.
    rate = sum(hits) / len(hits)
    assert len(hits) == trials * 7
    assert 0.89 <= rate <= 0.995, rate


def test_each_answer_says_who_answered_and_mean_is_a_ratio_of_sums(
    federation: tuple[Federation, MirrorLedger], five_nodes: list[LiveNode]
) -> None:
    fed, mirror = federation
    query = Query(QueryKind.MEAN, eps("0.5"), column="sessions", group_by=("service",))
    answer = ask_federation(fed, query, analyst="t", mirror=mirror)
    assert answer.released and len(answer.answered_nodes) == 5
    assert answer.coverage.startswith("5 of 5 nodes")
    assert [c.group for c in answer.cells] == [
        (s,) for s in ("budgeting", "counselling", "family_violence", "youth", "housing")
    ]
    assert all(c.nodes == 5 and c.method for c in answer.cells)
    assert answer.total_charged == sum(
        (o.charged for o in answer.outcomes if o.charged is not None),
        start=0 * answer.total_charged,
    )


def test_a_stopped_node_gives_a_labelled_partial_answer(
    federation: tuple[Federation, MirrorLedger], five_nodes: list[LiveNode]
) -> None:
    fed, mirror = federation
    five_nodes[2].running.stop(grace=0)
    query = Query(QueryKind.COUNT_CLIENTS, eps("0.3"), filters=(InSet("service", ("youth",)),))
    answer = ask_federation(fed, query, analyst="t", mirror=mirror)
    down = five_nodes[2].config.node_id
    assert answer.released
    assert down not in answer.answered_nodes and len(answer.answered_nodes) == 4
    outcome = next(o for o in answer.outcomes if o.node == down)
    assert outcome.status is NodeStatus.UNREACHABLE and "unreachable" in outcome.reason
    assert answer.cells[0].nodes == 4

    spent_before = [n.budget().lifetime_spent for n in five_nodes if n is not five_nodes[2]]
    strict = ask_federation(fed, query, analyst="t", mirror=mirror, require_all=True)
    assert not strict.released and strict.cells == ()
    assert [n.budget().lifetime_spent for n in five_nodes if n is not five_nodes[2]] == spent_before

    # Retrying the same question id is answered from the nodes' stored answers.
    again = ask_federation(fed, query, analyst="t", mirror=mirror, query_id=answer.query_id)
    assert all(o.status is NodeStatus.REPLAYED for o in again.outcomes if o.answered)
    assert [n.budget().lifetime_spent for n in five_nodes if n is not five_nodes[2]] == spent_before
    assert [c.estimate for c in again.cells] == [c.estimate for c in answer.cells]


def test_planning_spends_nothing_and_predicts_the_interval(
    federation: tuple[Federation, MirrorLedger], five_nodes: list[LiveNode]
) -> None:
    fed, mirror = federation
    before = [n.budget() for n in five_nodes]
    entries_before = [len(n.running.service.ledger.entries()) for n in five_nodes]
    query = Query(QueryKind.COUNT, eps("0.4"), group_by=("region",))
    plan = plan_question(fed, query)
    assert plan.expected_half_width is not None and plan.expected_half_width > 0
    chosen = choose_cost(fed, query, target=200.0, ceiling=eps("2").amount)
    assert chosen.cost.amount <= 2
    assert plan_question(fed, chosen).expected_half_width <= 200.0  # type: ignore[operator]
    cheaper = replace(
        chosen, cost=PrivacyCost(chosen.cost.definition, chosen.cost.amount - eps("0.0001").amount)
    )
    assert plan_question(fed, cheaper).expected_half_width > 200.0  # type: ignore[operator]
    assert [n.budget() for n in five_nodes] == before
    assert [len(n.running.service.ledger.entries()) for n in five_nodes] == entries_before

    answer = ask_federation(fed, chosen, analyst="t", mirror=mirror)
    realised = [c.half_width for c in answer.cells]
    # The realised interval of an additive cell is the planned one (same noise scales).
    assert all(abs(w - plan_question(fed, chosen).expected_half_width) < 1e-6 for w in realised)  # type: ignore[operator]


def test_mirror_agrees_with_nodes_after_a_mixed_run(
    federation_file: Path, five_nodes: list[LiveNode], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ["--config", str(federation_file)]
    assert main(["query", *cfg, "count", "--by", "region", "--epsilon", "0.3", "--quiet"]) == 0
    assert main(["query", *cfg, "count", "--by", "region", "--rho", "0.3"]) == 3  # pure DP
    assert main(["query", *cfg, "count", "--epsilon", "5"]) == 3  # above per-query max
    five_nodes[4].running.stop(grace=0)
    assert main(["query", *cfg, "count_clients", "--epsilon", "0.2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["budget", *cfg, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for entry in report["nodes"]:
        if entry["reachable"]:
            assert entry["agrees"], entry
    assert sum(1 for e in report["nodes"] if e["reachable"]) == 4
