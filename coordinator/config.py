"""The federation file: which nodes to ask, who is asking, where the mirror ledger lives.

Paths in the file (``ledger``, ``signing_key``, the ``tls`` files) are relative
to the file's own folder.

Validated at load with messages naming the file and the key; ``tiaki nodes add``
creates and updates it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tiaki.files import beside, check_host_port, describe_validation_error, read_yaml
from tiaki.signing import checked_public_key

DEFAULT_SIGNING_KEY = "coordinator-signing.key"


class FederationConfigError(Exception):
    """The federation file is missing or invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_address(value: str) -> str:
    return check_host_port(value, "127.0.0.1:50051", listening=False)


class NodeEntry(_Strict):
    """One node: dialled at ``address``, or reached through the federation's hub (``via: hub``).

    A node reached through the hub is named to it by its node id
    (``server_name``, else ``name``), and its outcomes are checked against
    ``signing_key``, its ledger key as its NGO gave it (``tiaki-node info``).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    address: str | None = None
    # The identity the node's certificate must carry; anything else is refused.
    server_name: str | None = Field(default=None, min_length=1, max_length=253)
    via: Literal["direct", "hub"] = "direct"
    signing_key: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return None if v is None else _check_address(v)

    @field_validator("signing_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return None if v is None else checked_public_key(v)

    @model_validator(mode="after")
    def _reachable(self) -> NodeEntry:
        if self.via == "direct" and self.address is None:
            raise ValueError(f"node {self.name!r} needs an address, or 'via: hub'")
        if self.via == "hub" and self.signing_key is None:
            raise ValueError(
                f"node {self.name!r} is reached through the hub: give its signing_key (its "
                "ledger key, from 'tiaki-node info'), which its outcomes are checked against"
            )
        return self

    @property
    def expected_identity(self) -> str:
        return self.server_name or self.name

    @property
    def where(self) -> str:
        """How the node is reached, for messages: its address, or "via hub"."""
        return self.address if self.address is not None else f"{self.name} via hub"


class HubEntry(_Strict):
    """The hub that relays to the federation's ``via: hub`` nodes (this file's tls reaches it)."""

    address: str
    server_name: str | None = Field(default=None, min_length=1, max_length=253)

    _address = field_validator("address")(_check_address)


class CoordinatorTls(_Strict):
    """The coordinator's client certificate and key, and the CA that vouches for nodes."""

    ca: Path
    cert: Path
    key: Path


class Defaults(_Strict):
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    retries: int = Field(default=2, ge=0, le=10)
    format: Literal["table", "json", "csv"] = "table"
    # Ask every question as a secure sum unless the command line says --per-node.
    secure: bool = False


class SecureSettings(_Strict):
    """How this coordinator sets up secure sums (each node checks them against its policy)."""

    # Members that may drop out without aborting; None: a tenth of them (at least 1 of 4+).
    dropouts: int | None = Field(default=None, ge=0, le=500)
    # Members assumed to collude with this coordinator; raised to what any node assumes.
    colluders: int = Field(default=0, ge=0, le=500)
    # How long nodes act on a session after it is proposed.
    session_seconds: float = Field(default=300.0, ge=10, le=86_400)


