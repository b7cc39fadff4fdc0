"""Combine nodes' noisy answers into federation-wide estimates with 95% intervals.

Combining is post-processing of DP releases and costs no privacy. Counts and
sums add; means and proportions are ratios of the *combined* noisy numerator
and denominator (never an average of node means); group-by and histogram
answers combine cell by cell over the public categories.

A cell is flagged unreliable (post-processing, no new release) when its
interval spans more than ``unreliable_share`` of the value range (means:
the clamping bounds; proportions: [0, 1]), when a mean's or proportion's
denominator interval reaches zero, or when the ratio fell outside the value
range and was clamped to a bound: such a cell is mostly noise or a bound,
not an estimate. :data:`UNRELIABLE_SHARE` is the default.

Every interval reflects the differential-privacy noise each node reported
(distribution and scale per component) and nothing else: not sampling error,
not data quality, not clients counted at several nodes. How each interval was
derived is stated in words in ``CombinedCell.method``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Protocol

from coordinator.results import CombinedCell, NodeOutcome
from tiaki.answer import Answer, Cell, Component
from tiaki.query import Query, QueryKind

Z_95 = NormalDist().inv_cdf(0.975)  # 1.95996...
# A ratio cell whose 95% interval covers more than half of everything the value
# could be says little beyond "somewhere in the range".
UNRELIABLE_SHARE = 0.5

_ADDITIVE: dict[QueryKind, str] = {
    QueryKind.COUNT: "count",
    QueryKind.COUNT_CLIENTS: "clients",
    QueryKind.SUM: "sum",
    QueryKind.HISTOGRAM: "count",
}
_RATIO: dict[QueryKind, tuple[str, str]] = {
    QueryKind.MEAN: ("shifted_sum", "count"),
    QueryKind.PROPORTION: ("numerator", "denominator"),
}
# Components a node rescales from its integer grid into column units (by
# 1/grid_unit, a shifted sum by twice that): see _moments.
_RESCALED = frozenset({"sum", "shifted_sum"})

Key = tuple[tuple[str, ...], str]


class Noise(Protocol):
    """A released or planned component's noise (Component, or a node's plan of one)."""

    @property
    def name(self) -> str: ...
    @property
    def distribution(self) -> str: ...
    @property
    def scale(self) -> float: ...


def noise_variance(distribution: str, scale: float) -> float:
    """Variance of one noise draw of ``distribution`` with OpenDP's ``scale``.

    Discrete Laplace (P(k) ∝ exp(-|k|/s)): exactly 2q/(1 − q)² with q = e^{-1/s}.
    Discrete Gaussian (P(k) ∝ exp(-k²/2σ²)): σ², an upper bound on its true
    variance (which is slightly below σ² for small σ), so intervals err wide.
    """
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"noise scale must be finite and non-negative, not {scale}")
    if distribution == "discrete_laplace":
        if scale == 0:
            return 0.0
        return 2.0 * math.exp(-1.0 / scale) / math.expm1(-1.0 / scale) ** 2
    if distribution == "discrete_gaussian":
        return scale * scale
    raise ValueError(f"unknown noise distribution {distribution!r}")


def _moments(c: Noise) -> tuple[float, float]:
    """Variance and fourth cumulant of a component's noise (the latter for _half_width)."""
    var = noise_variance(c.distribution, c.scale)
    if c.distribution != "discrete_laplace":
        return var, 0.0  # the discrete Gaussian's excess kurtosis is 0 or just below
    if c.name in _RESCALED:
        # Rescaled from an integer grid by a factor d >= 1; the exact formula at
        # the rescaled scale would understate the variance. The continuous
        # Laplace's 2s² bounds it for every d (κ4 = 3·var²), so no interval
        # depends on d (an answer's grid_unit gives it, for the exact variance).
        var = 2.0 * c.scale * c.scale
        return var, 3.0 * var * var
    q = math.exp(-1.0 / c.scale)  # DL = G1 − G2: κ4 = 2q(1 + 4q + q²)/(1 − q)⁴
    return var, (var * var * (1 + 4 * q + q * q) / (2 * q) if q > 0 else 0.0)


