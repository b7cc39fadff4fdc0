"""Fuzzing the node's Query RPC with hand-made and garbage requests, over mutual TLS.

Every field of ``tiaki.v1.QueryRequest`` is drawn from valid, near-valid and
hostile values and sent straight to one real node with the generated stub (or
as raw bytes), bypassing every client-side check. Whatever arrives, the node
must either answer (and charge exactly what it says it charged, or nothing on
a replay) or refuse with one of the four typed status codes, a short message
with no stack trace or path in it, and nothing spent.
"""

from __future__ import annotations

import functools
import math
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from node.config import (
    CategoricalColumn,
    DateColumn,
    DerivedColumn,
    NumericColumn,
    Schema,
    load_config,
)
from node.importer import import_csv
from node.server import create_server
from node.service import open_service
from node.tls import server_credentials
from tests.conftest import TEMPLATE, FederationPki, write_node_config
from tests.integration.conftest import LiveNode
from tiaki.budget import BudgetStatus, parse_amount, read_amount
from tiaki.convert import budget_from_proto
from tiaki.v1 import node_pb2 as pb
from tiaki.v1 import node_pb2_grpc

TIMEOUT = 10.0
QUERY_METHOD = "/tiaki.v1.Node/Query"

OK = grpc.StatusCode.OK
ALLOWED_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
MAX_CELLS = 10_000  # the template's policy.max_cells
# A big budget so that valid queries always succeed and nothing runs out.
POLICY: dict[str, Any] = {
    "budget": {"limit": "1000000", "period": "none"},
    "per_query_max": "1",
}
# TIAKI_FUZZ_SCALE=10 runs ten times as many examples, for a deeper search.
SCALE = max(1, int(os.environ.get("TIAKI_FUZZ_SCALE", "1")))
FUZZ_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# ---------------------------------------------------------------- the schema, as public metadata

SCHEMA = Schema.model_validate(yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["schema"])
CATEGORIES: dict[str, tuple[str, ...]] = {
    name: spec.categories
    for name, spec in SCHEMA.columns.items()
    if isinstance(spec, CategoricalColumn)
}
NUMERIC_BOUNDS: dict[str, tuple[int, int]] = {}
for _name, _spec in SCHEMA.columns.items():
    if isinstance(_spec, NumericColumn | DerivedColumn):
        _bounds = SCHEMA.numeric_bounds(_name)
        if _bounds is not None:
            NUMERIC_BOUNDS[_name] = (int(_bounds[0]), int(_bounds[1]))
DATE_COLUMNS = tuple(n for n, s in SCHEMA.columns.items() if isinstance(s, DateColumn))
NEVER_QUERYABLE = tuple(n for n in SCHEMA.columns if not SCHEMA.is_queryable(n))
IDENTIFIER = SCHEMA.identifier
assert CATEGORIES and NUMERIC_BOUNDS and DATE_COLUMNS and NEVER_QUERYABLE
assert all(isinstance(SCHEMA.columns[n], NumericColumn | DerivedColumn) for n in NUMERIC_BOUNDS)
REAL_NAMES = (*CATEGORIES, *NUMERIC_BOUNDS, *DATE_COLUMNS)
ALL_NAMES = (*REAL_NAMES, *NEVER_QUERYABLE, IDENTIFIER)

# ---------------------------------------------------------------- hostile building blocks

NASTY_TEXT = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "\t\r\x0b\x0c",
    "\x7f\x1b[31m",
    "\u202eevil",
    "\u2028",
    "\ufeff",
    "\U0001f99c",
    "é" * 300,
    "'\"\\",
    "%s%n%d",
    "{}{0}",
    "../../etc/passwd",
    "'; DROP TABLE entries; --",
    "region",
    "client_id",
    "null",
    "NaN",
)


HUGE_LENGTHS = (129, 257, 1_000, 10_000, 65_537, 100_000)


def wild_text(max_size: int = 200, *, huge: bool = True) -> st.SearchStrategy[str]:
    """Empty, control characters, NULs, unicode, and (rarely) up to 100,000 characters."""
    common = st.one_of(
        st.sampled_from(NASTY_TEXT),
        st.text(st.characters(codec="utf-8"), max_size=max_size),
        st.text(st.characters(codec="utf-8", max_codepoint=0x7F), max_size=max_size),
    )
    if not huge:
        return common
    return st.one_of(
        common,
        common,
        common,
        st.sampled_from(HUGE_LENGTHS).map(lambda n: "q" * n),
        st.sampled_from(HUGE_LENGTHS).map(lambda n: ("\x00é\U0001f99c" * n)[:n]),
    )


