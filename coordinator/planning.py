"""Knowing before asking: cost per node and expected 95% half-width, spending nothing.

Everything here comes from each node's ``Plan``, which the node decides from
its schema and policy alone, so planning reveals nothing about any record.
Ratio estimates (means, proportions) have intervals that depend on their
denominators, which are data. For them the plan states the half-width at an
assumed denominator (``expected_count``; without one, a guess of
:data:`GUESSED_COUNT_PER_NODE` per node, labelled as a guess) and at the worst
place the ratio could be (a mean at a bound of its clamping range, a
proportion at 1), so the real interval is at most that wide when the
denominator is at least as large.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction

from coordinator.client import NodeClient
from coordinator.combine import ratio_half_width, summed_noise_half_width
from coordinator.fanout import Federation, Preflight, preflight
from tiaki.budget import display_amount
from tiaki.errors import InvalidQueryError, TiakiError
from tiaki.node_info import NodePlan
from tiaki.query import PrivacyCost, Query, QueryKind

ADDITIVE = frozenset({QueryKind.COUNT, QueryKind.COUNT_CLIENTS, QueryKind.SUM, QueryKind.HISTOGRAM})
# Costs are searched on a grid of 1/10000: fine enough for any analyst, and a
# decimal an analyst can read back.
COST_STEP = Fraction(1, 10_000)
# Denominator assumed per answering node when planning a mean or proportion
# without --expected-count: a small NGO's typical group. Always labelled a guess.
GUESSED_COUNT_PER_NODE = 100


@dataclass(frozen=True)
class QuestionPlan:
    query: Query
    nodes: dict[str, Preflight]
    expected_half_width: float | None  # additive kinds: per cell, all ready nodes combined
    method: str

    @property
    def total_cost(self) -> Fraction:
        return sum(
            (c.plan.charge.amount for c in self.nodes.values() if c.plan),
            Fraction(0),
        )


def _ratio_plan(
    kind: QueryKind, plans: list[NodePlan], expected_count: float | None
) -> tuple[float | None, str]:
    count = expected_count
    guessed = count is None
    if count is None:
        count = float(GUESSED_COUNT_PER_NODE * len(plans))
    numerators = [p.components[0] for p in plans]
    denominators = [p.components[1] for p in plans]
    if kind is QueryKind.MEAN:
        ranges = [p.bounds for p in plans if p.bounds is not None]
        if not ranges:
            return None, "the nodes did not report their clamping bounds"
        lower, upper = min(r[0] for r in ranges), max(r[1] for r in ranges)
        offset, where = (upper - lower) / 2, f"a mean at a bound of [{lower:g}, {upper:g}]"
        unit = "in the column's units"
    else:
        offset, where, unit = 1.0, "a proportion near 1", "as a proportion"
    width = ratio_half_width(numerators, denominators, offset, count)
    basis = (
        f"a guess of {GUESSED_COUNT_PER_NODE} per node; give --expected-count"
        if guessed
        else "--expected-count"
    )
    return width, (
        f"{unit}, for a denominator of {count:g} ({basis}), at worst ({where}); delta method "
        f"over {len(plans)} node(s): narrower with a larger denominator"
    )


def expected_half_width(
    kind: QueryKind, plans: list[NodePlan], expected_count: float | None = None
) -> tuple[float | None, str]:
    """The 95% half-width each combined cell would have, from the planned noise alone.

    Means and proportions: at ``expected_count`` (see the module docs).
    """
    if not plans:
        return None, "no node would answer"
    if kind not in ADDITIVE:
        return _ratio_plan(kind, plans, expected_count)
    if len(plans) == 1:
        return plans[0].components[0].accuracy_95, "exact: OpenDP 95% accuracy of one node's noise"
    width = summed_noise_half_width([p.components[0] for p in plans])
    return width, f"kurtosis-corrected normal approximation over {len(plans)} nodes"


def plan_question(
    federation: Federation, query: Query, expected_count: float | None = None
) -> QuestionPlan:
    checks = preflight(federation, query)
    ready = [c.plan for c in checks.values() if c.ok and c.plan is not None]
    half_width, method = expected_half_width(query.kind, ready, expected_count)
    return QuestionPlan(query, checks, half_width, method)


def _plans_at(federation: Federation, query: Query) -> list[NodePlan]:
    def plan(name: str, client: NodeClient) -> NodePlan | None:
        try:
            return client.plan(query)
        except TiakiError:
            return None

    return [p for _, p in federation.each(plan) if p is not None]


def choose_cost(federation: Federation, query: Query, target: float, ceiling: Fraction) -> Query:
    """The cheapest cost (on a 1/10000 grid, up to ``ceiling``) whose planned half-width
    is at most ``target``. Spends nothing."""

    def half_width(at: Query) -> float | None:
        return expected_half_width(query.kind, _plans_at(federation, at))[0]

    return cheapest_cost(query, target, ceiling, half_width)


def cheapest_cost(
    query: Query,
    target: float,
    ceiling: Fraction,
    half_width: Callable[[Query], float | None],
    asked: str = "",
) -> Query:
    """The cheapest cost on the :data:`COST_STEP` grid, up to ``ceiling``, at which
    ``half_width`` (the planned 95% half-width of ``query`` at that cost, None if it
    cannot be planned) is at most ``target``: a bisection, as the width falls with cost.

    ``asked`` names how the question would be asked, for the refusal ("as a secure sum").
    """
    if query.kind not in ADDITIVE:
        raise InvalidQueryError(
            "--target-ci needs a count, count_clients, sum or histogram: the interval of a "
            "mean or proportion depends on its denominator, which is data"
        )
    if not math.isfinite(target) or target <= 0:
        raise InvalidQueryError("--target-ci must be a positive number")

    def at(steps: int) -> Query:
        return replace(query, cost=PrivacyCost(query.cost.definition, steps * COST_STEP))

    def reaches(steps: int) -> bool:
        width = half_width(at(steps))
        return width is not None and width <= target

    high = int(ceiling / COST_STEP)
    if high < 1 or not reaches(high):
        raise InvalidQueryError(
            f"no cost up to the nodes' per-query maximum ({display_amount(ceiling)}) reaches "
            f"a 95% half-width of {target:g}{f' {asked}' if asked else ''}; ask a coarser "
            "question or accept a wider interval"
        )
    low = 0  # invariant: reaches(high) and not reaches(low) (cost 0 never does)
    while high - low > 1:
        mid = (low + high) // 2
        if reaches(mid):
            high = mid
        else:
            low = mid
    return at(high)
