"""Sensitivity under the privacy unit: how far one client can move a released vector.

This module and :mod:`node.mechanisms` are the privacy-critical pair: here,
from the plan alone, each released component's L1 and L2 sensitivity; there,
the OpenDP measurement that is calibrated to it. Nothing here looks at a
record, so a sensitivity can never depend on the data.

The privacy unit is one client *with all of their records*: neighbouring
datasets differ by adding or removing one client, and per-client bounding has
already left each client with at most ``k = max_records_per_client`` records.
Numeric values are summed as integers on a grid fixed by the public bounds
(:func:`fixed_point_grid`), so sums and their sensitivities are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from tiaki.errors import InvalidQueryError
from tiaki.query import QueryKind

# Float columns are summed as integers on a dyadic grid so sums are exact and
# their sensitivity is exact. 2**24 steps across the bounds is finer than any
# released noise, and keeps every per-record term far inside int32.
FIXED_POINT_RANGE = 2.0**24
# Integer columns are summed as they are while every term stays below 2**31:
# int64 sums then cannot overflow below 2**32 records.
INTEGER_RANGE = 2.0**31
MAX_FIXED_POINT_SCALE = 2.0**20

# The exact vectors each kind of query releases, in release order; the budget
# is split evenly between them.
COMPONENTS: dict[QueryKind, tuple[str, ...]] = {
    QueryKind.COUNT: ("count",),
    QueryKind.COUNT_CLIENTS: ("clients",),
    QueryKind.SUM: ("sum",),
    QueryKind.MEAN: ("shifted_sum", "count"),
    QueryKind.PROPORTION: ("numerator", "denominator"),
    QueryKind.HISTOGRAM: ("count",),
}


@dataclass(frozen=True)
class NumericSpec:
    """How a numeric column is clamped and turned into integers for exact sums."""

    column: str
    lower: float
    upper: float
    factor: float  # value * factor, rounded, is the integer that is summed
    integer: bool  # the column holds whole numbers (factor is then 1)
    lower_int: int
    upper_int: int

    @property
    def max_abs_int(self) -> int:
        return max(abs(self.lower_int), abs(self.upper_int))


def fixed_point_grid(column: str, lower: float, upper: float, integer: bool) -> NumericSpec:
    """The integer grid for summing ``column`` clamped to [lower, upper], from public bounds.

    Raises InvalidQueryError when the bounds are narrower than one grid step.
    """
    magnitude = max(abs(lower), abs(upper), 2.0**-20)
    if integer and magnitude <= INTEGER_RANGE:
        factor = 1.0
    else:
        # Floats, and integers too large to sum safely in int64, go on a
        # dyadic grid chosen from the public bounds alone.
        exponent = math.floor(math.log2(FIXED_POINT_RANGE / magnitude))
        factor = min(MAX_FIXED_POINT_SCALE, 2.0**exponent)
        integer = False
    lower_int, upper_int = math.ceil(lower * factor), math.floor(upper * factor)
    if lower_int >= upper_int:
        raise InvalidQueryError(
            f"bounds [{lower}, {upper}] are narrower than the resolution of {column!r} "
            f"({1 / factor:g}); widen them"
        )
    return NumericSpec(
        column=column,
        lower=lower,
        upper=upper,
        factor=factor,
        integer=integer,
        lower_int=lower_int,
        upper_int=upper_int,
    )


@dataclass(frozen=True)
class Sensitivity:
    """How far one client can move one released vector: L1 for pure DP, L2 for zCDP."""

    name: str
    l1: int
    l2: float


def sqrt_up(m: int) -> float:
    """The float nearest above √m: an L2 bound must never be rounded down."""
    root = math.sqrt(m)
    if Fraction(root) ** 2 < m:
        root = math.nextafter(root, math.inf)
    return root


def sensitivities(
    kind: QueryKind, k: int, n_cells: int, numeric: NumericSpec | None
) -> tuple[Sensitivity, ...]:
    """Each released component's sensitivity, in :data:`COMPONENTS` order.

    One client, with all of their (at most ``k``) records, is added or
    removed; the answer has ``n_cells`` cells (groups times histogram bins).
    """
    if kind in (QueryKind.COUNT, QueryKind.HISTOGRAM):
        # One client adds or removes at most k records, each in one cell (or
        # one (group, bin) cell): L1 <= k, and L2 <= k (all k in one cell).
        return (Sensitivity("count", l1=k, l2=float(k)),)
    if kind in (QueryKind.COUNT_CLIENTS, QueryKind.PROPORTION):
        # A client is counted once in each cell they touch, and touches at
        # most m = min(k, cells) cells: L1 = m, L2 = sqrt(m). A proportion's
        # numerator and denominator are each such counts.
        m = min(k, n_cells)
        return tuple(Sensitivity(name, l1=m, l2=sqrt_up(m)) for name in COMPONENTS[kind])
    if numeric is None:
        raise ValueError(f"a {kind} query needs its numeric grid")
    if kind is QueryKind.SUM:
        # Each record adds a value in [L, U] to one cell; one client's k
        # records change the vector by at most k * max(|L|, |U|) in L1, and in
        # L2 too when all k land in one cell.
        bound = k * numeric.max_abs_int
        return (Sensitivity("sum", l1=bound, l2=float(bound)),)
    # MEAN releases T = sum(2x - (L + U)) and N = count. Shifting by the
    # midpoint halves the range each term can take: 2x - (L+U) lies in
    # [-(U-L), U-L], so one client moves T by at most k * (U - L) and N by k.
    # Doubling keeps the midpoint an integer on the fixed-point grid.
    width = k * (numeric.upper_int - numeric.lower_int)
    return (
        Sensitivity("shifted_sum", l1=width, l2=float(width)),
        Sensitivity("count", l1=k, l2=float(k)),
    )