def _half_width(moments: Sequence[tuple[float, float]]) -> float:
    """95% half-width of a sum of independent noises from its variance and kurtosis.

    The normal quantile with a Cornish–Fisher correction for excess kurtosis
    γ2 = Σκ4/(Σvar)²: z = 1.96 + (z³ − 3z)·γ2/24. Plain 1.96·sd covers only
    about 93.7% when one discrete Laplace dominates (γ2 = 3); the corrected
    z (2.17 there) covers about 95.3%, and tends to 1.96 as nodes are added.
    """
    var = math.fsum(v for v, _ in moments)
    gamma2 = math.fsum(k for _, k in moments) / (var * var) if var > 0 else 0.0
    return (Z_95 + (Z_95**3 - 3 * Z_95) * gamma2 / 24) * math.sqrt(var)


def summed_noise_half_width(noises: Sequence[Noise]) -> float:
    """95% half-width of the sum of independent node noises, as combine gives for 2+ nodes."""
    return _half_width([_moments(n) for n in noises])


def ratio_half_width(
    numerators: Sequence[Noise], denominators: Sequence[Noise], offset: float, denominator: float
) -> float:
    """95% half-width of ΣS/ΣN by the delta method, as :func:`combine` computes it.

    ``offset`` is how far the ratio is from each numerator's shift (a mean's
    midpoint; 0 for a proportion's unshifted numerator, where it is the
    proportion itself), and ``denominator`` the combined denominator: both are
    data, so a planner passes assumed values.
    """
    lin = []
    for t, d in zip(numerators, denominators, strict=True):
        (vt, kt), (vn, kn) = _moments(t), _moments(d)
        lin.append((vt + offset**2 * vn, kt + offset**4 * kn))
    return _half_width(lin) / max(denominator, 1.0)


def _label(key: Key) -> str:
    group, bin_ = key
    return " ".join(["/".join(group), f"bin {bin_}" if bin_ else ""]).strip() or "(all)"


def _parts(node: str, cell: Cell, names: tuple[str, ...]) -> tuple[Component, ...]:
    by_name = {c.name: c for c in cell.components}
    out = []
    for name in names:
        c = by_name.get(name)
        where = f"node {node!r}, cell {_label((cell.group, cell.bin))}"
        if c is None:
            raise ValueError(f"{where}: no {name!r} component")
        if not all(map(math.isfinite, (c.value, c.scale, c.accuracy_95))) or c.scale <= 0:
            raise ValueError(f"{where}: component {name!r} is not finite or has no noise scale")
        if c.distribution not in ("discrete_laplace", "discrete_gaussian"):
            raise ValueError(f"{where}: unknown noise distribution {c.distribution!r}")
        out.append(c)
    return tuple(out)


def _align(answers: Sequence[tuple[str, Answer]]) -> tuple[list[Key], list[dict[Key, Cell]]]:
    """Cells of every answer by (group, bin), in the first answer's (schema) order."""
    tables = []
    for node, answer in answers:
        table = {(c.group, c.bin): c for c in answer.cells}
        if len(table) != len(answer.cells):
            raise ValueError(f"node {node!r} answered the same cell twice")
        tables.append(table)
    keys = [(c.group, c.bin) for c in answers[0][1].cells]
    for (node, _), table in zip(answers, tables, strict=True):
        if table.keys() != set(keys):
            raise ValueError(
                f"node {node!r} answered other cells than node {answers[0][0]!r} "
                f"({len(table)} against {len(keys)}); the schemas' categories differ"
            )
    return keys, tables


def _clip(x: float, lo: float, hi: float) -> float:
    return float(min(hi, max(lo, x)))


def _additive(parts: Sequence[Component]) -> tuple[float, float, str]:
    estimate = math.fsum(p.value for p in parts)
    if len(parts) == 1:
        return estimate, parts[0].accuracy_95, "exact: OpenDP 95% accuracy of one node's noise"
    method = (
        "normal approximation with a kurtosis (Cornish–Fisher) correction: "
        f"variance and 4th cumulant of the summed noise of {len(parts)} nodes"
    )
    return estimate, summed_noise_half_width(parts), method


