"""The node's one YAML file: where it listens, what the records look like, what it allows.

Everything here is public metadata the NGO declares: category lists and bounds
come from this file, never from the data. Validation errors name the file,
the key and what to do about it. The ``policy`` section's models are in
:mod:`node.policy` (re-exported here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from node.policy import NODE_ID_PATTERN, StrictModel

# The policy's models are named here too, where callers have always found them.
from node.policy import AuditorGrant as AuditorGrant
from node.policy import BudgetPolicy as BudgetPolicy
from node.policy import CoordinatorGrant as CoordinatorGrant
from node.policy import Policy as Policy
from node.policy import SecureAggregationPolicy as SecureAggregationPolicy
from node.policy import SecurePeer as SecurePeer
from node.policy import WorstCaseCaps as WorstCaseCaps
from tiaki.files import beside, check_host_port, describe_validation_error, read_yaml


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid. The message says where and why."""


# ---------------------------------------------------------------- columns


class TextColumn(StrictModel):
    """Free text such as names or addresses: stored, never queryable."""

    type: Literal["text"]
    required: bool = False


class CategoricalColumn(StrictModel):
    type: Literal["categorical"]
    categories: tuple[str, ...]
    queryable: bool = True

    @field_validator("categories")
    @classmethod
    def _distinct(cls, cats: tuple[str, ...]) -> tuple[str, ...]:
        if not cats:
            raise ValueError("list at least one category")
        if len(set(cats)) != len(cats):
            raise ValueError("a category is listed twice")
        if len(cats) > 10_000:
            raise ValueError("at most 10000 categories per column")
        return cats


class NumericColumn(StrictModel):
    type: Literal["integer", "float"]
    bounds: tuple[float, float]
    required: bool = True
    queryable: bool = True

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, b: tuple[float, float]) -> tuple[float, float]:
        lo, hi = b
        if not (abs(lo) < 1e15 and abs(hi) < 1e15):
            raise ValueError("bounds must be finite numbers below 1e15 in size")
        if lo >= hi:
            raise ValueError(f"lower bound {lo} must be below upper bound {hi}")
        return b

    @model_validator(mode="after")
    def _integral(self) -> NumericColumn:
        if self.type == "integer" and not all(float(b).is_integer() for b in self.bounds):
            raise ValueError("an integer column needs whole-number bounds")
        return self


class DateColumn(StrictModel):
    type: Literal["date"]
    min: date | None = None
    max: date | None = None
    required: bool = True
    queryable: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> DateColumn:
        if self.min and self.max and self.min >= self.max:
            raise ValueError(f"min {self.min} must be before max {self.max}")
        return self


class DerivedColumn(StrictModel):
    """``a - b`` or ``a + b`` of two numeric columns, or ``a - b`` of two dates (in days)."""

    type: Literal["derived"]
    expression: str
    queryable: bool = True

    @field_validator("expression")
    @classmethod
    def _shape(cls, expr: str) -> str:
        if not _EXPRESSION.fullmatch(expr.strip()):
            raise ValueError(
                f"expression {expr!r} must be 'column_a - column_b' or 'column_a + column_b'"
            )
        return expr.strip()

    @property
    def operands(self) -> tuple[str, str, str]:
        match = _EXPRESSION.fullmatch(self.expression)
        assert match is not None
        return match["left"], match["op"], match["right"]


_EXPRESSION = re.compile(r"(?P<left>[A-Za-z_]\w*)\s*(?P<op>[-+])\s*(?P<right>[A-Za-z_]\w*)")

Column = Annotated[
    TextColumn | CategoricalColumn | NumericColumn | DateColumn | DerivedColumn,
    Field(discriminator="type"),
]


