"""Sensitivity under the privacy unit (one client with all of their records).

DESIGN.md, "Privacy semantics": every aggregate's sensitivity is derived from
the privacy unit and checked by a property test that removes each client in
turn from random data and compares the change with the claimed bound. This
file does that for every query kind, plus:

- tightness: one deterministic dataset per kind where the bound is attained;
- an oracle: ``evaluate()`` against slow, obviously-correct Python loops;
- the hand-off: the sensitivity and budget share that reach OpenDP are the
  claimed ones, and the charge is OpenDP's own privacy map;
- a self-test: the same checker, fed a bound one smaller than claimed, finds
  a counterexample on random data (so the property test can fail).

Changes are compared exactly, as Python integers.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import opendp.prelude as dp
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import node.answering as answering
import node.mechanisms as mechanisms
from node.config import Policy, Schema
from node.dataset import MISSING_DATE, Dataset
from node.engine import ExactAggregate, QueryPlan, evaluate, plan
from tiaki.budget import PrivacyDefinition
from tiaki.errors import InvalidQueryError
from tiaki.query import (
    Bounds,
    DateRange,
    Filter,
    InSet,
    NumericRange,
    PrivacyCost,
    Query,
    QueryKind,
)

PURE = PrivacyDefinition.PURE
ZCDP = PrivacyDefinition.ZCDP
EPOCH = date(1970, 1, 1)

A_CATS = ("a0", "a1", "a2")
B_CATS = ("b0", "b1")
D_MIN, D_MAX = date(2020, 1, 1), date(2020, 12, 31)
E_MIN, E_MAX = date(2019, 7, 1), date(2020, 6, 30)

SCHEMA = Schema.model_validate(
    {
        "identifier": "cid",
        "columns": {
            "name": {"type": "text"},
            "a": {"type": "categorical", "categories": list(A_CATS)},
            "b": {"type": "categorical", "categories": list(B_CATS)},
            "x": {"type": "integer", "bounds": [-3, 7], "required": False},
            "w": {"type": "integer", "bounds": [0, 4], "required": False},
            "y": {"type": "float", "bounds": [0, 2.5], "required": False},
            "d": {"type": "date", "min": D_MIN, "max": D_MAX, "required": False},
            "e": {"type": "date", "min": E_MIN, "max": E_MAX, "required": False},
            "x_plus_y": {"type": "derived", "expression": "x + y"},
            "x_minus_w": {"type": "derived", "expression": "x - w"},
            "gap": {"type": "derived", "expression": "d - e"},
        },
    }
)
CATEGORIES = {"a": A_CATS, "b": B_CATS}
INT_COLUMNS = ("x", "x_minus_w", "gap")  # integer, derived integer, derived from dates
FLOAT_COLUMNS = ("y", "x_plus_y")  # float, derived float
NUMERIC_COLUMNS = INT_COLUMNS + FLOAT_COLUMNS
COST = Fraction(1, 2)

# (kind, numeric column type) — every kind, sums/means/histograms on both types.
CASES = [
    (QueryKind.COUNT, None),
    (QueryKind.COUNT_CLIENTS, None),
    (QueryKind.PROPORTION, None),
    (QueryKind.SUM, "integer"),
    (QueryKind.SUM, "float"),
    (QueryKind.MEAN, "integer"),
    (QueryKind.MEAN, "float"),
    (QueryKind.HISTOGRAM, "integer"),
    (QueryKind.HISTOGRAM, "float"),
]
CASE_IDS = [f"{kind.value}-{ctype}" if ctype else kind.value for kind, ctype in CASES]


def make_policy(k: int, definition: PrivacyDefinition = PURE) -> Policy:
    return Policy.model_validate(
        {
            "privacy_definition": definition.value,
            "budget": {"limit": "10"},
            "per_query_max": "1",
            "max_records_per_client": k,
            "max_cells": 1000,
        }
    )


def day(value: date) -> int:
    return (value - EPOCH).days


# ---------------------------------------------------------------- datasets


def derive(
    numeric: dict[str, npt.NDArray[np.float64]], dates: dict[str, npt.NDArray[np.int32]]
) -> None:
    """Derived columns as the store computes them at load: NaN where a side is missing."""
    numeric["x_plus_y"] = numeric["x"] + numeric["y"]
    numeric["x_minus_w"] = numeric["x"] - numeric["w"]
    d, e = dates["d"], dates["e"]
    missing = (d == MISSING_DATE) | (e == MISSING_DATE)
    numeric["gap"] = np.where(missing, np.nan, d.astype(np.float64) - e.astype(np.float64))


@dataclass(frozen=True)
class Row:
    """One record as plain Python values, for building datasets and for the oracle."""

    client: int
    a: int
    b: int
    x: float  # NaN = missing
    w: float
    y: float
    d: int  # days since 1970, MISSING_DATE = missing
    e: int


def build(k: int, rows: Sequence[Row]) -> Dataset:
    """A Dataset from rows already sorted by client, clients 0..C-1 contiguous."""
    numeric = {
        name: np.array([getattr(r, name) for r in rows], dtype=np.float64)
        for name in ("x", "w", "y")
    }
    dates = {name: np.array([getattr(r, name) for r in rows], dtype=np.int32) for name in "de"}
    derive(numeric, dates)
    return Dataset(
        version="t",
        max_records_per_client=k,
        client=np.array([r.client for r in rows], dtype=np.int64),
        categorical={
            name: np.array([getattr(r, name) for r in rows], dtype=np.int16) for name in "ab"
        },
        numeric=numeric,
        dates=dates,
    )


def rows_of(ds: Dataset) -> list[Row]:
    return [
        Row(
            client=int(ds.client[i]),
            a=int(ds.categorical["a"][i]),
            b=int(ds.categorical["b"][i]),
            x=float(ds.numeric["x"][i]),
            w=float(ds.numeric["w"][i]),
            y=float(ds.numeric["y"][i]),
            d=int(ds.dates["d"][i]),
            e=int(ds.dates["e"][i]),
        )
        for i in range(ds.n_records)
    ]


def without_client(ds: Dataset, c: int) -> Dataset:
    """The neighbour with client ``c`` and all their records removed, clients renumbered."""
    keep = ds.client != c
    client = ds.client[keep]
    client = np.where(client > c, client - 1, client).astype(np.int64)
    numeric = {n: v[keep] for n, v in ds.numeric.items()}
    dates = {n: v[keep] for n, v in ds.dates.items()}
    return Dataset(
        version=ds.version,
        max_records_per_client=ds.max_records_per_client,
        client=client,
        categorical={n: v[keep] for n, v in ds.categorical.items()},
        numeric=numeric,
        dates=dates,
    )


NAN = math.nan
DAY_LO, DAY_HI = day(date(2019, 1, 1)), day(date(2021, 6, 30))  # beyond both date columns
MISSING = int(MISSING_DATE)


def sometimes_missing(values: st.SearchStrategy[Any], missing: Any) -> st.SearchStrategy[Any]:
    """``values``, or ``missing`` about one time in eight (often enough, not so often
    that most records drop out of sums and histograms)."""
    return st.tuples(st.integers(0, 7), values).map(lambda t: missing if t[0] == 0 else t[1])


maybe_x = sometimes_missing(st.integers(-6, 10).map(float), NAN)  # x bounds [-3, 7]
maybe_w = sometimes_missing(st.integers(-2, 6).map(float), NAN)  # w bounds [0, 4]
maybe_y = sometimes_missing(  # y bounds [0, 2.5]
    st.one_of(
        st.sampled_from([0.0, 2.5, 1.25, -0.0, 0.1, 2.4999999999999996]),
        st.floats(-1.0, 3.5, allow_nan=False),
    ),
    NAN,
)
maybe_day = sometimes_missing(st.integers(DAY_LO, DAY_HI), MISSING)


@st.composite
def records(draw: st.DrawFn, client: int) -> Row:
    return Row(
        client=client,
        a=draw(st.integers(0, len(A_CATS) - 1)),
        b=draw(st.integers(0, len(B_CATS) - 1)),
        x=draw(maybe_x),
        w=draw(maybe_w),
        y=draw(maybe_y),
        d=draw(maybe_day),
        e=draw(maybe_day),
    )


@st.composite
def datasets(draw: st.DrawFn, k: int, max_clients: int = 6) -> Dataset:
    """Clients 0..C-1 with 1..k records each, sorted by client; missing and out-of-bounds values.

    A client's records often repeat one of their own (a typical episode), so
    clients that put all k records into one cell, the worst case, are common.
    """
    sizes = draw(st.lists(st.integers(1, k), max_size=max_clients))
    rows = []
    for c, size in enumerate(sizes):
        typical = draw(records(c))
        rows += [typical if draw(st.booleans()) else draw(records(c)) for _ in range(size)]
    return build(k, rows)


# ---------------------------------------------------------------- queries


def _range(column: str, lo: float, hi: float) -> st.SearchStrategy[Filter]:
    end = st.one_of(st.none(), st.floats(lo, hi, allow_nan=False))
    return (
        st.tuples(end, end)
        .filter(lambda t: t != (None, None))
        .map(lambda t: (t[0], t[1]) if None in t or t[0] <= t[1] else (t[1], t[0]))  # type: ignore[operator]
        .map(lambda t: NumericRange(column, t[0], t[1]))
    )


def _date_range(column: str) -> st.SearchStrategy[Filter]:
    end = st.one_of(st.none(), st.dates(date(2019, 1, 1), date(2021, 6, 30)))
    return (
        st.tuples(end, end)
        .filter(lambda t: t != (None, None))
        .map(lambda t: (t[0], t[1]) if None in t or t[0] <= t[1] else (t[1], t[0]))  # type: ignore[operator]
        .map(lambda t: DateRange(column, t[0], t[1]))
    )


def _in_set(column: str) -> st.SearchStrategy[Filter]:
    cats = CATEGORIES[column]
    return st.lists(st.sampled_from(cats), min_size=1, max_size=len(cats), unique=True).map(
        lambda vs: InSet(column, tuple(vs))
    )


filters: st.SearchStrategy[Filter] = st.one_of(
    _in_set("a"),
    _in_set("b"),
    _range("x", -5, 9),
    _range("y", -0.5, 3),
    _range("x_plus_y", -4, 10),
    _range("x_minus_w", -8, 8),
    _range("gap", -200, 600),
    _date_range("d"),
    _date_range("e"),
)


@st.composite
def narrower_bounds(draw: st.DrawFn, column: str) -> Bounds:
    bounds = SCHEMA.numeric_bounds(column)
    assert bounds is not None
    lo, hi = bounds
    if column in INT_COLUMNS:
        pair = draw(
            st.lists(st.integers(int(lo), int(hi)), min_size=2, max_size=2, unique=True).map(sorted)
        )
        return Bounds(float(pair[0]), float(pair[1]))
    # Floats on a 1/64 grid, arbitrary floats, and pairs a few fixed-point grid
    # steps (2**-20 here) apart, which plan() may refuse as finer than the grid.
    grid = st.one_of(
        st.sampled_from([lo, hi]),
        st.integers(0, int((hi - lo) * 64)).map(lambda v: lo + v / 64),
        st.floats(lo, hi, allow_nan=False),
    )
    first = draw(grid)
    second = draw(
        st.one_of(grid, st.integers(-4, 4).map(lambda n: min(hi, max(lo, first + n * 2.0**-21))))
    )
    vals = sorted((first, second))
    if vals[0] == vals[1]:
        vals = [lo, hi]
    return Bounds(vals[0], vals[1])


FLOAT_GRID_STEP = 2.0**-20  # y in [0, 2.5] and x_plus_y in [-3, 9.5] both get factor 2**20


def plan_or_refusal(query: Query, policy: Policy) -> QueryPlan | None:
    """plan(), or None when it refuses float bounds finer than the fixed-point grid.

    The refusal depends on the query only; it must come for bounds less than two
    grid steps wide and never for wider ones.
    """
    try:
        return plan(query, SCHEMA, policy)
    except InvalidQueryError as exc:  # a refusal is allowed here, and then checked
        assert query.bounds is not None and query.column in FLOAT_COLUMNS, exc  # noqa: PT017
        assert "resolution" in str(exc)  # noqa: PT017
        assert query.bounds.upper - query.bounds.lower < 2 * FLOAT_GRID_STEP
        return None


def column_for(ctype: str | None) -> st.SearchStrategy[str | None]:
    if ctype is None:
        return st.none()
    return st.sampled_from(INT_COLUMNS if ctype == "integer" else FLOAT_COLUMNS)


@st.composite
def queries(
    draw: st.DrawFn,
    kind: QueryKind,
    ctype: str | None,
    definition: PrivacyDefinition = PURE,
) -> Query:
    column = draw(column_for(ctype))
    bounds = None
    if kind in (QueryKind.SUM, QueryKind.MEAN) and column is not None:
        bounds = draw(st.one_of(st.none(), narrower_bounds(column)))
    condition: tuple[Filter, ...] = ()
    if kind is QueryKind.PROPORTION:
        condition = tuple(draw(st.lists(filters, min_size=1, max_size=2)))
    edges: tuple[float, ...] = ()
    if kind is QueryKind.HISTOGRAM:
        edge = st.one_of(
            st.integers(-8, 12).map(float), st.floats(-8, 12, allow_nan=False, width=32)
        )
        edges = tuple(sorted(draw(st.lists(edge, min_size=2, max_size=6, unique=True))))
    return Query(
        kind=kind,
        cost=PrivacyCost(definition, COST),
        column=column,
        bounds=bounds,
        filters=tuple(draw(st.lists(filters, max_size=2))),
        group_by=tuple(draw(st.lists(st.sampled_from(["a", "b"]), unique=True, max_size=2))),
        condition=condition,
        bin_edges=edges,
    )


# ---------------------------------------------------------------- the checker


def change(full: ExactAggregate, reduced: ExactAggregate) -> tuple[int, int]:
    """(L1, squared L2) of the change vector, as exact Python integers."""
    diff = [
        int(f) - int(r) for f, r in zip(full.values.tolist(), reduced.values.tolist(), strict=True)
    ]
    return sum(abs(v) for v in diff), sum(v * v for v in diff)


def claimed_l2_squared(agg: ExactAggregate) -> int:
    """The integer whose square root the float ``l2`` claims (k², m or (k·B)²).

    Every L2 bound in the engine is the square root of an integer. The float
    must be that root to within rounding, and never rounded below it: what
    OpenDP is told must be an upper bound, exactly.
    """
    squared = round(agg.l2**2)
    assert math.isclose(agg.l2**2, squared, rel_tol=1e-12, abs_tol=0), agg
    assert Fraction(agg.l2) ** 2 >= squared, f"{agg.name}: l2={agg.l2!r} is below √{squared}"
    return squared


def sensitivity_violations(
    plan_: QueryPlan, ds: Dataset, understate: int = 0
) -> list[tuple[str, int, str, int, int]]:
    """Remove each client in turn; list every (component, client, norm, change, claim) that breaks.

    ``understate`` lowers every claim by that much, to show the checker can fail.
    """
    full = evaluate(plan_, ds, SCHEMA)
    assert [a.name for a in full] == list(plan_.components)
    broken = []
    for c in range(ds.n_clients):
        reduced = evaluate(plan_, without_client(ds, c), SCHEMA)
        for f, r in zip(full, reduced, strict=True):
            # Sensitivity is public: it may not depend on the data.
            assert (f.name, f.l1, f.l2) == (r.name, r.l1, r.l2)
            assert f.values.shape == r.values.shape == (plan_.n_cells,)
            assert f.values.dtype == np.int64
            l1, l2sq = change(f, r)
            claim_l1 = f.l1 - understate
            claim_l2sq = claimed_l2_squared(f) - understate
            if l1 > claim_l1:
                broken.append((f.name, c, "L1", l1, claim_l1))
            if l2sq > claim_l2sq or (understate == 0 and Fraction(f.l2) ** 2 < l2sq):
                broken.append((f.name, c, "L2^2", l2sq, claim_l2sq))
    return broken


# ---------------------------------------------------------------- property tests


@pytest.mark.parametrize(("kind", "ctype"), CASES, ids=CASE_IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_removing_any_client_moves_each_aggregate_within_its_claimed_sensitivity(
    kind: QueryKind, ctype: str | None, data: st.DataObject
) -> None:
    k = data.draw(st.integers(1, 4), label="k")
    ds = data.draw(datasets(k), label="dataset")
    query = data.draw(queries(kind, ctype), label="query")
    plan_ = plan_or_refusal(query, make_policy(k))
    if plan_ is None:
        return
    for agg in evaluate(plan_, ds, SCHEMA):
        assert agg.l1 > 0 and agg.l2 > 0, agg  # a bound OpenDP will accept
    assert sensitivity_violations(plan_, ds) == []


@pytest.mark.parametrize(
    ("kind", "ctype"),
    [(QueryKind.COUNT, None), (QueryKind.COUNT_CLIENTS, None), (QueryKind.MEAN, "integer")],
    ids=["count", "count_clients", "mean-integer"],
)
def test_checker_finds_a_counterexample_to_an_understated_bound(
    kind: QueryKind, ctype: str | None
) -> None:
    """The property test can fail: claims lowered by one are broken on random data."""

    def broken(case: tuple[int, Dataset, Query]) -> bool:
        k, ds, query = case
        return bool(sensitivity_violations(plan(query, SCHEMA, make_policy(k)), ds, understate=1))

    cases = st.integers(1, 4).flatmap(
        lambda k: st.tuples(st.just(k), datasets(k), queries(kind, ctype))
    )
    k, ds, query = find(
        cases,
        broken,
        settings=settings(max_examples=2000, deadline=None, phases=[Phase.generate], database=None),
    )
    assert sensitivity_violations(plan(query, SCHEMA, make_policy(k)), ds, understate=1)


# ---------------------------------------------------------------- tightness


def rec(client: int, a: int = 0, b: int = 0, x: float = 1.0, y: float = 1.0) -> Row:
    return Row(client, a, b, x, 1.0, y, day(date(2020, 6, 1)), day(date(2020, 1, 1)))


TIGHT: list[tuple[str, Query, list[Row]]] = [
    # All k=3 records of client 0 in one cell: the count moves by k.
    ("count", Query(QueryKind.COUNT, PrivacyCost(PURE, COST), group_by=("a",)), [rec(0)] * 3),
    # Client 0 touches three cells once each: (1, 1, 1), L1 = m = 3, L2² = 3.
    (
        "count_clients",
        Query(QueryKind.COUNT_CLIENTS, PrivacyCost(PURE, COST), group_by=("a",)),
        [rec(0, a=0), rec(0, a=1), rec(0, a=2)],
    ),
    (
        "proportion",
        Query(
            QueryKind.PROPORTION,
            PrivacyCost(PURE, COST),
            group_by=("a",),
            condition=(NumericRange("x", min=0),),
        ),
        [rec(0, a=0), rec(0, a=1), rec(0, a=2)],
    ),
    # k records at the bound of largest magnitude (7 of [-3, 7]; 100 clamps to 7).
    (
        "sum-integer",
        Query(QueryKind.SUM, PrivacyCost(PURE, COST), column="x"),
        [rec(0, x=7), rec(0, x=100), rec(0, x=7)],
    ),
    (
        "sum-float",
        Query(QueryKind.SUM, PrivacyCost(PURE, COST), column="y", bounds=Bounds(0.5, 2.0)),
        [rec(0, y=2.0), rec(0, y=9.0), rec(0, y=2.0)],
    ),
    # 2x - (L + U) at x = U is U - L: T moves by k (U - L), the count by k.
    (
        "mean-integer",
        Query(QueryKind.MEAN, PrivacyCost(PURE, COST), column="x", bounds=Bounds(-2, 5)),
        [rec(0, x=5), rec(0, x=6), rec(0, x=5)],
    ),
    (
        "mean-float",
        Query(QueryKind.MEAN, PrivacyCost(PURE, COST), column="y"),
        [rec(0, y=0.0), rec(0, y=-1.0), rec(0, y=0.0)],
    ),
    (
        "histogram",
        Query(QueryKind.HISTOGRAM, PrivacyCost(PURE, COST), column="x", bin_edges=(0, 2, 7)),
        [rec(0, x=7), rec(0, x=6), rec(0, x=2)],  # the last edge is inclusive
    ),
]


@pytest.mark.parametrize(("name", "query", "client0"), TIGHT, ids=[t[0] for t in TIGHT])
def test_claimed_bound_is_attained(name: str, query: Query, client0: list[Row]) -> None:
    k = 3
    others = [rec(1, a=1, x=-1, y=0.5), rec(2, a=2, x=3, y=1.5), rec(2, a=0, x=0, y=2.5)]
    ds = build(k, client0 + others)
    plan_ = plan(query, SCHEMA, make_policy(k))
    full = evaluate(plan_, ds, SCHEMA)
    reduced = evaluate(plan_, without_client(ds, 0), SCHEMA)
    assert sensitivity_violations(plan_, ds) == []
    for f, r in zip(full, reduced, strict=True):
        l1, l2sq = change(f, r)
        assert (l1, l2sq) == (f.l1, claimed_l2_squared(f)), f.name


def test_sum_bound_uses_the_larger_magnitude_of_the_bounds() -> None:
    """[-3, 7]: B = 7, so k records at -3 stay strictly inside the claim."""
    k = 3
    ds = build(k, [rec(0, x=-3), rec(0, x=-9), rec(0, x=-3)])
    plan_ = plan(Query(QueryKind.SUM, PrivacyCost(PURE, COST), column="x"), SCHEMA, make_policy(k))
    (agg,) = evaluate(plan_, ds, SCHEMA)
    assert agg.l1 == 3 * 7
    assert change(agg, evaluate(plan_, without_client(ds, 0), SCHEMA)[0]) == (9, 81)


# ---------------------------------------------------------------- regressions
# Both were found by this file: COUNT_CLIENTS/PROPORTION claimed l2 = math.sqrt(m),
# which rounds below √m for m = 3, 6, 11, ... (so OpenDP was told a sensitivity
# below the true one and charged ρ below Δ²/(2σ²)); and float bounds narrower
# than the fixed-point grid step passed plan() and then failed in release().


def _spread_client(k: int, kind: QueryKind) -> tuple[QueryPlan, Dataset]:
    """Client 0 has k records in k different cells (a × b has 6)."""
    cells = list(itertools.product(range(len(A_CATS)), range(len(B_CATS))))[:k]
    ds = build(k, [rec(0, a=a, b=b) for a, b in cells] + [rec(1)])
    condition = (NumericRange("x", min=0),) if kind is QueryKind.PROPORTION else ()
    query = Query(kind, PrivacyCost(ZCDP, COST), group_by=("a", "b"), condition=condition)
    return plan(query, SCHEMA, make_policy(k, ZCDP)), ds


DISTINCT_KINDS = [QueryKind.COUNT_CLIENTS, QueryKind.PROPORTION]


@pytest.mark.parametrize("kind", DISTINCT_KINDS, ids=lambda kd: kd.value)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_l2_claim_is_not_rounded_below_the_true_sensitivity(kind: QueryKind, k: int) -> None:
    plan_, ds = _spread_client(k, kind)
    full = evaluate(plan_, ds, SCHEMA)
    reduced = evaluate(plan_, without_client(ds, 0), SCHEMA)
    for f, r in zip(full, reduced, strict=True):
        _, l2sq = change(f, r)
        assert l2sq == k  # attained: one client, k cells
        assert Fraction(f.l2) ** 2 >= l2sq  # math.sqrt(3) = 1.7320508075688772 < √3
        assert Fraction(math.nextafter(f.l2, 0.0)) ** 2 < l2sq  # and not wastefully above


@pytest.mark.parametrize("kind", DISTINCT_KINDS, ids=lambda kd: kd.value)
@pytest.mark.parametrize("k", [3, 6])  # m where math.sqrt(m) rounds down
@pytest.mark.parametrize("cost", [Fraction(1, 10), COST, Fraction(1)], ids=str)
def test_zcdp_charge_covers_the_true_l2_sensitivity(
    kind: QueryKind, k: int, cost: Fraction
) -> None:
    plan_, ds = _spread_client(k, kind)
    aggregates = evaluate(plan_, ds, SCHEMA)
    share = cost / len(aggregates)
    _, charge = answering.release_cells(
        dataclasses.replace(
            plan_, query=dataclasses.replace(plan_.query, cost=PrivacyCost(ZCDP, cost))
        ),
        aggregates,
        ZCDP,
    )
    total = Fraction(0)
    for agg in aggregates:
        scale = mechanisms.calibrate(ZCDP, agg.l2, share)
        true_rho = Fraction(k) / (2 * Fraction(scale) ** 2)  # discrete Gaussian, Δ² = k
        one = mechanisms.privacy_cost(ZCDP, scale, agg.l2)
        assert true_rho <= one <= share
        total += one
    assert charge.privacy_map == total <= cost
    assert charge.charge == cost


@pytest.mark.parametrize("kind", [QueryKind.SUM, QueryKind.MEAN], ids=lambda kd: kd.value)
@pytest.mark.parametrize(
    "bounds",
    [Bounds(0.0, 1e-7), Bounds(0.3, 0.3000001), Bounds(1.0, 1.0 + 2.0**-21)],
    ids=["zero-width-grid", "inverted-grid", "half-step"],
)
def test_plan_refuses_float_bounds_finer_than_the_grid(kind: QueryKind, bounds: Bounds) -> None:
    """y's grid step is 2**-20: bounds with fewer than two grid points are refused by plan()."""
    query = Query(kind, PrivacyCost(PURE, COST), column="y", bounds=bounds)
    with pytest.raises(InvalidQueryError, match="resolution"):
        plan(query, SCHEMA, make_policy(2))


