"""Queries as frozen value types that validate their own shape.

A :class:`Query` knows nothing about any node's schema; the node checks it
against its schema and policy. What is checked here is what any node would
refuse: missing parts for the kind, too many group-by columns, non-finite or
inverted bounds, bad bin edges, a privacy cost that is not a positive finite
decimal. Every check depends only on the query.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from fractions import Fraction

from tiaki.budget import AmountError, PrivacyDefinition, format_amount, parse_amount
from tiaki.errors import InvalidQueryError

MAX_GROUP_BY = 3
MAX_FILTERS = 32
MAX_SET_VALUES = 1000
MAX_BIN_EDGES = 1001
MAX_NAME_CHARS = 128
MAX_VALUE_CHARS = 256
MAX_ID_CHARS = 128


class QueryKind(StrEnum):
    COUNT = "count"
    COUNT_CLIENTS = "count_clients"
    SUM = "sum"
    MEAN = "mean"
    PROPORTION = "proportion"
    HISTOGRAM = "histogram"


NUMERIC_KINDS = frozenset({QueryKind.SUM, QueryKind.MEAN, QueryKind.HISTOGRAM})


@dataclass(frozen=True)
class PrivacyCost:
    """A requested or charged privacy cost: ε under pure DP, ρ under zCDP."""

    definition: PrivacyDefinition
    amount: Fraction

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Fraction) or self.amount <= 0:
            raise InvalidQueryError("a privacy cost must be an exact positive amount")

    @classmethod
    def parse(cls, definition: PrivacyDefinition, text: str) -> PrivacyCost:
        try:
            amount = parse_amount(text, what=definition.symbol)
        except AmountError as exc:
            raise InvalidQueryError(str(exc)) from None
        return cls(definition, amount)

    def __str__(self) -> str:
        return f"{self.definition.symbol}={format_amount(self.amount)}"


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidQueryError(f"{what} {name[:40]!r} is not a valid column name")


@dataclass(frozen=True)
class InSet:
    """The column's value is one of ``values`` (equals is a set of one)."""

    column: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.column, "filter column")
        if not self.values:
            raise InvalidQueryError(f"filter on {self.column!r} lists no values")
        if len(self.values) > MAX_SET_VALUES:
            raise InvalidQueryError(
                f"filter on {self.column!r} lists more than {MAX_SET_VALUES} values"
            )
        for value in self.values:
            if len(value) > MAX_VALUE_CHARS:
                raise InvalidQueryError(f"a value in the filter on {self.column!r} is too long")

    def canonical(self) -> dict[str, object]:
        return {"column": self.column, "in": sorted(set(self.values))}