class Schema(StrictModel):
    """The shape of the NGO's client records, all of it public metadata."""

    identifier: str
    recency: str | None = None
    columns: dict[str, Column]

    @model_validator(mode="after")
    def _consistent(self) -> Schema:
        if self.identifier in self.columns:
            raise ValueError(
                f"identifier {self.identifier!r} is declared by 'identifier' only; "
                "remove it from 'columns'"
            )
        for name in self.columns:
            if not re.fullmatch(r"[A-Za-z_]\w{0,63}", name):
                raise ValueError(f"column name {name!r} must be letters, digits and underscores")
        if self.recency is not None:
            spec = self.columns.get(self.recency)
            if not isinstance(spec, DateColumn):
                raise ValueError(f"recency {self.recency!r} must name a date column")
        for name, spec in self.columns.items():
            if isinstance(spec, DerivedColumn):
                self._check_derived(name, spec)
        return self

    def _check_derived(self, name: str, spec: DerivedColumn) -> None:
        left, op, right = spec.operands
        kinds = []
        for operand in (left, right):
            source = self.columns.get(operand)
            if not isinstance(source, NumericColumn | DateColumn):
                raise ValueError(
                    f"derived column {name!r}: {operand!r} must be a declared integer, float or "
                    "date column"
                )
            kinds.append(source.type)
        if "date" in kinds:
            if kinds != ["date", "date"] or op != "-":
                raise ValueError(
                    f"derived column {name!r}: dates can only be subtracted from dates"
                )
            for operand in (left, right):
                source = self.columns[operand]
                assert isinstance(source, DateColumn)
                if source.min is None or source.max is None:
                    raise ValueError(
                        f"derived column {name!r}: date column {operand!r} needs min and max "
                        "so the difference has public bounds"
                    )

    # ------------------------------------------------------------ lookups

    def derived_type(self, name: str) -> Literal["integer", "float"]:
        spec = self.columns[name]
        assert isinstance(spec, DerivedColumn)
        left, _, right = spec.operands
        types = {self.columns[left].type, self.columns[right].type}
        return "float" if "float" in types else "integer"

    def numeric_bounds(self, name: str) -> tuple[float, float] | None:
        """Public bounds of a numeric or derived column; None for other types."""
        spec = self.columns.get(name)
        if isinstance(spec, NumericColumn):
            return spec.bounds
        if isinstance(spec, DerivedColumn):
            left, op, right = spec.operands
            lspec, rspec = self.columns[left], self.columns[right]
            if isinstance(lspec, DateColumn) and isinstance(rspec, DateColumn):
                assert lspec.min and lspec.max and rspec.min and rspec.max
                return (
                    float((lspec.min - rspec.max).days),
                    float((lspec.max - rspec.min).days),
                )
            lb, rb = self.numeric_bounds(left), self.numeric_bounds(right)
            assert lb is not None and rb is not None
            if op == "+":
                return (lb[0] + rb[0], lb[1] + rb[1])
            return (lb[0] - rb[1], lb[1] - rb[0])
        return None

    def is_queryable(self, name: str) -> bool:
        spec = self.columns.get(name)
        return spec is not None and not isinstance(spec, TextColumn) and spec.queryable


class TlsSettings(StrictModel):
    """The node's certificate and key, and the CA(s) it trusts to vouch for coordinators."""

    cert: Path
    key: Path
    client_ca: Path


class HubLinkSettings(StrictModel):
    """Where this node dials out to carry work through a hub, and how it knows the hub.

    ``server_name`` is the identity the hub's certificate must name (it must
    also be in ``policy.hubs``); ``cert`` and ``key`` are this node's client
    certificate for the hub (naming this node's id), ``ca`` the CA that signed
    the hub's.
    """

    address: str
    server_name: str = Field(min_length=1, max_length=253)
    ca: Path
    cert: Path
    key: Path
    # The longest the hub may leave this node's call quiet (it then sends a heartbeat);
    # a call quiet this long and 10 s more is given up and made again.
    wait_seconds: int = Field(default=25, ge=1, le=25)
    # How far this node's clock may be from a coordinator's: an envelope is acted on
    # up to this long after its not_after, and refused if issued this far ahead.
    skew_seconds: int = Field(default=300, ge=0, le=3600)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return check_host_port(v, "hub.example.nz:50060")


class ServerSettings(StrictModel):
    address: str = "127.0.0.1:50051"
    max_workers: int = Field(default=8, ge=1, le=256)
    grace_seconds: float = Field(default=10.0, ge=0, le=600)
    max_concurrent_per_identity: int = Field(default=4, ge=1, le=256)
    # Connections are re-made (with a fresh TLS handshake) at least this often.
    max_connection_age_seconds: float = Field(default=300.0, ge=1, le=86_400)
    tls: TlsSettings | None = None
    # Dial out to a hub for work (a node behind NAT); it may also listen.
    hub: HubLinkSettings | None = None
    # False: open no port at all (only with a hub).
    listen: bool = True

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return check_host_port(v, "127.0.0.1:50051")


