"""Plans queries against the schema and policy, and computes exact aggregates.

Two halves, kept apart on purpose:

- :func:`plan` looks only at the query, the schema and the policy. Every
  refusal a node can give comes from here (or from the ledger), so no error
  ever depends on the records.
- :func:`evaluate` runs a plan over the columnar :class:`Dataset`: a few
  vectorised numpy passes that produce exact integer vectors, each with the
  sensitivity that OpenDP must be told. Nothing here adds noise.

Sensitivities come from the plan alone, in :mod:`node.sensitivity`, under the
privacy unit (one client with all of their records).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date

import numpy as np
import numpy.typing as npt

from node.config import (
    CategoricalColumn,
    DateColumn,
    DerivedColumn,
    NumericColumn,
    Policy,
    Schema,
)
from node.dataset import MISSING_DATE, Dataset
from node.sensitivity import (
    COMPONENTS,
    NumericSpec,
    Sensitivity,
    fixed_point_grid,
    sensitivities,
)
from tiaki.errors import InvalidQueryError, PerQueryMaximumError, PolicyViolationError
from tiaki.query import DateRange, Filter, InSet, NumericRange, Query, QueryKind

_EPOCH = date(1970, 1, 1)
Mask = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
# Histograms with at most this many bins place values by comparing with each
# lower edge (one vectorised pass per edge), several times faster than a
# binary search per value; wider ones use the binary search.
_COMPARE_BINS_MAX = 16


@dataclass(frozen=True)
class QueryPlan:
    """A validated query with everything needed to run it, decided without data."""

    query: Query
    group_columns: tuple[str, ...]
    group_labels: tuple[tuple[str, ...], ...]  # one per group cell, in cell order
    bin_labels: tuple[str, ...]  # histogram bins, or ("",)
    components: tuple[str, ...]  # names of the exact vectors released
    numeric: NumericSpec | None
    k: int

    @property
    def n_groups(self) -> int:
        return len(self.group_labels)

    @property
    def n_cells(self) -> int:
        return len(self.group_labels) * len(self.bin_labels)

    @property
    def sensitivities(self) -> tuple[Sensitivity, ...]:
        """Each component's sensitivity under the privacy unit (see :mod:`node.sensitivity`)."""
        return sensitivities(self.query.kind, self.k, self.n_cells, self.numeric)


@dataclass(frozen=True)
class ExactAggregate:
    """An exact vector (one entry per cell) and its sensitivity under the privacy unit."""

    name: str
    values: npt.NDArray[np.int64]
    l1: int
    l2: float


# ---------------------------------------------------------------- planning


def _column_spec(schema: Schema, name: str, role: str) -> object:
    if name == schema.identifier:
        raise PolicyViolationError(
            f"{role} {name!r} is the client identifier, which is never queryable"
        )
    spec = schema.columns.get(name)
    if spec is None:
        queryable = ", ".join(n for n in schema.columns if schema.is_queryable(n))
        raise InvalidQueryError(f"unknown {role} {name!r}; queryable columns are: {queryable}")
    if not schema.is_queryable(name):
        raise PolicyViolationError(f"{role} {name!r} is marked never-queryable by this node")
    return spec


def _check_filter(schema: Schema, flt: Filter, role: str) -> None:
    spec = _column_spec(schema, flt.column, role)
    if isinstance(flt, InSet):
        if not isinstance(spec, CategoricalColumn):
            raise InvalidQueryError(
                f"{role} on {flt.column!r}: equality and sets apply to categorical columns; "
                "use a range for numbers and dates"
            )
        unknown = [v for v in flt.values if v not in spec.categories]
        if unknown:
            raise InvalidQueryError(
                f"{role} on {flt.column!r}: {unknown[0][:40]!r} is not a category; "
                f"categories are: {', '.join(spec.categories[:30])}"
            )
    elif isinstance(flt, NumericRange):
        if not isinstance(spec, NumericColumn | DerivedColumn) or (
            isinstance(spec, DerivedColumn) and schema.numeric_bounds(flt.column) is None
        ):
            raise InvalidQueryError(
                f"{role} on {flt.column!r}: a numeric range needs a number column"
            )
    elif not isinstance(spec, DateColumn):
        raise InvalidQueryError(f"{role} on {flt.column!r}: a date range needs a date column")


