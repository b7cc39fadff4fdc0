"""Value types of the contract: exact amounts, self-validating queries, conversions."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiaki.answer import Answer, Cell, Component
from tiaki.budget import (
    AmountError,
    PrivacyDefinition,
    display_amount,
    format_amount,
    parse_amount,
    read_amount,
)
from tiaki.convert import answer_from_proto, answer_to_proto, query_from_proto, query_to_proto
from tiaki.errors import InvalidQueryError
from tiaki.query import Bounds, DateRange, InSet, NumericRange, PrivacyCost, Query, QueryKind
from tiaki.v1 import node_pb2 as pb

PURE = PrivacyDefinition.PURE


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "-1",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "",
        "abc",
        "1e999",
        "1/2",
        "0." + "0" * 40 + "1",
        "9" * 70,
    ],
)
def test_bad_amounts_are_refused(text: str) -> None:
    with pytest.raises(AmountError):
        parse_amount(text)


def test_amounts_are_exact() -> None:
    assert parse_amount("0.1") == Fraction(1, 10)
    assert sum([parse_amount("0.1")] * 10, Fraction(0)) == 1


@given(st.integers(min_value=-(10**12), max_value=10**12), st.integers(0, 60), st.integers(0, 30))
def test_format_amount_is_exact_for_2a5b(num: int, a: int, b: int) -> None:
    value = Fraction(num, 2**a * 5**b)
    assert read_amount(format_amount(value)) == value


@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False))
def test_opendp_floats_format_exactly(x: float) -> None:
    assert read_amount(format_amount(Fraction(x))) == Fraction(x)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (Fraction(0), "0"),
        (Fraction("0.29999999999999998889776975374843459576368331909179688"), "0.3"),
        (Fraction(1, 3), "0.333333"),
        (Fraction(5, 2), "2.5"),
        (Fraction(-5, 2), "-2.5"),
        (Fraction(10), "10"),
        (Fraction(100_000), "100000"),  # whole numbers keep their zeros
        (Fraction(10**6), "1000000"),
        (Fraction(123_456_789, 1000), "123457"),
        (Fraction(1, 10**30), "0.000000000000000000000000000001"),  # no float digits
        (Fraction(2, 3 * 10**8), "0.00000000666667"),
    ],
)
def test_display_amount_rounds_exactly(value: Fraction, shown: str) -> None:
    assert display_amount(value) == shown


def test_format_amount_never_rounds_other_fractions() -> None:
    assert format_amount(Fraction(1, 3)) == "1/3"


def cost(text: str = "0.5") -> PrivacyCost:
    return PrivacyCost.parse(PURE, text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": QueryKind.SUM}, "numeric column"),
        ({"kind": QueryKind.COUNT, "column": "x"}, "takes no column"),
        ({"kind": QueryKind.COUNT, "group_by": ("a", "b", "c", "d")}, "at most 3"),
        ({"kind": QueryKind.COUNT, "group_by": ("a", "a")}, "twice"),
        ({"kind": QueryKind.PROPORTION}, "condition"),
        ({"kind": QueryKind.HISTOGRAM, "column": "x", "bin_edges": (1.0,)}, "two bin edges"),
        ({"kind": QueryKind.HISTOGRAM, "column": "x", "bin_edges": (2.0, 1.0)}, "increasing"),
        ({"kind": QueryKind.HISTOGRAM, "column": "x", "bin_edges": (0.0, float("inf"))}, "finite"),
        ({"kind": QueryKind.COUNT, "bounds": Bounds(0, 1)}, "bounds apply"),
    ],
)
def test_malformed_queries_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidQueryError, match=message):
        Query(cost=cost(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("lower", "upper"), [(1, 1), (2, 1), (float("nan"), 1), (0, float("inf"))])
def test_bad_bounds(lower: float, upper: float) -> None:
    with pytest.raises(InvalidQueryError):
        Bounds(lower, upper)


def test_filters_validate_themselves() -> None:
    with pytest.raises(InvalidQueryError):
        NumericRange("x", 5, 1)
    with pytest.raises(InvalidQueryError):
        DateRange("d", date(2024, 2, 1), date(2024, 1, 1))
    with pytest.raises(InvalidQueryError):
        InSet("a", ())


def test_canonical_text_ignores_filter_order_and_set_order() -> None:
    a = Query(QueryKind.COUNT, cost(), filters=(InSet("r", ("x", "y")), NumericRange("n", 1, 2)))
    b = Query(QueryKind.COUNT, cost(), filters=(NumericRange("n", 1, 2), InSet("r", ("y", "x"))))
    assert a.canonical() == b.canonical()
    c = Query(QueryKind.COUNT, cost("0.25"), filters=a.filters)
    assert c.canonical() != a.canonical()


def test_query_round_trips_through_proto() -> None:
    query = Query(
        QueryKind.MEAN,
        cost("0.3"),
        column="x",
        bounds=Bounds(-1, 4),
        filters=(
            InSet("r", ("a",)),
            DateRange("d", date(2024, 1, 1), None),
            NumericRange("n", max=3),
        ),
        group_by=("r",),
    )
    qid, analyst, back = query_from_proto(query_to_proto(query, query_id="q1", analyst="ana"))
    assert (qid, analyst) == ("q1", "ana")
    assert back == query


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: setattr(m, "query_id", ""), "query id"),
        (lambda m: setattr(m, "query_id", "x" * 500), "query id"),
        (lambda m: setattr(m, "kind", 99), "unknown query kind"),
        (lambda m: m.cost.Clear(), "no privacy cost"),
        (lambda m: setattr(m.cost, "rho", "0.1"), "not both"),
        (lambda m: m.filters.add(column="r"), "no condition"),
        (
            lambda m: m.filters.add(column="d").date_range.CopyFrom(
                pb.DateRange(start="2024-13-01")
            ),
            "not a date",
        ),
    ],
)
def test_bad_requests_decode_to_invalid_query(mutate: object, message: str) -> None:
    msg = query_to_proto(Query(QueryKind.COUNT, cost()), query_id="q", analyst="a")
    mutate(msg)  # type: ignore[operator]
    with pytest.raises(InvalidQueryError, match=message):
        query_from_proto(msg)


def test_answer_round_trips() -> None:
    answer = Answer(
        query_id="q",
        node_id="n",
        canonical_query="{}",
        group_by=("r",),
        cells=(
            Cell(("a",), "", 3.0, 1.5, (Component("count", 3.0, "discrete_laplace", 2.0, 6.4),)),
        ),
        charged=PrivacyCost(PURE, Fraction(0.1)),
        dataset_version="v",
        replayed=False,
        budget=None,
    )
    assert answer_from_proto(answer_to_proto(answer)) == answer
