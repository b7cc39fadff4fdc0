"""A real node: real store, real ledger file, real gRPC server on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from coordinator.client import NodeClient
from node.config import NodeConfig, load_config
from node.importer import import_csv
from node.server import RunningNode, create_server
from node.service import open_service
from node.tls import server_credentials
from tests.conftest import FederationPki
from tiaki.budget import BudgetStatus


@dataclass
class LiveNode:
    config: NodeConfig
    running: RunningNode
    address: str
    pki: FederationPki | None

    def client(self, identity: str = "coordinator-a", timeout: float = 30.0) -> NodeClient:
        """A client presenting a certificate for ``identity`` (a claim, if insecure)."""
        if self.pki is None:
            return NodeClient(self.address, identity=identity, timeout=timeout)
        return NodeClient(
            self.address,
            identity=identity,
            timeout=timeout,
            credentials=self.pki.channel_credentials(identity),
            server_name=self.config.node_id,
        )

    def channel(self, identity: str = "coordinator-a") -> grpc.Channel:
        """A raw channel (for the health service and hand-made requests)."""
        if self.pki is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(
            self.address,
            self.pki.channel_credentials(identity),
            options=[("grpc.ssl_target_name_override", self.config.node_id)],
        )

    def budget(self) -> BudgetStatus:
        return self.running.service.ledger.status()


@pytest.fixture
def start_node(pki: FederationPki) -> Iterator[Callable[..., LiveNode]]:
    """Start a node in this process on a free port: mutual TLS when its config has it."""
    started: list[LiveNode] = []

    def start(config_path: Path, csv: Path | None = None) -> LiveNode:
        config = load_config(config_path)
        if csv is not None:
            report = import_csv(config, csv)
            assert report.committed, report.bad_rows[:5]
        service = open_service(config)
        tls = config.server.tls
        credentials = server_credentials(tls) if tls is not None else None
        running = create_server(service, "127.0.0.1:0", credentials)
        node = LiveNode(
            config, running, f"127.0.0.1:{running.port}", pki if tls is not None else None
        )
        started.append(node)
        return node

    yield start
    for node in started:
        node.running.stop(grace=1)
        node.running.service.ledger.close()


def status_code(exc: BaseException) -> grpc.StatusCode:
    code = getattr(exc, "status_code", None)
    assert isinstance(code, grpc.StatusCode), exc
    return code