@pytest.mark.parametrize("kind", [QueryKind.SUM, QueryKind.MEAN], ids=lambda kd: kd.value)
def test_one_grid_step_of_float_bounds_is_answerable(kind: QueryKind) -> None:
    k = 2
    ds = build(k, [rec(0, y=0.3), rec(0, y=0.4), rec(1, y=0.2)])
    bounds = Bounds(0.25, 0.25 + 2.0**-20)  # exactly two grid points
    query = Query(kind, PrivacyCost(PURE, COST), column="y", bounds=bounds)
    plan_ = plan(query, SCHEMA, make_policy(k))
    aggregates = evaluate(plan_, ds, SCHEMA)
    assert all(agg.l1 > 0 and agg.l2 > 0 for agg in aggregates), aggregates
    assert sensitivity_violations(plan_, ds) == []
    cells, cost = answering.release_cells(plan_, aggregates, PURE)
    assert len(cells) == 1 and cost.charge == COST and 0 < cost.privacy_map <= COST


BIG_SCHEMA = Schema.model_validate(
    {
        "identifier": "cid",
        "columns": {
            "amount": {"type": "integer", "bounds": [0, 9e14]},  # config allows |bound| < 1e15
            "g": {"type": "categorical", "categories": ["p", "q"]},
        },
    }
)


