"""A real hub (grpc.aio, its own event loop in a thread) and real outbound-only nodes, for tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.hub.cli import server_credentials
from coordinator.hub.config import HubConfig, HubTls
from coordinator.hub.server import RunningHub, start_hub
from node.config import load_config
from node.hub_link import HubLink, start_hub_link
from node.importer import import_csv
from node.server import NodeServicer, gatekeeper_for
from node.service import NodeService, open_service
from tests.conftest import FederationPki, write_node_config
from tiaki.signing import SigningKey, load_or_create_signing_key

HUB_NAME = "tiaki-hub"
COORDINATOR = "coordinator-a"


class HubThread:
    """A hub serving on a free loopback port until stopped."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.running: RunningHub = asyncio.run_coroutine_threadsafe(
            start_hub(config, "127.0.0.1:0", server_credentials(config)), self._loop
        ).result(30)
        self.address = f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def hub_config(
    root: Path, pki: FederationPki, nodes: tuple[str, ...], coordinators: tuple[str, ...]
) -> HubConfig:
    cert, key = pki.node(HUB_NAME)
    return HubConfig(
        address="127.0.0.1:0",
        queue=root / "hub-queue.sqlite",
        tls=HubTls(cert=cert, key=key, client_ca=pki.ca_cert),
        nodes=nodes,
        coordinators=coordinators,
        lease_seconds=5,
    )


@dataclass
class HubNode:
    """A node that only dials out: no port of its own, its work through the hub."""

    config_path: Path
    service: NodeService
    link: HubLink

    def budget_spent(self) -> Any:
        return self.service.ledger.status().lifetime_spent

    def stop(self) -> None:
        self.link.stop(timeout=2)
        self.service.close()


def coordinator_key(root: Path) -> SigningKey:
    key, _ = load_or_create_signing_key(root / "coordinator-signing.key")
    return key


def start_hub_node(
    root: Path,
    pki: FederationPki,
    hub_address: str,
    node_id: str,
    csv: Path,
    *,
    signer: str | None,
    policy: dict[str, Any] | None = None,
    skew_seconds: int = 300,
    wait_connected: bool = True,
) -> HubNode:
    """Import ``csv``, then serve it through the hub only; ``signer`` is the key the
    grant for coordinator-a names (None: coordinator-a has no key listed)."""
    client_cert, client_key = pki.coordinator(node_id)  # a client certificate naming the node
    grant: dict[str, Any] = {"identity": COORDINATOR}
    if signer is not None:
        grant["signing_key"] = signer
    path = write_node_config(
        root / node_id,
        node_id=node_id,
        policy={
            "budget": {"limit": "100", "period": "none"},
            "per_query_max": "2",
            **(policy or {}),
            "coordinators": [grant],
            "hubs": [HUB_NAME],
        },
    )
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["server"].pop("tls", None)
    raw["server"]["listen"] = False
    raw["server"]["hub"] = {
        "address": hub_address,
        "server_name": HUB_NAME,
        "ca": str(pki.ca_cert),
        "cert": str(client_cert),
        "key": str(client_key),
        "wait_seconds": 2,
        "skew_seconds": skew_seconds,
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    config = load_config(path)
    assert import_csv(config, csv).committed
    service = open_service(config)
    link = start_hub_link(service, NodeServicer(service, gatekeeper_for(service)))
    if wait_connected:
        assert link.connected.wait(10), "the node did not reach the hub"
    return HubNode(path, service, link)


def write_hub_federation(
    path: Path, pki: FederationPki, hub_address: str, nodes: dict[str, str]
) -> Path:
    """A federation file reaching ``nodes`` (node id -> its ledger key) through the hub."""
    raw = {
        "version": 1,
        "analyst": "ana",
        "identity": COORDINATOR,
        "ledger": "coordinator-ledger.sqlite",
        "signing_key": "coordinator-signing.key",
        "tls": pki.federation_tls(COORDINATOR),
        "hub": {"address": hub_address, "server_name": HUB_NAME},
        "nodes": [{"name": name, "via": "hub", "signing_key": key} for name, key in nodes.items()],
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def hub_factory(tmp_path: Path, pki: FederationPki) -> Iterator[Callable[..., HubThread]]:
    started: list[HubThread] = []

    def make(nodes: tuple[str, ...], coordinators: tuple[str, ...] = (COORDINATOR,)) -> HubThread:
        hub = HubThread(hub_config(tmp_path, pki, nodes, coordinators))
        started.append(hub)
        return hub

    yield make
    for hub in started:
        hub.stop()
