"""Turns exact aggregates into a released answer: noise, post-processing, charge.

The requested cost of a query is split exactly and evenly between its
components (a mean releases a shifted sum and a count; a proportion a
numerator and a denominator): ε 0.1 over two components is 0.05 each. Each
component's noise scale is chosen so that OpenDP's privacy map at that scale
is at most its share, checked exactly, so the query is charged exactly what
was asked, and the maps' total is recorded beside the charge. Everything after
the OpenDP release is post-processing and costs nothing: ratios, clamping into
public bounds, approximate accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from node.engine import ExactAggregate, QueryPlan
from node.mechanisms import (
    NoisyVector,
    accuracy_95,
    calibrate,
    distribution_name,
    privacy_cost,
    release,
)
from tiaki.answer import Cell, Component
from tiaki.budget import PrivacyDefinition
from tiaki.query import QueryKind


@dataclass(frozen=True)
class ReleaseCost:
    """What a release charges (exactly the requested cost) and OpenDP's map of it."""

    charge: Fraction
    privacy_map: Fraction

    def __post_init__(self) -> None:
        if not 0 < self.privacy_map <= self.charge:
            raise ArithmeticError(
                f"OpenDP's privacy map {self.privacy_map} is not within the charge {self.charge}"
            )


def shares(requested: Fraction, components: int) -> tuple[Fraction, ...]:
    """The requested cost split exactly and evenly between ``components``."""
    share = requested / components
    return (share,) * components


def _release_all(
    aggregates: tuple[ExactAggregate, ...], budget: Fraction, definition: PrivacyDefinition
) -> tuple[list[NoisyVector], ReleaseCost]:
    noisy = []
    for agg, share in zip(aggregates, shares(budget, len(aggregates)), strict=True):
        released = release(
            agg.values,
            agg.l1 if definition is PrivacyDefinition.PURE else agg.l2,
            share,
            definition,
        )
        # calibrate() guarantees this; it is checked here because it is what
        # makes charging the requested share honest.
        if released.charge > share:
            raise ArithmeticError(f"component {agg.name} would cost more than its share")
        noisy.append(released)
    return noisy, ReleaseCost(budget, sum((n.charge for n in noisy), Fraction(0)))


@dataclass(frozen=True)
class PlannedNoise:
    """The noise one component would carry, in column units, its share of the charge
    and OpenDP's privacy map at that scale (at most the share)."""

    name: str
    distribution: str
    scale: float
    accuracy_95: float
    charge: Fraction
    privacy_map: Fraction


def _unit(plan: QueryPlan, name: str) -> float:
    """Sums live on a fixed-point grid (factor 1 for integer columns); the
    shifted sum of a mean is doubled as well. This scales back to column units."""
    spec = plan.numeric
    if spec is None:
        return 1.0
    return {"sum": spec.factor, "shifted_sum": 2.0 * spec.factor}.get(name, 1.0)


def plan_noise(plan: QueryPlan, definition: PrivacyDefinition) -> tuple[PlannedNoise, ...]:
    """What releasing this plan would add and charge, without any data."""
    planned = []
    split = shares(plan.query.cost.amount, len(plan.components))
    for s, share in zip(plan.sensitivities, split, strict=True):
        sensitivity = s.l1 if definition is PrivacyDefinition.PURE else s.l2
        scale = calibrate(definition, float(sensitivity), share)
        divisor = _unit(plan, s.name)
        planned.append(
            PlannedNoise(
                s.name,
                distribution_name(definition),
                scale / divisor,
                accuracy_95(definition, scale) / divisor,
                share,
                privacy_cost(definition, scale, sensitivity),
            )
        )
    return tuple(planned)


def release_cells(
    plan: QueryPlan, aggregates: tuple[ExactAggregate, ...], definition: PrivacyDefinition
) -> tuple[tuple[Cell, ...], ReleaseCost]:
    """Release every component with OpenDP and build the cells; returns (cells, cost)."""
    noisy, cost = _release_all(aggregates, plan.query.cost.amount, definition)
    kind = plan.query.kind
    columns = []
    for agg, nv in zip(aggregates, noisy, strict=True):
        divisor = _unit(plan, agg.name)
        columns.append(
            (
                agg.name,
                nv.values.astype(np.float64) / divisor,
                nv.distribution,
                nv.scale / divisor,
                nv.accuracy_95 / divisor,
            )
        )

    n_bins = len(plan.bin_labels)
    cells = []
    for i in range(plan.n_cells):
        components = tuple(
            Component(name, float(values[i]), dist, scale, acc)
            for name, values, dist, scale, acc in columns
        )
        value, accuracy = _estimate(kind, components, plan)
        cells.append(
            Cell(
                group=plan.group_labels[i // n_bins],
                bin=plan.bin_labels[i % n_bins],
                value=value,
                accuracy_95=accuracy,
                components=components,
            )
        )
    return tuple(cells), cost


def _estimate(
    kind: QueryKind, parts: tuple[Component, ...], plan: QueryPlan
) -> tuple[float, float]:
    """The cell's estimate from its noisy components, and an approximate 95% half-width."""
    if kind is QueryKind.MEAN:
        assert plan.numeric is not None
        spec = plan.numeric
        lower, upper = spec.lower, spec.upper
        midpoint = (spec.lower_int + spec.upper_int) / (2.0 * spec.factor)
        shifted, count = parts
        n = max(count.value, 1.0)
        offset = shifted.value / n
        mean = min(upper, max(lower, midpoint + offset))
        # First-order error of a ratio; honest about being approximate.
        accuracy = (shifted.accuracy_95 + abs(offset) * count.accuracy_95) / n
        return mean, min(accuracy, upper - lower)
    if kind is QueryKind.PROPORTION:
        numerator, denominator = parts
        d = max(denominator.value, 1.0)
        p = min(1.0, max(0.0, numerator.value / d))
        accuracy = (numerator.accuracy_95 + p * denominator.accuracy_95) / d
        return p, min(accuracy, 1.0)
    (only,) = parts
    return only.value, only.accuracy_95