class FederationConfig(_Strict):
    version: Literal[1] = 1
    analyst: str = Field(min_length=1, max_length=128)
    identity: str = Field(default="coordinator", min_length=1, max_length=128)
    ledger: Path = Path("coordinator-ledger.sqlite")
    # The Ed25519 key that signs this coordinator's ledger exports; default:
    # DEFAULT_SIGNING_KEY beside the mirror ledger. Created on first export.
    signing_key: Path | None = None
    defaults: Defaults = Defaults()
    secure_aggregation: SecureSettings = SecureSettings()
    tls: CoordinatorTls | None = None
    insecure: bool = False  # development only: plaintext, loopback nodes only
    hub: HubEntry | None = None
    nodes: tuple[NodeEntry, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> FederationConfig:
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names must be unique; repeated: {', '.join(dupes)}")
        relayed = [n.name for n in self.nodes if n.via == "hub"]
        if relayed and self.hub is None:
            raise ValueError(
                f"{', '.join(relayed)} {'is' if len(relayed) == 1 else 'are'} reached via hub, "
                "but the file has no hub (address, server_name)"
            )
        return self

    @property
    def signing_key_path(self) -> Path:
        """Where the ledger signing key lives (set, or the default beside the ledger)."""
        if self.signing_key is not None:
            return self.signing_key
        return self.ledger.parent / DEFAULT_SIGNING_KEY

    def node(self, name: str) -> NodeEntry:
        for entry in self.nodes:
            if entry.name == name:
                return entry
        known = ", ".join(n.name for n in self.nodes) or "none yet"
        raise FederationConfigError(f"unknown node {name!r}; nodes in the federation: {known}")


def load_federation(path: Path) -> FederationConfig:
    """Read and validate; every path is made absolute relative to the file.

    ``signing_key`` is always set on the result: the file's value, or the
    default beside the (resolved) mirror ledger.
    """
    raw = read_yaml(
        path,
        FederationConfigError,
        missing=f"no such file; create it with 'tiaki nodes add NAME HOST:PORT --config {path}'",
    )
    if not isinstance(raw, dict):
        raise FederationConfigError(f"{path}: expected a mapping (analyst, nodes, ...)")
    try:
        config = FederationConfig.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  {describe_validation_error(e)}" for e in exc.errors())
        raise FederationConfigError(f"{path}: invalid federation file:\n{lines}") from None

    update: dict[str, Any] = {}
    try:
        update["ledger"] = beside(path, config.ledger)
        update["signing_key"] = beside(
            path, config.signing_key or update["ledger"].parent / DEFAULT_SIGNING_KEY
        )
        if config.tls is not None:
            update["tls"] = CoordinatorTls(
                ca=beside(path, config.tls.ca),
                cert=beside(path, config.tls.cert),
                key=beside(path, config.tls.key),
            )
    except ValueError as exc:
        raise FederationConfigError(f"{path}: {exc}") from None
    return config.model_copy(update=update)


def add_node(
    path: Path,
    name: str,
    address: str | None,
    *,
    analyst: str | None = None,
    server_name: str | None = None,
    tls: dict[str, str] | None = None,
    insecure: bool = False,
    hub: dict[str, str] | None = None,
    signing_key: str | None = None,
) -> bool:
    """Add or update a node in the federation file (created if missing). True if it was new.

    ``tls`` (ca, cert, key) and ``insecure`` are written only when the file is created.
    With ``address`` None the node is reached through the hub: ``signing_key`` (its
    ledger key) is then needed, and ``hub`` (address, server_name) sets the file's hub.
    """
    if path.exists():
        load_federation(path)  # refuse to edit an invalid file, with its own clear message
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    else:
        raw = {
            "version": 1,
            "analyst": analyst or os.environ.get("USER", "analyst"),
            "identity": "coordinator",
            "ledger": "coordinator-ledger.sqlite",
        }
        if tls:
            raw["tls"] = tls
        if insecure:
            raw["insecure"] = True
    nodes = [dict(n) for n in raw.get("nodes", [])]
    via: Literal["direct", "hub"] = "direct" if address is not None else "hub"
    try:
        entry = NodeEntry(
            name=name, address=address, server_name=server_name, via=via, signing_key=signing_key
        )
    except ValidationError as exc:
        lines = "; ".join(describe_validation_error(e) for e in exc.errors())
        raise FederationConfigError(
            f"node {name[:64]!r}: {lines} (a name is 1-64 letters, digits, '.', '_' or '-', "
            "an address host:port, a server name 1-253 characters)"
        ) from None
    if hub:
        raw["hub"] = hub
    new = True
    fields: dict[str, str] = {"name": entry.name}
    if entry.address is not None:
        fields["address"] = entry.address
    else:
        fields["via"] = "hub"
    if server_name:
        fields["server_name"] = server_name
    if signing_key:
        fields["signing_key"] = signing_key
    for n in nodes:
        if n.get("name") == name:
            # What it is not any more goes (an address, or being reached via the hub);
            # everything else it had (a server name, a pinned key) stays unless replaced.
            n.pop("via" if "address" in fields else "address", None)
            n.update(fields)
            new = False
    if new:
        nodes.append(fields)
    raw["nodes"] = nodes
    try:
        FederationConfig.model_validate(raw)
    except ValidationError as exc:
        lines = "; ".join(describe_validation_error(e) for e in exc.errors())
        raise FederationConfigError(f"{path}: {lines}") from None
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise FederationConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return new
