"""Choosing a secure sum's session from what the nodes publish: members, threshold, noise.

Reads no record and spends nothing. The coordinator chooses:

- the members: the nodes that take part in secure sums (``GetInfo``), are in
  zCDP, would afford the question (``Plan``) and whose worst-case caps the
  session would not break; each node's own pins decide whether it accepts
  the others;
- the colluders ``c``: the most any member assumes (a session assuming fewer
  is refused by that member), or more if the analyst asks;
- dropouts ``t`` tolerated, so the threshold N − t, kept above (N + c)/2
  (Bonawitz et al. 2017, active model) and leaving h = N − t − c ≥ 1 honest
  shares in any released sum;
- per component, γ from the largest central scale any member needs
  (:func:`tiaki.distributed_noise.scale_factor_for`) and σᵢ = γ·σ/√h, raised
  a hair; each member checks it against its own sensitivity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from coordinator.client import NodeClient
from coordinator.combine import Z_95
from coordinator.fanout import Federation, failure_outcome
from coordinator.planning import cheapest_cost
from coordinator.results import (
    NodeStatus,
)
from tiaki.budget import PrivacyDefinition, display_amount
from tiaki.distributed_noise import (
    error_ratio,
    scale_factor_for,
    session_share_scale,
)
from tiaki.errors import InvalidQueryError, TiakiError
from tiaki.node_info import NodeInfo, NodePlan, SecureAggregationInfo
from tiaki.query import Query

DEFAULT_SESSION_SECONDS = 300


class SecureQuestionError(InvalidQueryError):
    """The federation cannot hold a secure sum for this question as it stands; nothing sent."""


@dataclass(frozen=True)
class SecureMember:
    """A node that would take part: its federation name, its plan and its ledger key."""

    name: str
    info: NodeInfo
    plan: NodePlan


@dataclass(frozen=True)
class SecurePlan:
    """A secure session's public parameters, chosen from the nodes' plans; nothing spent.

    ``central_scales`` are the largest central discrete Gaussian scales any
    member needs, per component, in the query's integer units.
    ``excluded`` says why each other node is left out.
    """

    query: Query
    members: tuple[SecureMember, ...]
    excluded: Mapping[str, tuple[NodeStatus, str]]
    threshold: int
    colluders: int
    dropouts: int
    central_scales: tuple[float, ...]
    scale_factors: tuple[int, ...]
    share_scales: tuple[float, ...]
    grid_unit: float | None
    midpoint: float | None

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def honest(self) -> int:
        return self.threshold - self.colluders

    def half_widths(self, survivors: int | None = None) -> tuple[float, ...]:
        """95% half-width of each component's total noise, in column units."""
        n = self.size if survivors is None else survivors
        return tuple(
            Z_95 * math.sqrt(n) * scale / gamma / column_divisor(name, self.grid_unit)
            for name, scale, gamma in zip(
                self.components, self.share_scales, self.scale_factors, strict=True
            )
        )

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.members[0].plan.components)

    def worst_case(self, member: SecureMember) -> Fraction:
        """About what ``member``'s share alone would cost it (ρ_local), from public figures.

        Its central scale σ_c satisfies Δ²/(2σ_c²) ≤ ρ_j (its plan's
        calibration), so (γΔ)²/(2σᵢ²) ≤ ρ_j·(γσ_c/σᵢ)²: an upper bound on
        OpenDP's map of the share, summed over the components, raised by 2⁻²⁰
        for the floats both sides compute in.
        """
        each = self.query.cost.amount / len(self.share_scales)
        total = Fraction(0)
        for j, (gamma, scale) in enumerate(zip(self.scale_factors, self.share_scales, strict=True)):
            component = member.plan.components[j]
            central = component.scale * column_divisor(component.name, self.grid_unit)
            total += each * Fraction(gamma * central / scale) ** 2
        return total * (1 + Fraction(1, 2**20))

    def error_ratio(self, survivors: int | None = None) -> float:
        """The total noise's standard deviation over one central release's."""
        return error_ratio(self.size if survivors is None else survivors, self.honest)


def column_divisor(name: str, grid_unit: float | None) -> float:
    """From the integer grid a node sums on to column units (as node.answering does)."""
    if grid_unit is None:
        return 1.0
    return {"sum": 1.0 / grid_unit, "shifted_sum": 2.0 / grid_unit}.get(name, 1.0)


def _candidate(
    name: str, client: NodeClient, query: Query, query_id: str
) -> SecureMember | tuple[NodeStatus, str]:
    try:
        info = client.info()
        if info.secure_aggregation is None:
            return NodeStatus.REFUSED, "takes no part in secure sums (no secure_aggregation policy)"
        if info.definition is not PrivacyDefinition.ZCDP:
            return NodeStatus.REFUSED, "accounts in pure DP; secure sums need zCDP"
        plan = client.plan(query, query_id)
    except TiakiError as exc:
        return failure_outcome(exc)
    budget = plan.budget
    if budget is not None and not plan.replay and plan.charge.amount > budget.available:
        return NodeStatus.REFUSED, (
            f"would cost {display_amount(plan.charge.amount)} but has "
            f"{display_amount(budget.available)} left"
        )
    return SecureMember(name, info, plan)