def _numeric_spec(schema: Schema, query: Query) -> NumericSpec:
    assert query.column is not None
    spec = _column_spec(schema, query.column, "column")
    bounds = schema.numeric_bounds(query.column)
    if not isinstance(spec, NumericColumn | DerivedColumn) or bounds is None:
        raise InvalidQueryError(
            f"column {query.column!r} is not numeric; {query.kind} needs a number"
        )
    lower, upper = bounds
    if query.bounds is not None:
        if query.bounds.lower < lower or query.bounds.upper > upper:
            raise InvalidQueryError(
                f"bounds [{query.bounds.lower}, {query.bounds.upper}] reach outside the declared "
                f"bounds of {query.column!r}, [{lower}, {upper}]; bounds may only narrow them"
            )
        lower, upper = query.bounds.lower, query.bounds.upper
    integer = (
        spec.type == "integer"
        if isinstance(spec, NumericColumn)
        else schema.derived_type(query.column) == "integer"
    )
    if integer and not (float(lower).is_integer() and float(upper).is_integer()):
        raise InvalidQueryError(f"{query.column!r} holds whole numbers; give whole-number bounds")
    return fixed_point_grid(query.column, lower, upper, integer)


def _bin_label(lo: float, hi: float, last: bool) -> str:
    return f"[{lo:g}, {hi:g}{']' if last else ')'}"


def plan(query: Query, schema: Schema, policy: Policy) -> QueryPlan:
    """Check a query against the schema and the policy; decide its cells and components.

    Raises InvalidQueryError or PolicyViolationError. Looks at no record.
    """
    if query.kind not in policy.allowed_kinds:
        allowed = ", ".join(k.value for k in policy.allowed_kinds)
        raise PolicyViolationError(
            f"this node does not answer {query.kind} queries; it allows: {allowed}"
        )
    if query.cost.definition is not policy.privacy_definition:
        want = policy.privacy_definition.symbol
        raise InvalidQueryError(
            f"this node accounts in {policy.privacy_definition} privacy; give the cost as {want}"
        )
    if query.cost.amount > policy.per_query_max:
        raise PerQueryMaximumError(query.cost.amount, policy.per_query_max)
    for flt in query.filters:
        _check_filter(schema, flt, "filter")
    for flt in query.condition:
        _check_filter(schema, flt, "condition")

    labels: list[tuple[str, ...]] = [()]
    for name in query.group_by:
        spec = _column_spec(schema, name, "group-by column")
        if not isinstance(spec, CategoricalColumn):
            raise InvalidQueryError(f"group-by column {name!r} is not categorical")
        if len(labels) * len(spec.categories) > policy.max_cells:
            raise InvalidQueryError(
                f"grouping by {', '.join(query.group_by)} gives more than {policy.max_cells} "
                "cells, the most this node computes"
            )
        labels = [(*prefix, cat) for prefix in labels for cat in spec.categories]

    numeric = None
    bins: tuple[str, ...] = ("",)
    if query.kind in (QueryKind.SUM, QueryKind.MEAN, QueryKind.HISTOGRAM):
        numeric = _numeric_spec(schema, query)
    if query.kind is QueryKind.HISTOGRAM:
        edges = query.bin_edges
        bins = tuple(
            _bin_label(lo, hi, i == len(edges) - 2)
            for i, (lo, hi) in enumerate(itertools.pairwise(edges))
        )
    if len(labels) * len(bins) > policy.max_cells:
        raise InvalidQueryError(
            f"the answer would have {len(labels) * len(bins)} cells; this node computes at most "
            f"{policy.max_cells}"
        )
    return QueryPlan(
        query=query,
        group_columns=query.group_by,
        group_labels=tuple(labels),
        bin_labels=bins,
        components=COMPONENTS[query.kind],
        numeric=numeric,
        k=policy.max_records_per_client,
    )


# ---------------------------------------------------------------- evaluation


def _day(value: date) -> int:
    return (value - _EPOCH).days


def _filter_mask(ds: Dataset, flt: Filter, schema: Schema) -> npt.NDArray[np.bool_]:
    if isinstance(flt, InSet):
        spec = schema.columns[flt.column]
        assert isinstance(spec, CategoricalColumn)
        codes = ds.categorical[flt.column]
        wanted = sorted({spec.categories.index(v) for v in flt.values})
        if len(wanted) <= 4:  # a few comparisons beat a gather through a lookup table
            mask = codes == wanted[0]
            for code in wanted[1:]:
                mask |= codes == code
            return np.asarray(mask, dtype=np.bool_)
        table = np.zeros(len(spec.categories), dtype=np.bool_)
        table[wanted] = True
        selected: npt.NDArray[np.bool_] = table.take(codes)
        return selected
    if isinstance(flt, NumericRange):
        x = ds.numeric[flt.column]
        mask = ~np.isnan(x)
        if flt.min is not None:
            mask &= x >= flt.min
        if flt.max is not None:
            mask &= x <= flt.max
        return mask
    assert isinstance(flt, DateRange)
    d = ds.dates[flt.column]
    mask = d != MISSING_DATE
    if flt.start is not None:
        mask &= d >= _day(flt.start)
    if flt.end is not None:
        mask &= d <= _day(flt.end)
    return np.asarray(mask, dtype=np.bool_)