@pytest.mark.parametrize("kind", [QueryKind.SUM, QueryKind.MEAN], ids=lambda kd: kd.value)
@pytest.mark.parametrize("group_by", [(), ("g",)], ids=["ungrouped", "grouped"])
def test_integer_sums_do_not_overflow_at_the_configurable_bounds(
    kind: QueryKind, group_by: tuple[str, ...]
) -> None:
    n = 10_300  # n * 9e14 = 9.27e18 > 2**63 - 1
    ds = Dataset(
        version="t",
        max_records_per_client=1,
        client=np.arange(n, dtype=np.int64),
        categorical={"g": np.zeros(n, dtype=np.int16)},
        numeric={"amount": np.full(n, 9e14)},
    )
    query = Query(kind, PrivacyCost(PURE, COST), column="amount", group_by=group_by)
    plan_ = plan(query, BIG_SCHEMA, make_policy(1))
    full = evaluate(plan_, ds, BIG_SCHEMA)[0]
    # Large integer bounds go on a coarser dyadic grid instead of wrapping int64.
    assert plan_.numeric is not None and plan_.numeric.factor < 1
    if kind is QueryKind.SUM:
        step = 1 / plan_.numeric.factor
        assert abs(int(full.values[0]) * step - n * 9 * 10**14) <= n * step / 2
    else:  # T = sum(2x - (L + U)) on the grid: every record at U gives n * (U - L)
        assert int(full.values[0]) == n * (plan_.numeric.upper_int - plan_.numeric.lower_int)
    neighbour = Dataset(
        version="t",
        max_records_per_client=1,
        client=np.arange(n - 1, dtype=np.int64),
        categorical={"g": np.zeros(n - 1, dtype=np.int16)},
        numeric={"amount": np.full(n - 1, 9e14)},
    )
    reduced = evaluate(plan_, neighbour, BIG_SCHEMA)[0]
    assert change(full, reduced)[0] <= full.l1