NASTY_FLOATS = (
    float("nan"),
    -float("nan"),
    float("inf"),
    -float("inf"),
    -0.0,
    0.0,
    5e-324,
    -5e-324,
    1e308,
    -1e308,
    1.7976931348623157e308,
    2.0**53 + 1,
    2.0**63,
    -(2.0**63),
    0.5,
    1e15,
)


def wild_float() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(NASTY_FLOATS), st.floats())


COST_TEXTS = (
    "",
    "0",
    "-1",
    "-0",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e999",
    "1e-999",
    "1e-30",
    "1E-31",
    "0.1",
    "0.5",
    "1",
    "1.0",
    "1.5",
    "1000000",
    "1/3",
    " 0.5 ",
    "0.5\x00",
    "0x1",
    "1_0",
    "٠.٥",
    "0." + "0" * 29 + "1",
    "0." + "0" * 40 + "1",
    "9" * 64,
    "9" * 10_000,
    "0." + "1" * 10_000,
)


def wild_cost() -> st.SearchStrategy[pb.PrivacyCost]:
    text = st.one_of(st.sampled_from(COST_TEXTS), wild_text(40))
    return st.one_of(
        st.builds(lambda e: pb.PrivacyCost(epsilon=e), text),
        st.builds(lambda r: pb.PrivacyCost(rho=r), text),
        st.builds(lambda e, r: pb.PrivacyCost(epsilon=e, rho=r), text, text),
    )


DATE_TEXTS = (
    "",
    "2020-02-30",
    "2020-13-01",
    "0000-01-01",
    "0001-01-01",
    "9999-12-31",
    "10000-01-01",
    "2020-1-1",
    "20200101",
    "2020-W01-1",
    "2020-01-01T00:00:00",
    "２０２０-０１-０１",
    "yesterday",
    "-2020-01-01",
)


def iso_dates() -> st.SearchStrategy[str]:
    return st.dates(date(2010, 1, 1), date(2035, 12, 31)).map(date.isoformat)


def wild_date(*, huge: bool = True) -> st.SearchStrategy[str]:
    return st.one_of(iso_dates(), st.sampled_from(DATE_TEXTS), wild_text(30, huge=huge))


def wild_column(*, huge: bool = True) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ALL_NAMES), wild_text(150, huge=huge))


def wild_values(*, huge: bool) -> st.SearchStrategy[list[str]]:
    some_categories = st.sampled_from([c for cats in CATEGORIES.values() for c in cats])
    common = st.lists(st.one_of(some_categories, wild_text(60, huge=False)), max_size=20)
    if not huge:
        return common
    return st.one_of(
        common,
        common,
        common,
        st.sampled_from((999, 1000, 1001, 3000)).map(lambda n: [f"v{i}" for i in range(n)]),
        st.sampled_from((1000, 1001, 2000)).map(lambda n: ["auckland"] * n),
        st.sampled_from((256, 257, 300)).map(lambda n: ["region" + "x" * n]),
    )


@st.composite
def wild_filter(draw: st.DrawFn, *, huge: bool = True) -> pb.Filter:
    flt = pb.Filter(column=draw(wild_column(huge=huge)))
    which = draw(st.sampled_from(("none", "in_set", "numeric_range", "date_range")))
    if which == "in_set":
        flt.in_set.values.extend(draw(wild_values(huge=huge)))
    elif which == "numeric_range":
        flt.numeric_range.SetInParent()
        low, high = draw(st.none() | wild_float()), draw(st.none() | wild_float())
        if low is not None:
            flt.numeric_range.min = low
        if high is not None:
            flt.numeric_range.max = high
    elif which == "date_range":
        flt.date_range.SetInParent()
        flt.date_range.start = draw(wild_date(huge=huge))
        flt.date_range.end = draw(wild_date(huge=huge))
    return flt


def wild_filters() -> st.SearchStrategy[list[pb.Filter]]:
    few = st.lists(wild_filter(), max_size=6)
    return st.one_of(
        few,
        few,
        few,
        st.lists(wild_filter(huge=False), min_size=30, max_size=200),
    )


