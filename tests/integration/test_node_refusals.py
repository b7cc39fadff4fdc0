"""Bad input, policy refusals, budget exhaustion and idempotency, over real gRPC.

Every refusal must carry the right status code, a message a person can act
on, and leave the node's ledger exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import grpc
import pytest

from coordinator.client import new_query_id
from tests.integration.conftest import LiveNode, status_code
from tiaki.budget import PrivacyDefinition
from tiaki.errors import TiakiError
from tiaki.query import InSet, PrivacyCost, Query, QueryKind
from tiaki.v1 import node_pb2 as pb

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
CONFLICT = grpc.StatusCode.ALREADY_EXISTS


@pytest.fixture
def node(
    make_node_config: Callable[..., Path], start_node: Callable[..., LiveNode], synth_csv: Path
) -> LiveNode:
    policy = {
        "budget": {"limit": "3", "period": "yearly", "lifetime_limit": "10"},
        "per_query_max": "1",
        "allowed_kinds": ["count", "count_clients", "mean", "sum", "histogram"],
    }
    # Room for the race test's 16 threads over 3 identities.
    server = {"max_concurrent_per_identity": 16}
    return start_node(make_node_config(policy=policy, server=server), synth_csv)


def request(**fields: object) -> pb.QueryRequest:
    base: dict[str, object] = {
        "query_id": new_query_id(),
        "analyst": "ana",
        "kind": pb.COUNT,
        "cost": pb.PrivacyCost(epsilon="0.1"),
    }
    base.update(fields)
    return pb.QueryRequest(**base)  # type: ignore[arg-type]


def _f(column: str, *values: str) -> pb.Filter:
    return pb.Filter(column=column, in_set=pb.ValueSet(values=list(values)))


def _range(column: str, lo: float | None = None, hi: float | None = None) -> pb.Filter:
    rng = pb.NumericRange()
    if lo is not None:
        rng.min = lo
    if hi is not None:
        rng.max = hi
    return pb.Filter(column=column, numeric_range=rng)


BAD_REQUESTS: list[tuple[str, pb.QueryRequest, grpc.StatusCode, str]] = [
    ("unknown column", request(group_by=["colour"]), INVALID, "unknown group-by column"),
    ("unknown filter column", request(filters=[_f("colour", "red")]), INVALID, "unknown filter"),
    ("never-queryable", request(group_by=["client_name"]), DENIED, "never-queryable"),
    ("never-queryable filter", request(filters=[_f("address", "x")]), DENIED, "never-queryable"),
    ("identifier", request(group_by=["client_id"]), DENIED, "identifier"),
    ("group by numeric", request(group_by=["sessions"]), INVALID, "not categorical"),
    (
        "too many group-by",
        request(group_by=["region", "service", "gender", "ethnicity"]),
        INVALID,
        "at most 3",
    ),
    ("unknown category", request(filters=[_f("region", "atlantis")]), INVALID, "not a category"),
    (
        "inverted bounds",
        request(kind=pb.MEAN, column="sessions", bounds=pb.Bounds(lower=9, upper=2)),
        INVALID,
        "inverted",
    ),
    (
        "non-finite bounds",
        request(kind=pb.SUM, column="sessions", bounds=pb.Bounds(lower=0, upper=float("inf"))),
        INVALID,
        "finite",
    ),
    (
        "bounds wider than schema",
        request(kind=pb.SUM, column="sessions", bounds=pb.Bounds(lower=0, upper=1000)),
        INVALID,
        "only narrow",
    ),
    ("nan range", request(filters=[_range("sessions", float("nan"))]), INVALID, "non-finite"),
    ("mean of category", request(kind=pb.MEAN, column="region"), INVALID, "not numeric"),
    ("zero epsilon", request(cost=pb.PrivacyCost(epsilon="0")), INVALID, "greater than zero"),
    ("negative epsilon", request(cost=pb.PrivacyCost(epsilon="-1")), INVALID, "greater than zero"),
    ("nan epsilon", request(cost=pb.PrivacyCost(epsilon="NaN")), INVALID, "finite"),
    ("infinite epsilon", request(cost=pb.PrivacyCost(epsilon="inf")), INVALID, "finite"),
    ("text epsilon", request(cost=pb.PrivacyCost(epsilon="lots")), INVALID, "not a number"),
    ("rho on a pure node", request(cost=pb.PrivacyCost(rho="0.1")), INVALID, "give the cost as"),
    ("no cost", request(cost=pb.PrivacyCost()), INVALID, "no privacy cost"),
    ("above per-query max", request(cost=pb.PrivacyCost(epsilon="1.5")), DENIED, "per-query"),
    ("unknown kind", request(kind=42), INVALID, "unknown query kind"),
    (
        "kind not allowed",
        request(kind=pb.PROPORTION, condition=[_f("gender", "female")]),
        DENIED,
        "does not answer proportion",
    ),
    ("empty query id", request(query_id=""), INVALID, "query id"),
    ("huge query id", request(query_id="q" * 10_000), INVALID, "query id"),
    (
        "oversized request",
        request(filters=[_f("region", *(["auckland"] * 900))] * 20),
        INVALID,
        "larger than",
    ),
    (
        "histogram without bins",
        request(kind=pb.HISTOGRAM, column="sessions"),
        INVALID,
        "two bin edges",
    ),
    (
        "too many cells",
        request(
            kind=pb.HISTOGRAM,
            column="episode_days",
            group_by=["region", "service", "referral_source"],
            bin_edges=[float(i) for i in range(0, 500)],
        ),
        INVALID,
        "cells",
    ),
]


@pytest.mark.parametrize(
    ("label", "req", "code", "words"), BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS]
)
def test_bad_requests_are_refused_and_cost_nothing(
    node: LiveNode, label: str, req: pb.QueryRequest, code: grpc.StatusCode, words: str
) -> None:
    before = node.budget()
    entries_before = len(node.running.service.ledger.entries())
    with node.client() as client, pytest.raises(TiakiError) as info:
        client.query_raw(req)
    assert status_code(info.value) == code
    assert words in info.value.message
    assert "Traceback" not in info.value.message and "/" not in info.value.message.split("(")[0]
    assert node.budget() == before
    assert len(node.running.service.ledger.entries()) == entries_before


def cost(text: str) -> PrivacyCost:
    return PrivacyCost.parse(PrivacyDefinition.PURE, text)


def test_budget_exhaustion_names_requested_and_remaining(node: LiveNode) -> None:
    with node.client() as client:
        for _ in range(3):
            client.query(Query(QueryKind.COUNT, cost("0.9")), query_id=new_query_id(), analyst="a")
        before = node.budget()
        assert before.current.remaining == 3 - before.current.spent
        with pytest.raises(TiakiError) as info:
            client.query(Query(QueryKind.COUNT, cost("0.5")), query_id=new_query_id(), analyst="a")
    assert status_code(info.value) == EXHAUSTED
    assert "0.5" in info.value.message and "remaining" in info.value.message
    assert node.budget() == before


def test_idempotent_retry_returns_the_stored_answer(node: LiveNode) -> None:
    query = Query(QueryKind.COUNT_CLIENTS, cost("0.5"), group_by=("service",))
    qid = new_query_id()
    with node.client("coord-a") as a, node.client("coord-b") as b:
        first = a.query(query, query_id=qid, analyst="ana")
        spent = node.budget().lifetime_spent
        second = a.query(query, query_id=qid, analyst="ana")
        assert second.replayed and not first.replayed
        assert second.cells == first.cells
        assert second.charged == first.charged
        assert node.budget().lifetime_spent == spent

        other = Query(QueryKind.COUNT, cost("0.5"))
        with pytest.raises(TiakiError) as info:
            a.query(other, query_id=qid, analyst="ana")
        assert status_code(info.value) == CONFLICT
        assert node.budget().lifetime_spent == spent

        # Ids are scoped to the asking identity: b cannot fetch a's answer.
        third = b.query(query, query_id=qid, analyst="bob")
        assert not third.replayed
        assert node.budget().lifetime_spent == spent + third.charged.amount


def test_concurrent_queries_never_overspend(node: LiveNode) -> None:
    amount = cost("0.07")
    query = Query(QueryKind.COUNT, amount, filters=(InSet("service", ("youth",)),))

    def attempt(i: int) -> Fraction | None:
        with node.client(f"coord-{i % 3}") as client:
            try:
                answer = client.query(query, query_id=new_query_id(), analyst="race")
            except TiakiError as exc:  # losing the race is one of the two right outcomes
                assert status_code(exc) == EXHAUSTED  # noqa: PT017
                return None
            return answer.charged.amount

    with ThreadPoolExecutor(max_workers=16) as pool:
        charges = [c for c in pool.map(attempt, range(120)) if c is not None]
    status = node.budget()
    assert status.current.spent == sum(charges, Fraction(0))
    assert status.current.spent <= 3
    assert len(charges) == 42  # floor(3 / 0.07): every affordable query got through
    ledger_total = sum((e.charge for e in node.running.service.ledger.entries()), Fraction(0))
    assert ledger_total == status.lifetime_spent
