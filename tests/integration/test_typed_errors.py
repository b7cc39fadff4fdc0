"""A node's refusals reach the coordinator as their own types, amounts and all, over real gRPC.

Nothing on the coordinator reads a message to learn what happened: the type
and its fields come from the reason code and metadata the node sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest

from coordinator.client import new_query_id
from coordinator.fanout import ask_node
from coordinator.results import NodeStatus
from node.config import CoordinatorGrant
from node.service import Released
from tests.integration.conftest import LiveNode
from tiaki.budget import PrivacyDefinition
from tiaki.errors import BusyError, InsufficientBudgetError, PerQueryMaximumError
from tiaki.query import PrivacyCost, Query, QueryKind

POLICY = {"budget": {"limit": "1", "period": "none"}, "per_query_max": "0.75"}


def count(amount: str) -> Query:
    return Query(QueryKind.COUNT, PrivacyCost.parse(PrivacyDefinition.PURE, amount))


@pytest.fixture
def node(
    make_node_config: Callable[..., Path], start_node: Callable[..., LiveNode], synth_csv: Path
) -> LiveNode:
    server = {"max_concurrent_per_identity": 1}
    return start_node(make_node_config(policy=POLICY, server=server), synth_csv)


def test_a_budget_refusal_arrives_as_insufficient_budget_with_the_amounts(node: LiveNode) -> None:
    with node.client() as client:
        client.query(count("0.75"), query_id=new_query_id(), analyst="a")
        with pytest.raises(InsufficientBudgetError) as info:
            client.query(count("0.5"), query_id=new_query_id(), analyst="a")
    refusal = info.value
    assert type(refusal) is InsufficientBudgetError
    assert (refusal.requested, refusal.remaining, refusal.limit) == (
        Fraction(1, 2),
        Fraction(1, 4),
        "remaining lifetime budget",
    )
    assert refusal.node == node.address
    assert node.budget().lifetime_spent == Fraction(3, 4)  # the refusal spent nothing


def test_a_per_query_maximum_arrives_as_its_own_type(node: LiveNode) -> None:
    with node.client() as client, pytest.raises(PerQueryMaximumError) as info:
        client.query(count("0.9"), query_id=new_query_id(), analyst="a")
    assert (info.value.requested, info.value.maximum) == (Fraction(9, 10), Fraction(3, 4))


def test_a_busy_refusal_arrives_as_busy_and_fanout_calls_it_transient(
    node: LiveNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = node.running.service
    answer_now = service.query
    inside, release = threading.Event(), threading.Event()

    def held(
        identity: str,
        query_id: str,
        analyst: str,
        query: Query,
        grant: CoordinatorGrant | None = None,
    ) -> Released:
        inside.set()
        assert release.wait(30)
        return answer_now(identity, query_id, analyst, query, grant)

    monkeypatch.setattr(service, "query", held)
    with node.client() as first, node.client() as second, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(first.query, count("0.25"), query_id=new_query_id(), analyst="a")
        assert inside.wait(30)
        try:
            with pytest.raises(BusyError) as info:
                second.query(count("0.25"), query_id=new_query_id(), analyst="a")
            outcome = ask_node(
                second, "ngo", count("0.25"), query_id=new_query_id(), analyst="a", retries=0
            )
        finally:
            release.set()
        assert not pending.result(timeout=30).replayed
    busy = info.value
    assert (busy.identity, busy.in_flight, busy.node) == ("coordinator-a", 1, node.address)
    assert outcome.status is NodeStatus.UNREACHABLE and outcome.reason.startswith("busy: ")
    assert node.budget().lifetime_spent == Fraction(1, 4)  # only the held query was charged