def wild_bin_edges() -> st.SearchStrategy[list[float]]:
    return st.one_of(
        st.lists(wild_float(), max_size=40),
        st.lists(st.integers(-6000, 6000).map(float), max_size=40),
        st.lists(st.integers(-6000, 6000).map(float), max_size=40, unique=True).map(sorted),
        st.sampled_from((1000, 1001, 1002, 5000)).map(lambda n: [float(i) for i in range(n)]),
        st.sampled_from((2, 3, 1001)).map(lambda n: [float(-i) for i in range(n)]),
        st.integers(min_value=1, max_value=1000).map(
            lambda n: [*(float(i) for i in range(n)), float("nan")]
        ),
        st.sampled_from(
            (
                [-0.0, 0.0],
                [0.0, -0.0],
                [0.0, 5e-324],
                [-1e308, 1e308],
                [-1.7976931348623157e308, 0.0, 1.7976931348623157e308],
                [float("-inf"), 0.0, float("inf")],
                [0.0, 0.0],
                [1.0],
                [],
            )
        ),
    )


WILD_KIND = st.one_of(
    st.sampled_from(list(pb.QueryKind.values())),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)


def _set_bounds(msg: pb.QueryRequest, bounds: tuple[float, float] | None) -> None:
    if bounds is None:
        msg.ClearField("bounds")
    else:
        msg.bounds.CopyFrom(pb.Bounds(lower=bounds[0], upper=bounds[1]))


def _replace_list(field: Any, items: list[Any]) -> None:
    del field[:]
    field.extend(items)


WILD_FIELDS: dict[str, Callable[[st.DrawFn, pb.QueryRequest], None]] = {
    "query_id": lambda d, m: setattr(m, "query_id", d(wild_text())),
    "analyst": lambda d, m: setattr(m, "analyst", d(wild_text())),
    "kind": lambda d, m: setattr(m, "kind", d(WILD_KIND)),
    "column": lambda d, m: setattr(m, "column", d(wild_column())),
    "bounds": lambda d, m: _set_bounds(m, d(st.none() | st.tuples(wild_float(), wild_float()))),
    "filters": lambda d, m: _replace_list(m.filters, d(wild_filters())),
    "group_by": lambda d, m: _replace_list(
        m.group_by, d(st.lists(st.one_of(st.sampled_from(ALL_NAMES), wild_text(60)), max_size=6))
    ),
    "condition": lambda d, m: _replace_list(m.condition, d(wild_filters())),
    "bin_edges": lambda d, m: _replace_list(m.bin_edges, d(wild_bin_edges())),
    "cost": lambda d, m: m.cost.CopyFrom(d(wild_cost())),
}

# ---------------------------------------------------------------- near-valid requests

FRESH = "<a fresh query id>"
ID_POOL = tuple(f"fuzz-reused-{i}" for i in range(4))
VALID_EPSILONS = ("0.01", "0.1", "0.25", "0.5", "1", "0.000001", "0." + "0" * 29 + "1", "0.3333")


@st.composite
def valid_filter(draw: st.DrawFn) -> pb.Filter:
    kind = draw(st.sampled_from(("categorical", "numeric", "date")))
    if kind == "categorical":
        column = draw(st.sampled_from(sorted(CATEGORIES)))
        values = draw(st.lists(st.sampled_from(CATEGORIES[column]), min_size=1, unique=True))
        return pb.Filter(column=column, in_set=pb.ValueSet(values=values))
    if kind == "numeric":
        column = draw(st.sampled_from(sorted(NUMERIC_BOUNDS)))
        lo, hi = NUMERIC_BOUNDS[column]
        ends = sorted(draw(st.lists(st.integers(lo - 2, hi + 2), min_size=2, max_size=2)))
        rng = pb.NumericRange()
        which = draw(st.sampled_from(("min", "max", "both")))
        if which in ("min", "both"):
            rng.min = ends[0]
        if which in ("max", "both"):
            rng.max = ends[1]
        return pb.Filter(column=column, numeric_range=rng)
    column = draw(st.sampled_from(DATE_COLUMNS))
    start = draw(st.dates(date(2014, 1, 1), date(2031, 12, 31)))
    end = start + timedelta(days=draw(st.integers(0, 4000)))
    which = draw(st.sampled_from(("start", "end", "both")))
    return pb.Filter(
        column=column,
        date_range=pb.DateRange(
            start=start.isoformat() if which != "end" else "",
            end=end.isoformat() if which != "start" else "",
        ),
    )