@dataclass(frozen=True)
class NumericRange:
    """``min <= value <= max``; an end that is None is open."""

    column: str
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        _check_name(self.column, "filter column")
        for end in (self.min, self.max):
            if end is not None and not math.isfinite(end):
                raise InvalidQueryError(f"range on {self.column!r} has a non-finite end")
        if self.min is None and self.max is None:
            raise InvalidQueryError(f"range on {self.column!r} has neither a minimum nor a maximum")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise InvalidQueryError(
                f"range on {self.column!r} is inverted: minimum {self.min} > maximum {self.max}"
            )

    def canonical(self) -> dict[str, object]:
        return {"column": self.column, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class DateRange:
    """``start <= date <= end``; an end that is None is open."""

    column: str
    start: date | None = None
    end: date | None = None

    def __post_init__(self) -> None:
        _check_name(self.column, "filter column")
        if self.start is None and self.end is None:
            raise InvalidQueryError(f"date range on {self.column!r} has neither start nor end")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise InvalidQueryError(
                f"date range on {self.column!r} is inverted: {self.start} is after {self.end}"
            )

    def canonical(self) -> dict[str, object]:
        return {
            "column": self.column,
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
        }


Filter = InSet | NumericRange | DateRange


def parse_iso_date(text: str, what: str) -> date | None:
    """An ISO date, or None for an empty string (an open end)."""
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidQueryError(f"{what} {text[:40]!r} is not a date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class Bounds:
    """Public clamping bounds for a numeric column, ``lower < upper``."""

    lower: float
    upper: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise InvalidQueryError("bounds must be finite numbers")
        if self.lower >= self.upper:
            raise InvalidQueryError(
                f"bounds are inverted or empty: lower {self.lower} must be below upper {self.upper}"
            )


@dataclass(frozen=True)
class Query:
    """One aggregate question, without who asks it or its id.

    ``filters`` select records (all must hold); ``group_by`` splits the answer
    into one cell per combination of public categories; ``condition`` is what
    a client must meet to count in a proportion's numerator.
    """

    kind: QueryKind
    cost: PrivacyCost
    column: str | None = None
    bounds: Bounds | None = None
    filters: tuple[Filter, ...] = ()
    group_by: tuple[str, ...] = ()
    condition: tuple[Filter, ...] = ()
    bin_edges: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        kind = self.kind
        if kind in NUMERIC_KINDS:
            if not self.column:
                raise InvalidQueryError(f"a {kind} query needs a numeric column")
            _check_name(self.column, "column")
        elif self.column:
            raise InvalidQueryError(f"a {kind} query takes no column (got {self.column[:40]!r})")
        if self.bounds is not None and kind not in (QueryKind.SUM, QueryKind.MEAN):
            raise InvalidQueryError(f"bounds apply only to sum and mean, not {kind}")
        if len(self.group_by) > MAX_GROUP_BY:
            raise InvalidQueryError(
                f"group-by on {len(self.group_by)} columns; at most {MAX_GROUP_BY} are allowed"
            )
        for name in self.group_by:
            _check_name(name, "group-by column")
        if len(set(self.group_by)) != len(self.group_by):
            raise InvalidQueryError("a group-by column is listed twice")
        if len(self.filters) > MAX_FILTERS or len(self.condition) > MAX_FILTERS:
            raise InvalidQueryError(f"at most {MAX_FILTERS} filters are allowed")
        if kind is QueryKind.PROPORTION:
            if not self.condition:
                raise InvalidQueryError("a proportion query needs a condition")
        elif self.condition:
            raise InvalidQueryError(f"a condition applies only to proportion, not {kind}")
        if kind is QueryKind.HISTOGRAM:
            self._check_bins()
        elif self.bin_edges:
            raise InvalidQueryError(f"bin edges apply only to histogram, not {kind}")

    def _check_bins(self) -> None:
        edges = self.bin_edges
        if len(edges) < 2:
            raise InvalidQueryError("a histogram needs at least two bin edges")
        if len(edges) > MAX_BIN_EDGES:
            raise InvalidQueryError(f"a histogram takes at most {MAX_BIN_EDGES} bin edges")
        if not all(math.isfinite(e) for e in edges):
            raise InvalidQueryError("histogram bin edges must be finite")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise InvalidQueryError("histogram bin edges must be strictly increasing")

    def canonical(self) -> str:
        """A deterministic text of what is asked, for idempotency and the ledger."""
        doc: dict[str, object] = {
            "kind": self.kind.value,
            "cost": {self.cost.definition.symbol: format_amount(self.cost.amount)},
            "column": self.column,
            "bounds": [self.bounds.lower, self.bounds.upper] if self.bounds else None,
            "filters": sorted(
                (f.canonical() for f in self.filters), key=lambda d: json.dumps(d, sort_keys=True)
            ),
            "group_by": list(self.group_by),
            "condition": sorted(
                (f.canonical() for f in self.condition),
                key=lambda d: json.dumps(d, sort_keys=True),
            ),
            "bin_edges": list(self.bin_edges),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def check_query_id(query_id: str) -> None:
    """Query ids are printable, non-empty and short; they are stored verbatim."""
    if not query_id or len(query_id) > MAX_ID_CHARS or not query_id.isprintable():
        raise InvalidQueryError(f"query id must be 1 to {MAX_ID_CHARS} printable characters")
