"""The hub's file (``hub.yaml``): where it listens, whom it admits, where its queue lives.

Paths are relative to the file's folder. The roster names the node ids that
may connect (a node's TLS certificate must name its node id) and the
coordinator identities that may submit; nobody else gets past the handshake's
identity check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tiaki.files import beside, check_host_port, describe_validation_error, read_yaml

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class HubConfigError(Exception):
    """The hub's file is missing or invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubTls(_Strict):
    """The hub's server certificate and key, and the CA(s) its nodes and coordinators use."""

    cert: Path
    key: Path
    client_ca: Path


class HubConfig(_Strict):
    version: int = Field(default=1, ge=1, le=1)
    address: str = "0.0.0.0:50060"
    queue: Path = Path("hub-queue.sqlite")
    tls: HubTls | None = None
    insecure: bool = False  # development only: plaintext on loopback, identities claimed
    nodes: tuple[str, ...] = ()  # node ids that may connect: each certificate's name
    coordinators: tuple[str, ...] = ()  # coordinator identities that may submit
    lease_seconds: float = Field(default=60.0, ge=5, le=3600)
    max_items: int = Field(default=16, ge=1, le=1000)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return check_host_port(v, "0.0.0.0:50060")

    @field_validator("nodes", "coordinators")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import re

        for name in v:
            if not re.fullmatch(NAME, name):
                raise ValueError(f"{name[:64]!r} is not a node or coordinator name")
        if len(set(v)) != len(v):
            raise ValueError("a name is listed twice")
        return v

    @model_validator(mode="after")
    def _secure(self) -> HubConfig:
        if self.tls is None and not self.insecure:
            raise ValueError(
                "give tls (cert, key, client_ca) for mutual TLS, or 'insecure: true' for "
                "loopback development"
            )
        if self.insecure and self.address.rpartition(":")[0] not in ("127.0.0.1", "localhost"):
            raise ValueError("insecure mode listens on loopback only (127.0.0.1:PORT)")
        return self


def load_hub_config(path: Path) -> HubConfig:
    raw = read_yaml(path, HubConfigError, missing="no such file")
    if not isinstance(raw, dict):
        raise HubConfigError(f"{path}: expected a mapping (address, tls, nodes, ...)")
    try:
        config = HubConfig.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  {describe_validation_error(e)}" for e in exc.errors())
        raise HubConfigError(f"{path}: invalid hub file:\n{lines}") from None
    update: dict[str, Any] = {"queue": beside(path, config.queue)}
    if config.tls is not None:
        update["tls"] = HubTls(
            cert=beside(path, config.tls.cert),
            key=beside(path, config.tls.key),
            client_ca=beside(path, config.tls.client_ca),
        )
    return config.model_copy(update=update)