@st.composite
def valid_request(draw: st.DrawFn) -> pb.QueryRequest:
    """A request the node should answer (the fuzz then spoils some of its fields)."""
    kind = draw(st.sampled_from((pb.COUNT, pb.COUNT_CLIENTS, pb.SUM, pb.MEAN, pb.PROPORTION)))
    kind = draw(st.sampled_from((kind, pb.HISTOGRAM)))
    msg = pb.QueryRequest(
        query_id=FRESH,
        analyst=draw(st.sampled_from(("ana", "Ana Tūhoe", "analyst 7"))),
        kind=kind,
        filters=draw(st.lists(valid_filter(), max_size=4)),
        group_by=draw(st.lists(st.sampled_from(sorted(CATEGORIES)), unique=True, max_size=3)),
        cost=pb.PrivacyCost(epsilon=draw(st.sampled_from(VALID_EPSILONS))),
    )
    if kind in (pb.SUM, pb.MEAN, pb.HISTOGRAM):
        msg.column = draw(st.sampled_from(sorted(NUMERIC_BOUNDS)))
        lo, hi = NUMERIC_BOUNDS[msg.column]
        if kind != pb.HISTOGRAM and draw(st.booleans()):
            ends = draw(st.lists(st.integers(lo, hi), min_size=2, max_size=2, unique=True))
            _set_bounds(msg, (float(min(ends)), float(max(ends))))
        if kind == pb.HISTOGRAM:
            groups = math.prod(len(CATEGORIES[name]) for name in msg.group_by)
            most = min(25, MAX_CELLS // groups + 1)  # the node computes at most MAX_CELLS cells
            edges = draw(
                st.lists(st.integers(lo - 5, hi + 5), min_size=2, max_size=most, unique=True)
            )
            msg.bin_edges.extend(float(e) for e in sorted(edges))
    if kind == pb.PROPORTION:
        msg.condition.extend(draw(st.lists(valid_filter(), min_size=1, max_size=3)))
    return msg


@st.composite
def fuzzed_request(draw: st.DrawFn) -> pb.QueryRequest:
    """A valid request with any subset of its fields (possibly all) replaced by hostile ones."""
    msg = draw(valid_request())
    for name in draw(st.sets(st.sampled_from(sorted(WILD_FIELDS)))):
        WILD_FIELDS[name](draw, msg)
    if msg.query_id == FRESH:
        msg.query_id = draw(st.sampled_from((FRESH, FRESH, FRESH, *ID_POOL)))
    return msg


def with_fresh_id(msg: pb.QueryRequest) -> pb.QueryRequest:
    if msg.query_id == FRESH:
        msg.query_id = f"fuzz-{uuid.uuid4()}"
    return msg


# ---------------------------------------------------------------- the node


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, pki: FederationPki, synth_csv: Path
) -> Iterator[LiveNode]:
    path = write_node_config(
        tmp_path_factory.mktemp("fuzz-node"), node_id="ngo-fuzz", policy=POLICY, pki=pki
    )
    config = load_config(path)
    assert config.server.tls is not None
    assert config.policy.max_cells == MAX_CELLS
    report = import_csv(config, synth_csv)
    assert report.committed, report.bad_rows[:5]
    service = open_service(config)
    running = create_server(service, "127.0.0.1:0", server_credentials(config.server.tls))
    try:
        yield LiveNode(config, running, f"127.0.0.1:{running.port}", pki)
    finally:
        running.stop(grace=1)
        service.ledger.close()


@pytest.fixture(scope="module")
def channel(node: LiveNode) -> Iterator[grpc.Channel]:
    chan = node.channel()
    try:
        yield chan
    finally:
        chan.close()


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Any:
    return node_pb2_grpc.NodeStub(channel)