def plan_secure(
    federation: Federation,
    query: Query,
    query_id: str = "",
    *,
    dropouts: int | None = None,
    colluders: int = 0,
) -> SecurePlan:
    """Choose a session for ``query`` from the nodes' info and plans; spends nothing.

    ``dropouts`` defaults to a tenth of the members (at least 1 when there
    are 4 or more); ``colluders`` is raised to the most any member assumes.
    Raises :class:`SecureQuestionError` when no safe session exists.
    """
    if query.cost.definition is not PrivacyDefinition.ZCDP:
        raise SecureQuestionError("a secure sum is asked in zCDP: give the cost as --rho")
    results = dict(federation.each(lambda name, client: _candidate(name, client, query, query_id)))
    excluded: dict[str, tuple[NodeStatus, str]] = {}
    members: list[SecureMember] = []
    for name in federation.names:
        got = results[name]
        if isinstance(got, SecureMember):
            members.append(got)
        else:
            excluded[name] = got
    while True:
        members = _large_enough(members, excluded)
        plan = choose_session(query, members, excluded, dropouts=dropouts, colluders=colluders)
        over = [m for m in plan.members if plan.worst_case(m) > _worst_case_room(m)]
        if not over:
            return plan
        for m in over:
            excluded[m.name] = (
                NodeStatus.SKIPPED,
                f"its worst case would be about {display_amount(plan.worst_case(m))}, over "
                f"the {display_amount(_worst_case_room(m))} its policy allows now",
            )
        members = [m for m in members if m not in over]


def _worst_case_room(member: SecureMember) -> Fraction:
    info = _info(member)
    return min(info.worst_case_per_query, info.worst_case_remaining)


def _large_enough(
    members: list[SecureMember], excluded: dict[str, tuple[NodeStatus, str]]
) -> list[SecureMember]:
    """The members left once those wanting a larger cohort than this (who would refuse) go."""
    while True:
        keep = []
        for m in members:
            info = _info(m)
            if info.min_cohort > len(members):
                excluded[m.name] = (
                    NodeStatus.SKIPPED,
                    f"takes part only in sessions of at least {info.min_cohort} members",
                )
            else:
                keep.append(m)
        if len(keep) == len(members):
            return keep
        members = keep


def choose_session(
    query: Query,
    members: Sequence[SecureMember],
    excluded: Mapping[str, tuple[NodeStatus, str]],
    *,
    dropouts: int | None,
    colluders: int,
) -> SecurePlan:
    """The session for ``members`` as they are (their plans and info); see the module docs."""
    members = sorted(members, key=lambda m: m.info.node_id)
    n = len(members)
    if n < 2:
        raise SecureQuestionError(
            f"a secure sum needs at least 2 nodes that take part; {n} would ({_reasons(excluded)})"
        )
    c = max([colluders, *(_info(m).colluders for m in members)])
    most = (n - c - 1) // 2  # 2·(N − t) > N + c, and h = N − t − c ≥ 1
    if most < 0:
        raise SecureQuestionError(
            f"{n} members cannot hold a secure sum that assumes {c} colluders: more than "
            f"{c} honest members are needed (Bonawitz et al.'s threshold is above (N + c)/2)"
        )
    wanted = dropouts if dropouts is not None else max(1 if n >= 4 else 0, n // 10)
    if wanted < 0:
        raise SecureQuestionError("dropouts must be 0 or more")
    t = min(wanted, most)
    threshold = n - t
    honest = threshold - c
    grid_units = {m.plan.grid_unit for m in members}
    bounds = {m.plan.bounds for m in members}
    if len(grid_units) > 1 or len(bounds) > 1:
        raise SecureQuestionError(
            "the members clamp or scale this column differently (their schemas' bounds or "
            "decimals differ), so their sums cannot be added; give --bounds, or ask per node"
        )
    (grid_unit,) = grid_units
    names = [c.name for c in members[0].plan.components]
    for m in members:
        if [c.name for c in m.plan.components] != names or m.plan.cells != members[0].plan.cells:
            raise SecureQuestionError(
                f"{m.name} would answer with other cells or components than "
                f"{members[0].name}; the schemas' categories differ"
            )
    central = tuple(
        max(m.plan.components[j].scale * column_divisor(name, grid_unit) for m in members)
        for j, name in enumerate(names)
    )
    gammas = tuple(scale_factor_for(s, honest) for s in central)
    scales = tuple(session_share_scale(s, honest, g) for s, g in zip(central, gammas, strict=True))
    return SecurePlan(
        query=query,
        members=tuple(members),
        excluded=dict(excluded),
        threshold=threshold,
        colluders=c,
        dropouts=t,
        central_scales=central,
        scale_factors=gammas,
        share_scales=scales,
        grid_unit=grid_unit,
        midpoint=members[0].plan.midpoint,
    )


def _info(member: SecureMember) -> SecureAggregationInfo:
    info = member.info.secure_aggregation
    assert info is not None  # only nodes that take part become members
    return info


def choose_secure_cost(
    federation: Federation,
    query: Query,
    target: float,
    ceiling: Fraction,
    *,
    dropouts: int | None = None,
    colluders: int = 0,
) -> Query:
    """The cheapest ρ (on the planner's grid, up to ``ceiling``) whose secure sum has a
    95% half-width of at most ``target`` in every cell. Spends nothing."""

    def half_width(at: Query) -> float:
        plan = plan_secure(federation, at, dropouts=dropouts, colluders=colluders)
        return max(plan.half_widths())

    return cheapest_cost(query, target, ceiling, half_width, "as a secure sum")


def _reasons(excluded: Mapping[str, tuple[NodeStatus, str]]) -> str:
    return "; ".join(f"{name}: {why}" for name, (_, why) in excluded.items()) or "no nodes"
