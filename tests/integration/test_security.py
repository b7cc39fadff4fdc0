"""Mutual TLS and authorization at a real node: who may ask, and what is recorded.

Certificates come from the project's own tool (tiaki.certs). Every refusal
must leave the node's ledger exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import grpc
import pytest
import yaml

from coordinator.client import NodeClient, new_query_id
from node.cli.serve import credentials_for
from node.config import load_config
from tests.conftest import FederationPki
from tests.integration.conftest import LiveNode, status_code
from tiaki import certs
from tiaki.budget import PrivacyDefinition
from tiaki.cli.exits import CommandError
from tiaki.errors import TiakiError
from tiaki.query import PrivacyCost, Query, QueryKind

QUERY = Query(QueryKind.COUNT, PrivacyCost.parse(PrivacyDefinition.PURE, "0.1"))


@pytest.fixture
def node(
    make_node_config: Callable[..., Path], start_node: Callable[..., LiveNode], synth_csv: Path
) -> LiveNode:
    policy = {
        "budget": {"limit": "10", "period": "none"},
        "per_query_max": "1",
        "coordinators": [
            {"identity": "coordinator-a"},
            {"identity": "coord-a", "kinds": ["count_clients"]},
            {"identity": "coord-b", "budget_cap": "0.5"},
        ],
    }
    server = {"max_concurrent_per_identity": 16}
    return start_node(make_node_config(policy=policy, server=server), synth_csv)


def client_with(node: LiveNode, cert: Path | None, key: Path | None, ca: Path) -> NodeClient:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return NodeClient(
        node.address, credentials=credentials, server_name=node.config.node_id, timeout=10
    )


def refused(node: LiveNode, client: NodeClient) -> grpc.StatusCode:
    before = node.budget()
    entries = len(node.running.service.ledger.entries())
    with client, pytest.raises(TiakiError) as info:
        client.query(QUERY, query_id=new_query_id(), analyst="mallory")
    assert node.budget() == before
    assert len(node.running.service.ledger.entries()) == entries
    return status_code(info.value)


def test_an_allowed_identity_is_served_and_recorded_by_its_certificate(node: LiveNode) -> None:
    with node.client("coordinator-a") as client:
        answer = client.query(QUERY, query_id="q-1", analyst="claims-to-be-the-minister")
    assert answer.charged.amount > 0
    (entry,) = node.running.service.ledger.entries()
    assert entry.identity == "coordinator-a"  # from the verified certificate
    assert entry.analyst == "claims-to-be-the-minister"  # recorded only as a claim


def test_no_client_certificate_is_refused(node: LiveNode, pki: FederationPki) -> None:
    assert refused(node, client_with(node, None, None, pki.ca_cert)) is grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_refused(node: LiveNode, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    certs.create_ca(other, "someone else")
    cert, key = certs.issue_coordinator(other, tmp_path / "out", "coordinator-a")
    code = refused(node, client_with(node, cert, key, other / "ca.crt"))
    assert code is grpc.StatusCode.UNAVAILABLE


def test_an_expired_certificate_is_refused(
    node: LiveNode, pki: FederationPki, tmp_path: Path
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=30)
    cert, key = certs.issue_coordinator(
        pki.ca_dir, tmp_path / "old", "coordinator-a", not_before=long_ago, days=10
    )
    assert refused(node, client_with(node, cert, key, pki.ca_cert)) is grpc.StatusCode.UNAVAILABLE


def test_a_valid_certificate_not_on_the_list_is_denied(
    node: LiveNode, pki: FederationPki, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = pki.coordinator("stranger")
    code = refused(node, client_with(node, cert, key, pki.ca_cert))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert any("stranger" in r.getMessage() for r in caplog.records)  # the attempt is logged


def test_the_coordinator_refuses_a_node_with_the_wrong_identity(
    node: LiveNode, pki: FederationPki
) -> None:
    client = NodeClient(
        node.address,
        credentials=pki.channel_credentials("coordinator-a"),
        server_name="some-other-ngo",
        timeout=10,
    )
    assert refused(node, client) is grpc.StatusCode.UNAVAILABLE


def test_plaintext_to_a_tls_port_is_refused(node: LiveNode) -> None:
    assert refused(node, NodeClient(node.address, timeout=10)) is grpc.StatusCode.UNAVAILABLE


def test_per_identity_kinds_are_enforced(node: LiveNode) -> None:
    assert refused(node, node.client("coord-a")) is grpc.StatusCode.PERMISSION_DENIED
    with node.client("coord-a") as client:
        allowed = Query(QueryKind.COUNT_CLIENTS, QUERY.cost)
        assert client.query(allowed, query_id="ok", analyst="a").charged.amount > 0


def test_per_identity_caps_hold_under_concurrency(node: LiveNode) -> None:
    def attempt(i: int) -> Fraction | None:
        with node.client("coord-b") as client:
            try:
                return client.query(QUERY, query_id=f"b-{i}", analyst="b").charged.amount
            except TiakiError as exc:  # over the cap is one of the two right outcomes
                assert status_code(exc) is grpc.StatusCode.RESOURCE_EXHAUSTED  # noqa: PT017
                return None

    with ThreadPoolExecutor(max_workers=12) as pool:
        granted = [c for c in pool.map(attempt, range(40)) if c is not None]
    assert len(granted) == 5  # 0.5 / 0.1, charged a hair under 0.1 each
    spent_by_b = sum(
        (e.charge for e in node.running.service.ledger.entries() if e.identity == "coord-b"),
        Fraction(0),
    )
    assert spent_by_b == sum(granted, Fraction(0)) <= Fraction(1, 2)
    with node.client("coordinator-a") as client:  # others are not held back by b's cap
        client.query(QUERY, query_id="a-after", analyst="a")


def test_insecure_mode_only_binds_loopback(make_node_config: Callable[..., Path]) -> None:
    config = load_config(make_node_config(pki=None))
    assert credentials_for(config, "127.0.0.1:0", insecure=True) is None
    with pytest.raises(CommandError, match="loopback"):
        credentials_for(config, "0.0.0.0:50051", insecure=True)
    with pytest.raises(CommandError, match=r"server\.tls is not configured"):
        credentials_for(config, "127.0.0.1:0", insecure=False)


def test_certificates_are_reloaded_without_a_restart(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    synth_csv: Path,
    pki: FederationPki,
    tmp_path: Path,
) -> None:
    # A node of its own, with its own copy of the client CA file to rotate.
    config_path = make_node_config(node_id="rotating")
    raw = yaml.safe_load(config_path.read_text())
    own_ca = config_path.parent / "client-ca.crt"
    own_ca.write_bytes(pki.ca_cert.read_bytes())
    raw["server"]["tls"]["client_ca"] = str(own_ca)
    config_path.write_text(yaml.safe_dump(raw))
    node = start_node(config_path, synth_csv)
    tls = node.config.server.tls
    assert tls is not None
    with node.client("coordinator-a") as client:
        client.query(QUERY, query_id="before", analyst="a")

    new_ca = tmp_path / "new-ca"
    certs.create_ca(new_ca, "rotated client CA")
    cert, key = certs.issue_coordinator(new_ca, tmp_path / "new", "coordinator-a")
    replacement = tls.client_ca.with_name("client-ca.new")
    replacement.write_bytes((new_ca / "ca.crt").read_bytes())
    replacement.replace(tls.client_ca)  # the node now trusts only the new CA's coordinators

    old = refused(node, node.client("coordinator-a"))
    assert old is grpc.StatusCode.UNAVAILABLE
    with client_with(node, cert, key, pki.ca_cert) as client:
        assert client.query(QUERY, query_id="after", analyst="a").charged.amount > 0