@pytest.fixture(scope="module")
def raw_query(channel: grpc.Channel) -> Callable[..., bytes]:
    method: Callable[..., bytes] = channel.unary_unary(
        QUERY_METHOD,
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    return method


# ---------------------------------------------------------------- the property


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    response: pb.QueryResponse | None


def send(stub: Any, request: pb.QueryRequest) -> Outcome:
    try:
        response = stub.Query(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", None)
    assert isinstance(response, pb.QueryResponse)
    return Outcome(OK, "", response)


def send_raw(raw_query: Callable[..., bytes], payload: bytes) -> Outcome:
    try:
        body = raw_query(payload, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", None)
    assert isinstance(body, bytes)
    return Outcome(OK, "", pb.QueryResponse.FromString(body))


@dataclass(frozen=True)
class LedgerState:
    entries: int
    budget: BudgetStatus


def ledger_state(node: LiveNode) -> LedgerState:
    return LedgerState(len(node.running.service.ledger.entries()), node.budget())


def assert_clean_details(outcome: Outcome) -> None:
    details = outcome.details
    assert "Traceback" not in details, details
    assert "/work" not in details and '.py"' not in details and ".py:" not in details, details
    assert len(details) < 1000, (outcome.code, len(details), details[:200])


def check(node: LiveNode, request: pb.QueryRequest | None, run: Callable[[], Outcome]) -> Outcome:
    """Run one call and hold the node to the contract; ``request`` is None if undecodable."""
    before = ledger_state(node)
    outcome = run()
    after = ledger_state(node)
    if currently_in_test_context():
        event(f"{outcome.code.name}: {outcome.details.split(chr(39))[0][:40]}")
    if outcome.code != OK:
        assert outcome.code in ALLOWED_REFUSALS, (outcome.code, outcome.details[:300])
        # With a budget this size and one call at a time, every refusal is the node's own
        # word: none may be the transport choking on what the node sent back.
        assert "Stream removed" not in outcome.details, outcome.details
        assert_clean_details(outcome)
        assert after == before, "a refused query changed the ledger"
        return outcome

    response = outcome.response
    assert response is not None and request is not None
    assert response.query_id == request.query_id
    assert response.charged.epsilon and not response.charged.rho
    charged = read_amount(response.charged.epsilon)
    requested = parse_amount(request.cost.epsilon)
    assert charged == requested, "a node charges exactly what was asked"
    assert response.cells, "an answer has at least one cell"
    if response.replayed:
        assert after == before, "a replay was charged"
    else:
        assert after.entries == before.entries + 1
        assert after.budget.lifetime_spent - before.budget.lifetime_spent == charged
        assert after.budget.current.spent - before.budget.current.spent == charged
        entry = node.running.service.ledger.entries()[-1]
        assert (entry.query_id, entry.charge) == (request.query_id, charged)
    assert response.HasField("budget")
    assert budget_from_proto(response.budget) == after.budget
    return outcome


# ---------------------------------------------------------------- the tests


@settings(FUZZ_SETTINGS, max_examples=300 * SCALE)
@given(request=fuzzed_request())
def test_any_request_is_answered_and_charged_exactly_or_refused_for_free(
    node: LiveNode, stub: Any, request: pb.QueryRequest
) -> None:
    request = with_fresh_id(request)
    check(node, request, lambda: send(stub, request))


@settings(FUZZ_SETTINGS, max_examples=40 * SCALE)
@given(first=valid_request(), other=fuzzed_request())
def test_a_reused_id_replays_for_free_or_is_refused(
    node: LiveNode, stub: Any, first: pb.QueryRequest, other: pb.QueryRequest
) -> None:
    first.query_id = f"reuse-{uuid.uuid4()}"
    answered = check(node, first, lambda: send(stub, first))
    assert answered.code == OK, answered.details
    assert answered.response is not None and not answered.response.replayed

    again = check(node, first, lambda: send(stub, first))
    assert again.code == OK and again.response is not None
    assert again.response.replayed
    assert again.response.cells == answered.response.cells  # the same noise, not fresh noise
    assert again.response.charged == answered.response.charged

    other.query_id = first.query_id
    outcome = check(node, other, lambda: send(stub, other))
    if outcome.code == OK:
        assert outcome.response is not None and outcome.response.replayed
        assert outcome.response.cells == answered.response.cells


def _decodes(payload: bytes) -> pb.QueryRequest | None:
    try:
        return pb.QueryRequest.FromString(payload)
    except Exception:
        return None


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    """A valid request's bytes, truncated, with bytes flipped, inserted or appended."""
    data = bytearray(with_fresh_id(draw(valid_request())).SerializeToString())
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("flip", "insert", "truncate", "append")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=8))
        elif op == "truncate":
            del data[at:]
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


def raw_payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=512),
        mutated_bytes(),
        st.sampled_from((b"", b"\x00", b"\xff" * 64, b"\x08" + b"\xff" * 10, b"\x0a\xff\xff")),
    )