@dataclass(frozen=True)
class _Ratio:
    estimate: float
    half_width: float
    lo: float  # clip bounds of the estimate and interval
    hi: float
    method: str
    raw: float  # the ratio before clipping
    denominator: float  # the combined noisy denominator, before the floor at 1
    denominator_half_width: float


def _ratio(
    query: Query, pairs: Sequence[tuple[Component, Component]], shifts: Sequence[float]
) -> _Ratio:
    """ΣS/ΣN with S_i = T_i + m_i·N_i: estimate, interval, clipping and the denominator."""
    num = math.fsum(t.value + m * d.value for (t, d), m in zip(pairs, shifts, strict=True))
    raw_den = math.fsum(d.value for _, d in pairs)
    den = max(raw_den, 1.0)
    lo, hi = -math.inf, math.inf
    if query.kind is QueryKind.PROPORTION:
        lo, hi, clip = 0.0, 1.0, "clipped to [0, 1]"
    elif query.bounds is not None:
        lo, hi, clip = query.bounds.lower, query.bounds.upper, "clipped to the query's bounds"
    else:
        clip = "not clipped: the nodes' clamping bounds are their own schemas'"
    estimate = _clip(num / den, lo, hi)
    # Delta method. With Var(S_i) = Var(T_i) + m_i²Var(N_i) and
    # Cov(S_i, N_i) = m_i·Var(N_i) (T_i and N_i have independent noise),
    # Var(ΣS) − 2R·Cov(ΣS, ΣN) + R²Var(ΣN) = Σ Var(T_i) + (m_i − R)²Var(N_i):
    # the noise of the linearised numerator Σ T_i + (m_i − R)·N_i, over ΣN.
    lin = []
    for (t, d), m in zip(pairs, shifts, strict=True):
        (vt, kt), (vn, kn), a = _moments(t), _moments(d), m - estimate
        lin.append((vt + a**2 * vn, kt + a**4 * kn))
    what = "sums" if query.kind is QueryKind.MEAN else "counts"
    method = (
        f"delta method for a ratio of noisy {what} of {len(pairs)} node(s) "
        f"(kurtosis-corrected normal approximation; denominator floored at 1; {clip})"
    )
    den_half = (
        pairs[0][1].accuracy_95
        if len(pairs) == 1
        else summed_noise_half_width([d for _, d in pairs])
    )
    return _Ratio(estimate, _half_width(lin) / den, lo, hi, method, num / den, raw_den, den_half)


def _value_range(query: Query, answers: Sequence[tuple[str, Answer]]) -> tuple[float, float]:
    """What a mean or proportion could be: [0, 1], the query's bounds, else the nodes' widest."""
    if query.kind is QueryKind.PROPORTION:
        return 0.0, 1.0
    if query.bounds is not None:
        return query.bounds.lower, query.bounds.upper
    reported = [a.bounds for _, a in answers if a.bounds is not None]
    if not reported:
        return -math.inf, math.inf
    return min(b[0] for b in reported), max(b[1] for b in reported)


def _unreliable(
    ratio: _Ratio, value_range: tuple[float, float], share: float, kind: QueryKind
) -> tuple[str, ...]:
    reasons = []
    lower, upper = value_range
    span = upper - lower
    low, high = (
        _clip(ratio.estimate - ratio.half_width, ratio.lo, ratio.hi),
        _clip(ratio.estimate + ratio.half_width, ratio.lo, ratio.hi),
    )
    if math.isfinite(span) and span > 0 and (high - low) > share * span:
        reasons.append(
            f"the 95% interval spans {100 * (high - low) / span:.0f}% of the value range "
            f"[{lower:g}, {upper:g}] (more than {100 * share:g}%)"
        )
    if ratio.denominator - ratio.denominator_half_width <= 0:
        what = "clients in scope" if kind is QueryKind.PROPORTION else "records"
        reasons.append(
            f"the denominator's interval reaches zero (about {ratio.denominator:.0f} ± "
            f"{ratio.denominator_half_width:.0f} {what}): too few to divide by"
        )
    if ratio.raw < lower or ratio.raw > upper:
        bound = lower if ratio.raw < lower else upper
        done = "clamped to" if bound in (ratio.lo, ratio.hi) else "beyond"
        reasons.append(
            f"{done} the bound {bound:g}: the noisy ratio fell outside [{lower:g}, {upper:g}]"
        )
    return tuple(reasons)