# ---------------------------------------------------------------- oracle


def cat_name(column: str, code: int) -> str:
    return CATEGORIES[column][code]


def value_of(row: Row, column: str) -> float | int | None:
    """A numeric column's value for one record, from the base columns; None when missing."""
    if column in ("x", "w", "y"):
        v = getattr(row, column)
        return None if math.isnan(v) else v
    if column == "gap":
        if MISSING_DATE in (row.d, row.e):
            return None
        return (EPOCH + timedelta(days=row.d) - (EPOCH + timedelta(days=row.e))).days
    left, right, sign = {"x_plus_y": ("x", "y", 1), "x_minus_w": ("x", "w", -1)}[column]
    lv, rv = value_of(row, left), value_of(row, right)
    return None if lv is None or rv is None else lv + sign * rv


def holds(row: Row, flt: Filter) -> bool:
    if isinstance(flt, InSet):
        return cat_name(flt.column, getattr(row, flt.column)) in flt.values
    if isinstance(flt, NumericRange):
        v = value_of(row, flt.column)
        return (
            v is not None
            and (flt.min is None or v >= flt.min)
            and (flt.max is None or v <= flt.max)
        )
    raw = getattr(row, flt.column)
    if raw == MISSING_DATE:
        return False
    when = EPOCH + timedelta(days=raw)
    return (flt.start is None or when >= flt.start) and (flt.end is None or when <= flt.end)


