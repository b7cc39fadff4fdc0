"""The ``policy`` section of node.yaml: what the NGO allows, whoever asks.

Its budget (limits per period and over the lifetime, the per-query maximum),
the coordinators allowed to ask and the auditors allowed to read, and
whether and with whom the node takes part in secure sums. Amounts are exact:
parsed from the text the NGO wrote with :func:`tiaki.budget.parse_amount`,
never through a float. :mod:`node.config` reads the whole file and
re-exports these models; the base model and the amount parser that its
other sections use live here too.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tiaki.budget import AmountError, PrivacyDefinition, parse_amount
from tiaki.files import scalar_text
from tiaki.query import QueryKind
from tiaki.secagg.session import MAX_MEMBERS
from tiaki.signing import checked_public_key

NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class StrictModel(BaseModel):
    """A config section: unknown keys refused, values frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def config_amount(value: Any, what: str) -> Fraction:
    """An amount as the NGO wrote it in node.yaml, exact; ValueError says why not."""
    # Judged as the NGO wrote it: the strict grammar of amounts, not YAML's reading.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} must be a positive decimal such as 0.5")
    text = scalar_text(value)
    try:
        return parse_amount(text, what=what)
    except AmountError as exc:
        raise ValueError(str(exc)) from None


class BudgetPolicy(StrictModel):
    limit: Fraction
    period: Literal["none", "yearly", "quarterly", "monthly"] = "none"
    lifetime_limit: Fraction | None = None

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, v: Any) -> Fraction:
        return config_amount(v, "budget limit")

    @field_validator("lifetime_limit", mode="before")
    @classmethod
    def _lifetime(cls, v: Any) -> Fraction | None:
        return None if v is None else config_amount(v, "lifetime limit")


class _NamedCaller(StrictModel):
    """A caller named by exactly one of certificate identity or certificate fingerprint."""

    identity: str | None = Field(default=None, min_length=1, max_length=128)
    fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-fA-F:]{64,95}$")

    @model_validator(mode="after")
    def _named(self) -> _NamedCaller:
        if (self.identity is None) == (self.fingerprint is None):
            raise ValueError("name the caller by exactly one of identity or fingerprint")
        return self

    @property
    def normalised_fingerprint(self) -> str | None:
        return self.fingerprint.replace(":", "").lower() if self.fingerprint else None


class AuditorGrant(_NamedCaller):
    """An evaluator allowed to read the node's info, budget and signed ledger; never to ask."""


class CoordinatorGrant(_NamedCaller):
    """One coordinator the NGO allows to ask, named by certificate identity or fingerprint.

    ``kinds`` narrows the node-wide allowed kinds for this coordinator;
    ``budget_cap`` is the most it may spend per budget period.
    """

    kinds: tuple[QueryKind, ...] | None = None
    budget_cap: Fraction | None = None
    # The Ed25519 key this coordinator signs envelopes with when it asks through a
    # hub ("ed25519:<base64>", its `tiaki ledger key`); None: it may not ask that way.
    signing_key: str | None = None

    @field_validator("budget_cap", mode="before")
    @classmethod
    def _cap(cls, v: Any) -> Fraction | None:
        return None if v is None else config_amount(v, "budget cap")

    @field_validator("signing_key")
    @classmethod
    def _signing_key(cls, v: str | None) -> str | None:
        return None if v is None else checked_public_key(v)


class SecurePeer(StrictModel):
    """Another node this NGO counts as a participant in secure sums, by its pinned ledger key."""

    node_id: str = Field(pattern=NODE_ID_PATTERN)
    signing_key: str  # "ed25519:<base64>", as that node's `tiaki-node info` shows it

    @field_validator("signing_key")
    @classmethod
    def _key(cls, v: str) -> str:
        return checked_public_key(v)


class WorstCaseCaps(StrictModel):
    """Caps on the worst-case charge (ρ_local): one session's, and the ledger's lifetime total."""

    per_query: Fraction
    lifetime: Fraction

    @field_validator("per_query", mode="before")
    @classmethod
    def _per_query(cls, v: Any) -> Fraction:
        return config_amount(v, "worst-case per-query cap")

    @field_validator("lifetime", mode="before")
    @classmethod
    def _lifetime(cls, v: Any) -> Fraction:
        return config_amount(v, "worst-case lifetime cap")

    @model_validator(mode="after")
    def _ordered(self) -> WorstCaseCaps:
        if self.per_query > self.lifetime:
            raise ValueError("worst_case.per_query is larger than worst_case.lifetime; lower it")
        return self


class SecureAggregationPolicy(StrictModel):
    """Whether and with whom the node takes part in secure sums with distributed noise.

    ``peers`` are the NGO's own pins: a session counts only these nodes (and
    this one) as participants. ``min_cohort`` is the fewest pinned
    participants, this node included, a session may have; ``colluders`` how
    many of the other participants the NGO assumes may work with the
    coordinator. ``worst_case`` caps what this node's share alone protects.
    """

    peers: tuple[SecurePeer, ...]
    min_cohort: int = Field(ge=2, le=MAX_MEMBERS)
    colluders: int = Field(ge=0, lt=MAX_MEMBERS)
    worst_case: WorstCaseCaps

    @model_validator(mode="after")
    def _consistent(self) -> SecureAggregationPolicy:
        for what, values in (
            ("node_id", [p.node_id for p in self.peers]),
            ("signing_key", [p.signing_key for p in self.peers]),
        ):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"peers: {what} {repeated[0]!r} is listed twice")
        if self.min_cohort > len(self.peers) + 1:
            raise ValueError(
                f"min_cohort {self.min_cohort} is more than the {len(self.peers) + 1} "
                f"participants pinned ({len(self.peers)} peers and this node): no session "
                "could be accepted; pin more peers or lower min_cohort"
            )
        return self


class Policy(StrictModel):
    """What the NGO allows. The node enforces it whoever asks."""

    privacy_definition: PrivacyDefinition
    budget: BudgetPolicy
    per_query_max: Fraction
    max_records_per_client: int = Field(ge=1, le=1000)
    allowed_kinds: tuple[QueryKind, ...] = tuple(QueryKind)
    max_cells: int = Field(default=10_000, ge=1, le=1_000_000)
    coordinators: tuple[CoordinatorGrant, ...] = ()
    auditors: tuple[AuditorGrant, ...] = ()
    secure_aggregation: SecureAggregationPolicy | None = None  # None: no part in secure sums
    # Hubs this node may carry work through, by the identity their certificates name.
    hubs: tuple[str, ...] = ()

    @field_validator("per_query_max", mode="before")
    @classmethod
    def _pqm(cls, v: Any) -> Fraction:
        return config_amount(v, "per-query maximum")

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if self.per_query_max > self.budget.limit:
            raise ValueError("per_query_max is larger than the budget limit; lower it")
        if self.secure_aggregation is not None and self.privacy_definition is not (
            PrivacyDefinition.ZCDP
        ):
            raise ValueError(
                "secure_aggregation needs privacy_definition zcdp: OpenDP has no distributed "
                "Laplace sampler, so a pure-DP node cannot add a share of one noise; remove "
                "the section or account in zcdp (with a new ledger)"
            )
        return self