def combine(
    query: Query,
    answers: Sequence[tuple[str, Answer]],
    midpoints: Mapping[str, float] | None = None,
    unreliable_share: float = UNRELIABLE_SHARE,
) -> tuple[CombinedCell, ...]:
    """One combined cell per public cell, each with a 95% CI for the DP noise only.

    ``answers`` are (node name, answer) pairs, and each answer carries what
    combining it needs: a mean's carries the midpoint (L + U)/2 of the
    clamping bounds its node used, to undo the shift of its ``shifted_sum``.
    ``midpoints`` maps node names to it for answers kept without one. Raises
    ValueError naming the node on missing, non-finite or mismatched cells and
    components, or a missing midpoint.
    ``unreliable_share`` sets the interval-width rule for flagging cells.
    """
    if not answers:
        return ()
    keys, tables = _align(answers)
    nodes = [node for node, _ in answers]
    kind = query.kind
    shifts = [0.0] * len(nodes)  # a proportion's numerator is not shifted
    value_range = _value_range(query, answers)
    if kind is QueryKind.MEAN:
        shifts = [
            a.midpoint if a.midpoint is not None else (midpoints or {}).get(node, math.nan)
            for node, a in answers
        ]
        for node, m in zip(nodes, shifts, strict=True):
            if not math.isfinite(m):
                raise ValueError(f"node {node!r}: a mean needs the midpoint of its clamping bounds")
    out = []
    for key in keys:
        cells = [(node, table[key]) for node, table in zip(nodes, tables, strict=True)]
        lo, hi = -math.inf, math.inf
        flags: tuple[str, ...] = ()
        if kind in _ADDITIVE:
            parts = [_parts(n, c, (_ADDITIVE[kind],))[0] for n, c in cells]
            estimate, half, method = _additive(parts)
        else:
            pairs = [(t, d) for t, d in (_parts(n, c, _RATIO[kind]) for n, c in cells)]
            ratio = _ratio(query, pairs, shifts)
            estimate, half, lo, hi, method = (
                ratio.estimate, ratio.half_width, ratio.lo, ratio.hi, ratio.method
            )  # fmt: skip
            flags = _unreliable(ratio, value_range, unreliable_share, kind)
        out.append(
            CombinedCell(
                group=key[0],
                bin=key[1],
                estimate=estimate,
                half_width=half,
                ci_low=_clip(estimate - half, lo, hi),
                ci_high=_clip(estimate + half, lo, hi),
                method=method,
                nodes=len(answers),
                unreliable=flags,
            )
        )
    return tuple(out)


def combine_outcomes(
    query: Query,
    outcomes: Sequence[NodeOutcome],
    midpoints: Mapping[str, float] | None = None,
    unreliable_share: float = UNRELIABLE_SHARE,
) -> tuple[CombinedCell, ...]:
    """Combine the answered (or replayed) outcomes; () when no node answered."""
    answers = []
    for o in outcomes:
        if o.answered:
            if o.answer is None:
                raise ValueError(f"node {o.node!r} is marked {o.status} but carries no answer")
            answers.append((o.node, o.answer))
    return combine(query, answers, midpoints, unreliable_share)


def combine_secure(
    query: Query,
    total: Answer,
    summed: int,
    unreliable_share: float = UNRELIABLE_SHARE,
) -> tuple[CombinedCell, ...]:
    """One cell per public cell from a secure total, with its 95% interval.

    The total's noise is (close to) one discrete Gaussian, so its interval is
    the normal one; ratios use the same delta method as per-node answers.
    Post-processing of the released total: costs nothing.
    """
    ratio = query.kind in (QueryKind.MEAN, QueryKind.PROPORTION)
    method = (
        f"secure sum of {summed} nodes' inputs with one distributed discrete Gaussian noise "
        f"(variance at most the sum of their {summed} shares'): "
        + (
            "delta method for the ratio of the noisy totals (denominator floored at 1)"
            if ratio
            else "normal 95% interval"
        )
    )
    combined = combine(query, [(total.node_id, total)], None, unreliable_share)
    return tuple(replace(cell, method=method, nodes=summed) for cell in combined)
