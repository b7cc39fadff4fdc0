"""The budget arithmetic the privacy ledger checks every charge against, without storage.

Privacy unit: one client of the node's data set (see the node's policy); every
amount here is privacy loss in the policy's definition (ε for pure DP, ρ for
zCDP), exact as a Fraction. Nothing here spends: :class:`node.ledger.PrivacyLedger`
reads the spending inside its write transaction, asks :func:`refusal` whether
a request fits, and spends in that same transaction. A secure sum's
worst-case charge (ρ_local) is judged apart, against the caps of the policy's
``secure_aggregation`` section, by :func:`worst_case_refusal`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from node.policy import BudgetPolicy, CoordinatorGrant, SecureAggregationPolicy
from tiaki.budget import BudgetStatus, PeriodBudget, PrivacyDefinition, read_amount
from tiaki.errors import (
    InsufficientBudgetError,
    PerQueryMaximumError,
    WorstCaseExhaustedError,
    WorstCaseMaximumError,
)
from tiaki.ledger_records import (
    GrantRecord,
    PolicyRecord,
    SecureAggregationRecord,
    SecurePeerRecord,
)
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


def worst_case_refusal(
    worst_case: Fraction, *, secure: SecureAggregationPolicy, spent: Fraction
) -> InsufficientBudgetError | None:
    """Why a secure sum's worst-case charge does not fit now, or None if it does.

    ``spent`` is the worst-case total over the ledger's life, as the caller's
    transaction sees it; that total is never reset.
    """
    if worst_case <= 0:
        raise ValueError(f"a worst-case charge must be positive, not {worst_case}")
    caps = secure.worst_case
    if worst_case > caps.per_query:
        return WorstCaseMaximumError(worst_case, caps.per_query)
    left = max(Fraction(0), caps.lifetime - spent)
    if worst_case > left:
        return WorstCaseExhaustedError(worst_case, left)
    return None


@dataclass(frozen=True)
class WorstCaseStatus:
    """Worst-case charges (ρ_local) so far, against the caps in force (None: no caps: the
    policy takes no part in secure sums now)."""

    spent: Fraction
    per_query: Fraction | None
    lifetime_limit: Fraction | None

    @property
    def remaining(self) -> Fraction | None:
        if self.lifetime_limit is None:
            return None
        return max(Fraction(0), self.lifetime_limit - self.spent)


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
    secure: SecureAggregationPolicy | None = None,
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
                grant.signing_key,
            )
            for grant in grants
        ),
        secure_aggregation=None if secure is None else secure_record(secure),
    )


def secure_record(secure: SecureAggregationPolicy) -> SecureAggregationRecord:
    """The policy's rules for secure sums, as a policy entry records them."""
    return SecureAggregationRecord(
        peers=tuple(SecurePeerRecord(p.node_id, p.signing_key) for p in secure.peers),
        min_cohort=secure.min_cohort,
        colluders=secure.colluders,
        worst_case_per_query=secure.worst_case.per_query,
        worst_case_lifetime=secure.worst_case.lifetime,
    )
