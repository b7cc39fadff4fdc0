"""Turns an analyst's command-line words into a :class:`~tiaki.query.Query`.

Column types come from the node's public metadata (``GetInfo``), so
``--where region=auckland`` becomes a set filter and ``--where sessions>=5``
a numeric range without the analyst spelling out which is which.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from coordinator.schema_check import did_you_mean
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
    parse_iso_date,
)

_CONDITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*(>=|<=|=)\s*(.*?)\s*$")


def parse_filter(text: str, column_types: dict[str, str]) -> Filter:
    """``col=a,b`` (categories), ``col>=x``, ``col<=x``, ``col=lo..hi`` (numbers or dates)."""
    match = _CONDITION.match(text)
    if not match:
        raise InvalidQueryError(
            f"cannot read condition {text!r}; write column=value, column=a,b, "
            "column>=x, column<=x or column=lo..hi"
        )
    column, op, value = match.groups()
    kind = column_types.get(column)
    if kind is None:
        raise InvalidQueryError(
            f"unknown column {column!r} in {text!r}{did_you_mean(column, column_types)}"
        )
    if kind == "categorical":
        if op != "=":
            raise InvalidQueryError(f"{column!r} is categorical; use {column}=value[,value...]")
        return InSet(column, tuple(v.strip() for v in value.split(",") if v.strip()))
    lo: str | None
    hi: str | None
    if op == ">=":
        lo, hi = value, None
    elif op == "<=":
        lo, hi = None, value
    elif ".." in value:
        lo, hi = (part.strip() or None for part in value.split("..", 1))
    else:
        lo = hi = value
    if kind == "date":
        return DateRange(
            column,
            parse_iso_date(lo or "", f"start of {column!r}"),
            parse_iso_date(hi or "", f"end of {column!r}"),
        )
    return NumericRange(column, _number(lo, column), _number(hi, column))


def _number(text: str | None, column: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidQueryError(f"{text!r} is not a number (column {column!r})") from None


def parse_numbers(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidQueryError(f"{what} must be comma-separated numbers, not {text!r}") from None


def build_query(
    *,
    kind: str,
    column: str | None,
    where: Sequence[str],
    by: Sequence[str],
    condition: Sequence[str],
    bounds: str | None,
    bins: str | None,
    epsilon: str | None,
    rho: str | None,
    column_types: dict[str, str],
) -> Query:
    try:
        query_kind = QueryKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in QueryKind)
        raise InvalidQueryError(f"unknown query kind {kind!r}; choose one of: {known}") from None
    if (epsilon is None) == (rho is None):
        raise InvalidQueryError("give exactly one of --epsilon (pure DP) or --rho (zCDP)")
    cost = (
        PrivacyCost.parse(PrivacyDefinition.PURE, epsilon)
        if epsilon is not None
        else PrivacyCost.parse(PrivacyDefinition.ZCDP, rho or "")
    )
    parsed_bounds = None
    if bounds:
        values = parse_numbers(bounds, "--bounds")
        if len(values) != 2:
            raise InvalidQueryError("--bounds takes two numbers: lower,upper")
        parsed_bounds = Bounds(*values)
    return Query(
        kind=query_kind,
        cost=cost,
        column=column,
        bounds=parsed_bounds,
        filters=tuple(parse_filter(w, column_types) for w in where),
        group_by=tuple(by),
        condition=tuple(parse_filter(c, column_types) for c in condition),
        bin_edges=parse_numbers(bins, "--bins") if bins else (),
    )
