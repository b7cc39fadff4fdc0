"""A real node: real store, real ledger file, real gRPC server on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator.cli.main import main
from coordinator.client import NodeClient
from coordinator.config import load_federation
from coordinator.mirror import MirrorLedger
from node.config import NodeConfig, load_config
from node.importer import import_csv
from node.server import RunningNode, create_server
from node.service import open_service
from node.synth import write_csv
from node.tls import server_credentials
from tests.conftest import FederationPki
from tests.integration.hub_support import hub_factory as hub_factory  # a fixture
from tiaki.budget import BudgetStatus
from tiaki.errors import TiakiError
from tiaki.wire_errors import status_code_of


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
    """The status code a node's error came with (its type's, from the reason it sent)."""
    assert isinstance(exc, TiakiError), exc
    return status_code_of(exc)


# ---------------------------------------------------------------- three small NGOs over mTLS
# Shared by the coordinator suites: three synthetic NGOs of different sizes,
# each a real node on a free port, and a federation file naming them.

NAMES = ("ngo-a", "ngo-b", "ngo-c")
SEEDS = (3, 5, 8)
CLIENTS = (300, 400, 500)
# Room for every example query and then some: nothing here should run out of budget.
BIG_POLICY: dict[str, Any] = {
    "budget": {"limit": "100", "period": "none"},
    "per_query_max": "2",
}
Ledgers = list[tuple[Fraction, int]]


@pytest.fixture(scope="module")
def csvs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("cli-data")
    paths = []
    for name, seed, clients in zip(NAMES, SEEDS, CLIENTS, strict=True):
        path = root / f"{name}.csv"
        write_csv(path, clients, seed)
        paths.append(path)
    return paths


@pytest.fixture
def nodes(
    make_node_config: Callable[..., Path], start_node: Callable[..., LiveNode], csvs: list[Path]
) -> list[LiveNode]:
    return [
        start_node(make_node_config(node_id=name, policy=BIG_POLICY), path)
        for name, path in zip(NAMES, csvs, strict=True)
    ]


def write_federation(path: Path, members: list[LiveNode], pki: FederationPki) -> Path:
    """``tiaki nodes add`` for each node; the first call creates the file with mutual TLS."""
    tls = pki.federation_tls("coordinator-a")
    for node in members:
        argv = ["nodes", "add", node.config.node_id, node.address, "--config", str(path)]
        argv += ["--analyst", "ana", "--tls-ca", tls["ca"], "--tls-cert", tls["cert"]]
        assert main([*argv, "--tls-key", tls["key"]]) == 0
    return path


@pytest.fixture
def fed(
    tmp_path: Path, nodes: list[LiveNode], pki: FederationPki, capsys: pytest.CaptureFixture[str]
) -> Path:
    """A federation file naming the three nodes, built with ``tiaki nodes add``."""
    path = write_federation(tmp_path / "federation.yaml", nodes, pki)
    capsys.readouterr()
    return path


def ledgers(members: list[LiveNode]) -> Ledgers:
    """Each node's own account: lifetime spent and number of charged entries."""
    return [(n.budget().lifetime_spent, len(n.running.service.ledger.entries())) for n in members]


def mirror_questions(fed_file: Path) -> int:
    path = load_federation(fed_file).ledger
    if not path.exists():
        return 0
    with MirrorLedger(path) as mirror:
        return len(mirror.questions())


def stop(node: LiveNode) -> None:
    node.running.stop(grace=0)