def oracle(query: Query, plan_: QueryPlan, ds: Dataset) -> dict[str, list[int]]:
    """Each component's exact vector, by looping over records."""
    rows = rows_of(ds)
    groups = list(itertools.product(*(CATEGORIES[c] for c in query.group_by)))
    n_bins = len(query.bin_edges) - 1 if query.kind is QueryKind.HISTOGRAM else 1
    n_cells = len(groups) * n_bins
    assert n_cells == plan_.n_cells

    def group_of(row: Row) -> int:
        return groups.index(tuple(cat_name(c, getattr(row, c)) for c in query.group_by))

    in_scope = [r for r in rows if all(holds(r, f) for f in query.filters)]

    def count(selected: list[Row]) -> list[int]:
        out = [0] * n_cells
        for r in selected:
            out[group_of(r)] += 1
        return out

    def distinct(selected: list[Row]) -> list[int]:
        seen: list[set[int]] = [set() for _ in range(n_cells)]
        for r in selected:
            seen[group_of(r)].add(r.client)
        return [len(s) for s in seen]

    if query.kind is QueryKind.COUNT:
        return {"count": count(in_scope)}
    if query.kind is QueryKind.COUNT_CLIENTS:
        return {"clients": distinct(in_scope)}
    if query.kind is QueryKind.PROPORTION:
        meets = [r for r in in_scope if all(holds(r, f) for f in query.condition)]
        return {"numerator": distinct(meets), "denominator": distinct(in_scope)}

    assert query.column is not None and plan_.numeric is not None
    present = [(r, v) for r in in_scope if (v := value_of(r, query.column)) is not None]
    if query.kind is QueryKind.HISTOGRAM:
        edges = query.bin_edges
        out = [0] * n_cells
        for r, v in present:
            for j in range(n_bins):
                last = j == n_bins - 1
                if edges[j] <= v < edges[j + 1] or (last and v == edges[j + 1]):
                    out[group_of(r) * n_bins + j] += 1
        return {"count": out}

    spec = plan_.numeric
    lower, upper = (
        (query.bounds.lower, query.bounds.upper)
        if query.bounds
        else SCHEMA.numeric_bounds(query.column) or (0, 0)
    )
    if query.column in INT_COLUMNS:
        # Whole numbers: the grid is the integers and the clamp is exact.
        assert (spec.factor, spec.lower_int, spec.upper_int) == (1.0, lower, upper)
    else:
        # The fixed-point grid is public (from the bounds): a power of two,
        # whose integer ends lie within the bounds and within one step of them.
        factor = Fraction(spec.factor)
        assert factor.denominator == 1 or factor.numerator == 1
        assert math.log2(spec.factor).is_integer()
        lo, hi = Fraction(lower), Fraction(upper)
        assert lo <= spec.lower_int / factor < lo + 1 / factor
        assert hi - 1 / factor < spec.upper_int / factor <= hi

    def fixed(v: float) -> int:
        clamped = Fraction(min(max(v, lower), upper))
        scaled = round(clamped * Fraction(spec.factor))  # half to even, like np.rint
        return min(max(scaled, spec.lower_int), spec.upper_int)

    sums = [0] * n_cells
    shifted = [0] * n_cells
    n = [0] * n_cells
    for r, v in present:
        g = group_of(r)
        sums[g] += fixed(v)
        shifted[g] += 2 * fixed(v) - (spec.lower_int + spec.upper_int)
        n[g] += 1
    if query.kind is QueryKind.SUM:
        return {"sum": sums}
    return {"shifted_sum": shifted, "count": n}