def _all_of(ds: Dataset, filters: tuple[Filter, ...], schema: Schema) -> Mask | None:
    """Records meeting every filter, or None when there are none: every record.

    None lets the evaluation skip building an all-true mask and copying
    every column through it, which is most of the cost of unfiltered queries.
    """
    if not filters:
        return None
    mask = _filter_mask(ds, filters[0], schema)  # a new array, safe to update in place
    for flt in filters[1:]:
        mask &= _filter_mask(ds, flt, schema)
    return mask


def _both(a: Mask | None, b: Mask | None) -> Mask | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _group_index(ds: Dataset, plan_: QueryPlan, schema: Schema) -> I64 | None:
    """Each record's group cell, or None when there is one group (no grouping needed)."""
    if plan_.n_groups == 1:
        return None
    first, *rest = plan_.group_columns
    index = ds.categorical[first].astype(np.int64)
    for name in rest:
        spec = schema.columns[name]
        assert isinstance(spec, CategoricalColumn)
        index *= len(spec.categories)
        index += ds.categorical[name]
    return index


def _tally(cells: I64, weights: Mask | None, n_cells: int) -> I64:
    """Records per cell; with ``weights``, only the records where it is True.

    A weighted bincount reads every record, selected or not: faster than
    copying the selected ones out first, and its time does not depend on how
    many match. It sums in float64, exact below 2**53 records.
    """
    if weights is None:
        return np.bincount(cells, minlength=n_cells).astype(np.int64)
    return np.bincount(cells, weights=weights, minlength=n_cells).astype(np.int64)


def _first_per_client_and_cell(client: I64, cells: I64, n_slots: int, k: int) -> Mask:
    """True at the first record of each (client, cell) pair; ``cells`` lie in 0..n_slots-1.

    Records are sorted by client and each client has at most ``k`` of them,
    so an earlier record of the same client lies at most ``k - 1`` places back.
    Client and cell are folded into one key while that cannot overflow, so
    each look back is one comparison instead of two.
    """
    first = np.ones(client.shape[0], dtype=np.bool_)
    n_clients = int(client[-1]) + 1 if client.size else 0
    if n_clients * n_slots >= 2**62:  # pragma: no cover - beyond any node's size
        for back in range(1, min(k, client.shape[0])):
            same = (client[back:] == client[:-back]) & (cells[back:] == cells[:-back])
            first[back:] &= ~same
        return first
    key = client * n_slots + cells
    for back in range(1, min(k, key.shape[0])):
        first[back:] &= key[back:] != key[:-back]
    return first


def _distinct_clients(
    ds: Dataset, selected: Mask | None, cells: I64 | None, n_cells: int, k: int
) -> I64:
    """Distinct clients per cell among the selected records."""
    client = ds.client
    if cells is None and selected is None:  # one cell, every record: count the clients
        clients = np.count_nonzero(client[1:] != client[:-1]) + (client.size > 0)
        return np.array([clients], dtype=np.int64)
    # Records out of scope go to an extra cell, n_cells, that is dropped at the
    # end: they never share a (client, cell) with a selected record, and nothing
    # is copied out of the columns.
    if cells is None:
        assert selected is not None
        cell = (~selected).astype(np.int64)  # n_cells is 1: 0 in scope, 1 out
    elif selected is None:
        cell = cells
    else:
        cell = np.where(selected, cells, n_cells)
    first = _first_per_client_and_cell(client, cell, n_cells + 1, k)
    return _tally(cell, first, n_cells + 1)[:n_cells]


def _exact_int_sum(cells: I64 | None, values: I64, n_cells: int) -> I64:
    """Per-cell sums of int64 values below 2**31 in size, exactly.

    bincount accumulates in float64, exact only below 2**53; splitting each
    value into 16-bit halves keeps every partial sum exact up to 2**37 records.
    """
    if cells is None:
        return np.array([values.sum(dtype=np.int64)], dtype=np.int64)
    low = values & 0xFFFF
    high = values >> 16
    low_sum = np.bincount(cells, weights=low, minlength=n_cells).astype(np.int64)
    high_sum = np.bincount(cells, weights=high, minlength=n_cells).astype(np.int64)
    return (high_sum << 16) + low_sum


