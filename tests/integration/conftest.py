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
from tiaki.budget import BudgetStatus


@dataclass
class LiveNode:
    config: NodeConfig
    running: RunningNode
    address: str

    def client(self, identity: str = "coordinator-a", timeout: float = 30.0) -> NodeClient:
        return NodeClient(self.address, identity=identity, timeout=timeout)

    def budget(self) -> BudgetStatus:
        return self.running.service.ledger.status()


@pytest.fixture
def start_node() -> Iterator[Callable[..., LiveNode]]:
    started: list[LiveNode] = []

    def start(config_path: Path, csv: Path | None = None) -> LiveNode:
        config = load_config(config_path)
        if csv is not None:
            report = import_csv(config, csv)
            assert report.committed, report.bad_rows[:5]
        service = open_service(config)
        running = create_server(service, "127.0.0.1:0")
        node = LiveNode(config, running, f"127.0.0.1:{running.port}")
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