@dataclass(frozen=True)
class NodePaths:
    """Every file a node keeps in its data directory: the one place their names live."""

    data_dir: Path

    @property
    def records(self) -> Path:
        """The record store (validated records and the columnar cache)."""
        return self.data_dir / "records.sqlite"

    @property
    def salt(self) -> Path:
        """The node's secret salt for keyed hashes (never leaves the node)."""
        return self.data_dir / "node.salt"

    @property
    def ledger(self) -> Path:
        """The privacy ledger: every charge, hash-chained."""
        return self.data_dir / "ledger.sqlite"

    @property
    def secure_sessions(self) -> Path:
        """Each secure sum's progress and, until its reveal, its secrets (never leaves the node)."""
        return self.data_dir / "secure_sessions.sqlite"

    @property
    def hub_inbox(self) -> Path:
        """Outcomes of work relayed by a hub, kept by work id until the hub has them."""
        return self.data_dir / "hub_inbox.sqlite"

    @property
    def signing_key(self) -> Path:
        """The Ed25519 key that signs ledger exports."""
        return self.data_dir / "signing.key"

    @property
    def serve_lock(self) -> Path:
        """Held by the one process serving this directory (hidden, so backups skip it)."""
        return self.data_dir / ".serve.lock"


class NodeConfig(StrictModel):
    version: Literal[1] = 1
    node_id: str = Field(pattern=NODE_ID_PATTERN)
    data_dir: Path = Path(".")
    server: ServerSettings = ServerSettings()
    schema_: Schema = Field(alias="schema")
    policy: Policy

    @model_validator(mode="after")
    def _hub_allowed(self) -> NodeConfig:
        hub = self.server.hub
        if hub is None:
            if not self.server.listen:
                raise ValueError("server.listen is false but there is no server.hub to dial")
            return self
        if hub.server_name not in self.policy.hubs:
            raise ValueError(
                f"server.hub.server_name {hub.server_name!r} is not in policy.hubs; list the "
                "hubs this node may carry work through"
            )
        return self

    @model_validator(mode="after")
    def _not_its_own_peer(self) -> NodeConfig:
        secure = self.policy.secure_aggregation
        if secure is not None and any(p.node_id == self.node_id for p in secure.peers):
            raise ValueError(
                f"policy.secure_aggregation.peers lists {self.node_id!r}, this node's own "
                "node_id; list only the other nodes (this one always takes part)"
            )
        return self

    @property
    def schema(self) -> Schema:  # type: ignore[override]
        return self.schema_

    @property
    def paths(self) -> NodePaths:
        return NodePaths(self.data_dir)


_HINTS = {
    "extra_forbidden": "unknown key; check its spelling against the example config",
    "union_tag_invalid": "type must be one of: text, categorical, integer, float, date, derived",
}


def load_config(path: Path) -> NodeConfig:
    """Read and validate a node config; ``data_dir`` is made absolute relative to the file."""
    raw = read_yaml(path, ConfigError, missing="no such file; create one with 'tiaki-node init'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (node_id, schema, policy, ...)")
    try:
        config = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  {describe_validation_error(e, _HINTS)}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid config:\n{lines}") from None

    update: dict[str, Any] = {}
    tls = config.server.tls
    hub = config.server.hub
    try:
        update["data_dir"] = beside(path, config.data_dir)
        server: dict[str, Any] = {}
        if tls is not None:
            server["tls"] = TlsSettings(
                cert=beside(path, tls.cert),
                key=beside(path, tls.key),
                client_ca=beside(path, tls.client_ca),
            )
        if hub is not None:
            server["hub"] = hub.model_copy(
                update={
                    "ca": beside(path, hub.ca),
                    "cert": beside(path, hub.cert),
                    "key": beside(path, hub.key),
                }
            )
        if server:
            update["server"] = config.server.model_copy(update=server)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if (tls is not None or hub is not None) and not config.policy.coordinators:
        raise ConfigError(
            f"{path}: policy.coordinators: with TLS on, list the coordinators allowed to ask "
            "(by certificate identity or fingerprint); nobody else is served"
        )
    return config.model_copy(update=update)
