"""What a node says about itself and about a query before answering it; nothing is spent.

:class:`NodeInfo` is public metadata (schema, policy summary, keys): no record
is behind it. :class:`NodePlan` is decided from the schema and the policy
alone; its budget is the node's ledger as it stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from tiaki.budget import BudgetStatus, PrivacyDefinition
from tiaki.query import PrivacyCost, QueryKind


@dataclass(frozen=True)
class ColumnInfo:
    """One queryable column as the node's schema declares it."""

    name: str
    type: str  # categorical, integer, float, date, derived
    categories: tuple[str, ...] = ()  # categorical
    bounds: tuple[float, float] | None = None  # numeric and derived
    date_min: str = ""  # date, if declared
    date_max: str = ""
    expression: str = ""  # derived


@dataclass(frozen=True)
class SecureAggregationInfo:
    """What a session must satisfy for a node to take part, and its worst-case room (ρ)."""

    min_cohort: int
    colluders: int
    worst_case_per_query: Fraction
    worst_case_remaining: Fraction


@dataclass(frozen=True)
class NodeInfo:
    """A node's public metadata: its schema, the policy's summary and its keys."""

    node_id: str
    version: str
    definition: PrivacyDefinition
    identifier_column: str  # named, never queryable
    columns: tuple[ColumnInfo, ...]  # queryable columns only
    allowed_kinds: tuple[QueryKind, ...]
    max_records_per_client: int
    per_query_max: Fraction
    budget_period: str  # "none", "yearly", "quarterly", "monthly"
    max_group_by: int
    max_cells: int
    dataset_version: str  # random id of the current import ("" if none)
    signing_key: str  # "ed25519:<base64>": signs ledger exports
    ledger_id: str
    # Set when the node takes part in secure sums (its policy's secure_aggregation).
    secure_aggregation: SecureAggregationInfo | None = None


@dataclass(frozen=True)
class PlannedComponent:
    """The noise one component would carry in every cell, in column units."""

    name: str
    distribution: str
    scale: float
    accuracy_95: float


@dataclass(frozen=True)
class NodePlan:
    """What answering a query would cost at one node, and how noisy it would be.

    ``charge`` is exactly the requested cost. ``replay``: the caller already
    holds an answer to this query under the request's id, which asking again
    returns for nothing. SUM and MEAN carry the clamping bounds in force and
    their midpoint (a mean's shift); other kinds carry neither.
    """

    node_id: str
    canonical_query: str
    group_by: tuple[str, ...]
    cells: int
    components: tuple[PlannedComponent, ...]
    charge: PrivacyCost
    budget: BudgetStatus | None  # None from a node that does not send it with the plan
    replay: bool = False
    bounds: tuple[float, float] | None = None
    midpoint: float | None = None
    grid_unit: float | None = None  # SUM, MEAN: the fixed-point grid's step in column units

    def __post_init__(self) -> None:
        if (self.bounds is None) != (self.midpoint is None):
            raise ValueError("a plan carries the clamping bounds and their midpoint together")