def _as_fixed_point(x: npt.NDArray[np.float64], spec: NumericSpec) -> I64:
    if spec.integer:  # whole numbers already: clipping is all there is to do
        return np.clip(x, spec.lower_int, spec.upper_int).astype(np.int64)
    scaled = np.rint(np.clip(x, spec.lower, spec.upper) * spec.factor)
    return np.clip(scaled, spec.lower_int, spec.upper_int).astype(np.int64)


def _histogram(
    x: npt.NDArray[np.float64],
    edges: npt.NDArray[np.float64],
    scope: Mask | None,
    groups: I64 | None,
    n_groups: int,
) -> I64:
    """Counts per (group, bin), group-major; bins [e0, e1), ..., [e(n-1), en].

    Each record gets b = the number of lower edges at or below its value:
    1..n for a value in [e0, en], 0 for one below e0. Values above en, NaN
    (missing) and records out of scope are set to 0 too, and slot 0 of every
    group is dropped: no record is copied out of its column.
    """
    n_bins = len(edges) - 1
    lower = edges[:-1]
    b: npt.NDArray[np.integer]
    if n_bins <= _COMPARE_BINS_MAX:
        b = np.zeros(x.shape[0], dtype=np.int8)
        for edge in lower:
            b += x >= edge
    else:
        b = np.searchsorted(lower, x, side="right")  # NaN sorts last: zeroed below
    b *= x <= edges[-1]  # False for NaN
    if scope is not None:
        b *= scope
    index = b if groups is None else groups * (n_bins + 1) + b
    counts = np.bincount(index, minlength=n_groups * (n_bins + 1))
    return counts.reshape(n_groups, n_bins + 1)[:, 1:].ravel().astype(np.int64)


def evaluate(plan_: QueryPlan, ds: Dataset, schema: Schema) -> tuple[ExactAggregate, ...]:
    """Exact aggregate vectors (cell order: group-major, then bin) and their sensitivities."""
    vectors = _exact_vectors(plan_, ds, schema)
    return tuple(
        ExactAggregate(s.name, values, l1=s.l1, l2=s.l2)
        for s, values in zip(plan_.sensitivities, vectors, strict=True)
    )


def _exact_vectors(plan_: QueryPlan, ds: Dataset, schema: Schema) -> tuple[I64, ...]:
    query, k = plan_.query, plan_.k
    n_groups, n_cells = plan_.n_groups, plan_.n_cells
    scope = _all_of(ds, query.filters, schema)
    groups = _group_index(ds, plan_, schema)

    if query.kind is QueryKind.COUNT:
        if groups is None:
            selected = ds.n_records if scope is None else int(np.count_nonzero(scope))
            return (np.array([selected], dtype=np.int64),)
        return (_tally(groups, scope, n_cells),)
    if query.kind is QueryKind.COUNT_CLIENTS:
        return (_distinct_clients(ds, scope, groups, n_cells, k),)
    if query.kind is QueryKind.PROPORTION:
        meets = _both(scope, _all_of(ds, query.condition, schema))
        return (
            _distinct_clients(ds, meets, groups, n_cells, k),
            _distinct_clients(ds, scope, groups, n_cells, k),
        )

    spec = plan_.numeric
    assert spec is not None
    x = ds.numeric[spec.column]
    if query.kind is QueryKind.HISTOGRAM:
        edges = np.asarray(query.bin_edges, dtype=np.float64)
        return (_histogram(x, edges, scope, groups, n_groups),)

    present = ~np.isnan(x)
    if scope is not None:
        present &= scope
    # Indices then gathers: faster than boolean-mask copies, which stall on
    # unpredictable masks.
    rows = np.flatnonzero(present)
    values = _as_fixed_point(x[rows], spec)
    cells = None if groups is None else groups[rows]
    if query.kind is QueryKind.SUM:
        return (_exact_int_sum(cells, values, n_cells),)
    shifted = 2 * values - (spec.lower_int + spec.upper_int)
    counts = (
        np.array([rows.shape[0]], dtype=np.int64) if cells is None else _tally(cells, None, n_cells)
    )
    return (_exact_int_sum(cells, shifted, n_cells), counts)