@settings(FUZZ_SETTINGS, max_examples=100 * SCALE)
@given(payload=raw_payloads())
def test_raw_bytes_that_decode_obey_the_same_contract(
    node: LiveNode, raw_query: Callable[..., bytes], payload: bytes
) -> None:
    request = _decodes(payload)
    if request is None:
        return  # covered by the test below
    check(node, request, lambda: send_raw(raw_query, payload))


@settings(FUZZ_SETTINGS, max_examples=30 * SCALE)
@given(payload=raw_payloads())
def test_raw_bytes_that_do_not_decode_are_refused_as_invalid(
    node: LiveNode, raw_query: Callable[..., bytes], payload: bytes
) -> None:
    if _decodes(payload) is not None:
        return
    outcome = check(node, None, lambda: send_raw(raw_query, payload))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT


def test_refusals_of_hand_picked_hostile_requests(node: LiveNode, stub: Any) -> None:
    """A few fixed cases, so the worst inputs are always tried whatever the fuzzer draws."""
    cases = [
        pb.QueryRequest(query_id="x" * 100_000, analyst="a", kind=pb.COUNT),
        pb.QueryRequest(query_id="a\x00b", kind=pb.COUNT, cost=pb.PrivacyCost(epsilon="0.1")),
        pb.QueryRequest(query_id="ok", analyst="\x00", cost=pb.PrivacyCost(epsilon="0.1")),
        pb.QueryRequest(query_id="ok", kind=-1, cost=pb.PrivacyCost(epsilon="0.1")),  # type: ignore[arg-type]
        pb.QueryRequest(query_id="ok", kind=pb.COUNT, cost=pb.PrivacyCost(epsilon="9" * 10_000)),
        pb.QueryRequest(
            query_id="ok",
            kind=pb.HISTOGRAM,
            column="sessions",
            bin_edges=[float(i) for i in range(5000)],
            cost=pb.PrivacyCost(epsilon="0.1"),
        ),
        pb.QueryRequest(
            query_id="ok",
            kind=pb.COUNT,
            filters=[pb.Filter(column="region")] * 200,
            cost=pb.PrivacyCost(epsilon="0.1"),
        ),
        pb.QueryRequest(
            query_id="ok",
            kind=pb.COUNT,
            group_by=[IDENTIFIER],
            cost=pb.PrivacyCost(epsilon="0.1"),
        ),
    ]
    for request in cases:
        outcome = check(node, request, functools.partial(send, stub, request))
        assert outcome.code != OK, request


@pytest.mark.parametrize("length", [1_000, 5_000, 60_000])
@pytest.mark.parametrize("kind", [pb.COUNT, pb.COUNT_CLIENTS], ids=["count", "count_clients"])
def test_a_long_column_on_a_count_is_refused_briefly(
    node: LiveNode, stub: Any, kind: int, length: int
) -> None:
    request = pb.QueryRequest(
        query_id=f"long-{uuid.uuid4()}",
        analyst="a",
        kind=kind,  # type: ignore[arg-type]
        column="q" * length,
        cost=pb.PrivacyCost(epsilon="0.1"),
    )
    outcome = check(node, request, functools.partial(send, stub, request))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("length", [1_000, 10_000])
@pytest.mark.parametrize("where", ["filters-start", "filters-end", "condition-start"])
def test_a_long_column_on_a_bad_date_range_is_refused_briefly(
    node: LiveNode, stub: Any, where: str, length: int
) -> None:
    field, end = where.split("-")
    dates = pb.DateRange(start="x") if end == "start" else pb.DateRange(end="2020-13-01")
    flt = pb.Filter(column="q" * length, date_range=dates)
    request = pb.QueryRequest(
        query_id=f"date-{uuid.uuid4()}",
        analyst="a",
        kind=pb.COUNT if field == "filters" else pb.PROPORTION,
        cost=pb.PrivacyCost(epsilon="0.1"),
    )
    getattr(request, field).append(flt)
    outcome = check(node, request, functools.partial(send, stub, request))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