@pytest.mark.parametrize(("kind", "ctype"), CASES, ids=CASE_IDS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_evaluate_matches_a_record_by_record_oracle(
    kind: QueryKind, ctype: str | None, data: st.DataObject
) -> None:
    k = data.draw(st.integers(1, 4), label="k")
    ds = data.draw(datasets(k, max_clients=12), label="dataset")
    query = data.draw(queries(kind, ctype), label="query")
    plan_ = plan_or_refusal(query, make_policy(k))
    if plan_ is None:
        return
    got = {agg.name: agg.values.tolist() for agg in evaluate(plan_, ds, SCHEMA)}
    assert got == oracle(query, plan_, ds)


def test_float_sum_is_the_clamped_real_sum_to_within_the_grid() -> None:
    """Fixed point loses at most half a grid step per record against the real clamped sum."""
    k = 2
    ys = [0.1, 2.4999999, -3.0, 7.0, 1 / 3, 2.5]
    ds = build(k, [rec(i // 2, y=v) for i, v in enumerate(ys)])
    plan_ = plan(Query(QueryKind.SUM, PrivacyCost(PURE, COST), column="y"), SCHEMA, make_policy(k))
    (agg,) = evaluate(plan_, ds, SCHEMA)
    assert plan_.numeric is not None
    factor = Fraction(plan_.numeric.factor)
    real = sum(Fraction(min(max(v, 0.0), 2.5)) for v in ys)
    assert abs(Fraction(int(agg.values[0])) / factor - real) <= Fraction(len(ys), 2) / factor


# ---------------------------------------------------------------- the hand-off to OpenDP


@dataclass
class Call:
    values: npt.NDArray[np.int64]
    sensitivity: float
    budget: Fraction
    definition: PrivacyDefinition
    result: mechanisms.NoisyVector


def opendp_map(definition: PrivacyDefinition, scale: float, sensitivity: float) -> Fraction:
    """OpenDP's privacy map, built here independently of node.mechanisms' cache."""
    domain = dp.vector_domain(dp.atom_domain(T="i64"))
    if definition is PURE:
        meas = dp.m.make_laplace(domain, dp.l1_distance(T="i64"), scale=scale)
        return Fraction(meas.map(int(sensitivity)))
    meas = dp.m.make_gaussian(domain, dp.l2_distance(T="f64"), scale=scale)
    return Fraction(meas.map(float(sensitivity)))


HANDOFF_COSTS = [Fraction(1, 2), Fraction(1, 10), Fraction(3, 7), Fraction(1)]


@pytest.mark.parametrize("definition", [PURE, ZCDP])
@pytest.mark.parametrize(("kind", "ctype"), CASES, ids=CASE_IDS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_claimed_sensitivity_and_budget_share_reach_opendp(
    definition: PrivacyDefinition,
    kind: QueryKind,
    ctype: str | None,
    data: st.DataObject,
) -> None:
    k = data.draw(st.integers(1, 4), label="k")
    ds = data.draw(datasets(k), label="dataset")
    query = data.draw(queries(kind, ctype, definition), label="query")
    cost = data.draw(st.sampled_from(HANDOFF_COSTS), label="cost")
    query = dataclasses.replace(query, cost=PrivacyCost(definition, cost))
    plan_ = plan_or_refusal(query, make_policy(k, definition))
    if plan_ is None:
        return
    aggregates = evaluate(plan_, ds, SCHEMA)

    calls: list[Call] = []
    real_release: Callable[..., mechanisms.NoisyVector] = mechanisms.release

    def recording(
        values: npt.NDArray[np.int64], sensitivity: float, budget: Fraction, d: PrivacyDefinition
    ) -> mechanisms.NoisyVector:
        result = real_release(values, sensitivity, budget, d)
        calls.append(Call(np.array(values, copy=True), sensitivity, budget, d, result))
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(answering, "release", recording)
        cells, charge = answering.release_cells(plan_, aggregates, definition)

    assert len(calls) == len(aggregates) == len(plan_.components)
    assert len(cells) == plan_.n_cells
    for agg, call in zip(aggregates, calls, strict=True):
        assert np.array_equal(call.values, agg.values)
        assert call.definition is definition
        if definition is PURE:
            assert call.sensitivity == agg.l1 and isinstance(call.sensitivity, int)
        else:
            assert call.sensitivity == agg.l2
        assert call.budget == cost / len(aggregates)  # exact even split
        assert call.result.charge == opendp_map(definition, call.result.scale, call.sensitivity)
        assert call.result.charge <= call.budget
    # Charged exactly what was asked; OpenDP's maps (each within its share) beside it.
    assert charge.charge == cost
    assert charge.privacy_map == sum((c.result.charge for c in calls), Fraction(0))
    assert charge.privacy_map <= cost
