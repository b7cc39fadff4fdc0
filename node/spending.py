"""The budget arithmetic the privacy ledger checks every charge against, without storage.

Privacy unit: one client of the node's data set (see the node's policy); every
amount here is privacy loss in the policy's definition (ε for pure DP, ρ for
zCDP), exact as a Fraction. Nothing here spends: :class:`node.ledger.PrivacyLedger`
reads the spending inside its write transaction, asks :func:`refusal` whether
a request fits, and spends in that same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from fractions import Fraction

from node.config import BudgetPolicy, CoordinatorGrant
from tiaki.budget import BudgetStatus, PeriodBudget, PrivacyDefinition, read_amount
from tiaki.errors import InsufficientBudgetError, PerQueryMaximumError
from tiaki.ledger_records import GrantRecord, PolicyRecord
from tiaki.periods import LIFETIME, period_bounds, period_label


def available(
    budget: BudgetPolicy, spending: Mapping[str, Fraction], label: str
) -> tuple[Fraction, str]:
    """What may still be spent in period ``label`` and the name of the binding limit."""
    left = max(Fraction(0), budget.limit - spending.get(label, Fraction(0)))
    name = (
        "remaining lifetime budget" if label == LIFETIME else f"remaining budget for period {label}"
    )
    if budget.lifetime_limit is not None:
        total = sum(spending.values(), Fraction(0))
        life = max(Fraction(0), budget.lifetime_limit - total)
        if life < left:
            left, name = life, "remaining lifetime budget"
    return left, name


def refusal(
    requested: Fraction,
    *,
    per_query_max: Fraction,
    budget: BudgetPolicy,
    spending: Mapping[str, Fraction],
    label: str,
    identity: str,
    identity_cap: Fraction | None = None,
    identity_spent: Fraction = Fraction(0),
) -> InsufficientBudgetError | None:
    """Why ``requested`` does not fit now, or None if it does.

    ``spending`` is every period's total and ``identity_spent`` what
    ``identity`` spent in ``label``, both as the caller's transaction sees
    them; ``identity_cap`` is that identity's per-period cap, if it has one.
    """
    if requested <= 0:
        raise ValueError(f"requested privacy cost must be positive, not {requested}")
    if requested > per_query_max:
        return PerQueryMaximumError(requested, per_query_max)
    left, limit = available(budget, spending, label)
    if requested > left:
        return InsufficientBudgetError(requested, left, limit)
    if identity_cap is not None:
        left = max(Fraction(0), identity_cap - identity_spent)
        if requested > left:
            return InsufficientBudgetError(
                requested, left, f"remaining budget of {identity} for period {label}"
            )
    return None


def regroup(charges: Iterable[tuple[str, str]], period_kind: str) -> dict[str, Fraction]:
    """Each period's spending, summed exactly from ``(commit time, charge)`` pairs.

    Grouped by commit time, not by the label a charge was made under, so a
    change of period kind (yearly to monthly, say) places every charge in
    exactly one of the new periods.
    """
    totals: dict[str, Fraction] = {}
    for created, charge in charges:
        label = period_label(period_kind, datetime.fromisoformat(created))
        totals[label] = totals.get(label, Fraction(0)) + read_amount(charge)
    return totals


def budget_status(
    *,
    definition: PrivacyDefinition,
    budget: BudgetPolicy,
    per_query_max: Fraction,
    created_at: str,
    label: str,
    spending: Mapping[str, Fraction],
) -> BudgetStatus:
    """Spending as committed: period ``label`` (the current one), lifetime, every period."""

    def period(name: str) -> PeriodBudget:
        start, end = period_bounds(name)
        if name == LIFETIME:
            start = created_at[:10]
        return PeriodBudget(name, start, end, budget.limit, spending.get(name, Fraction(0)))

    return BudgetStatus(
        definition=definition,
        per_query_max=per_query_max,
        current=period(label),
        lifetime_spent=sum(spending.values(), Fraction(0)),
        lifetime_limit=budget.lifetime_limit,
        periods=tuple(period(name) for name in sorted(spending)),
    )


def policy_record(
    *,
    node_id: str,
    definition: PrivacyDefinition,
    budget: BudgetPolicy,
    per_query_max: Fraction,
    grants: Iterable[CoordinatorGrant],
) -> PolicyRecord:
    """The limits a ledger enforces, as its chain records them."""
    return PolicyRecord(
        node_id=node_id,
        definition=definition.value,
        period=budget.period,
        limit=budget.limit,
        lifetime_limit=budget.lifetime_limit,
        per_query_max=per_query_max,
        coordinators=tuple(
            GrantRecord(
                grant.identity,
                grant.normalised_fingerprint,
                grant.budget_cap,
                None if grant.kinds is None else tuple(k.value for k in grant.kinds),
            )
            for grant in grants
        ),
    )
