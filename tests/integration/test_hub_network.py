"""Hub connections over networks that misbehave: real proxies between node and hub, loopback only.

A fault-injecting relay sits between the node and the hub and goes silent
(a blackhole: bytes held, connections left open) or kills connections that
are idle; an HTTP CONNECT proxy carries the node's connection, with and
without basic authentication, or refuses it. The node here asks the hub for
a heartbeat every 2 s (``wait_seconds``), so its bounds are scaled down: a
silent connection is given up after wait + 10 s (with the default 25 s: 35 s),
and a proxy idle limit of 3 s stands for the common 30 s one (the default 25 s
heartbeat keeps bytes moving under it the same way).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from coordinator.config import load_federation
from coordinator.fanout import Federation
from node.hub_link import SILENCE_GRACE_SECONDS
from tests.conftest import FederationPki
from tests.integration.hub_support import (
    HubNode,
    HubThread,
    coordinator_key,
    start_hub_node,
    write_hub_federation,
)
from tests.integration.netproxies import ConnectProxy, FaultProxy
from tiaki.budget import PrivacyDefinition
from tiaki.query import PrivacyCost, Query, QueryKind

COUNT = Query(QueryKind.COUNT, PrivacyCost(PrivacyDefinition.PURE, Fraction(1, 10)))
WAIT = 2  # the test nodes' heartbeat (hub_support's wait_seconds)


def ask(fed: Path, query_id: str) -> None:
    with Federation(load_federation(fed)) as federation:
        federation.clients["ngo-nat"].query(COUNT, query_id=query_id, analyst="ana")


@pytest.fixture
def hub_thread(hub_factory: Callable[..., HubThread]) -> HubThread:
    return hub_factory(("ngo-nat",))


def node_via(tmp_path: Path, pki: FederationPki, address: str, csv: Path) -> HubNode:
    """A node whose connection to the hub goes to ``address`` (a proxy in front of it)."""
    signer = coordinator_key(tmp_path)
    return start_hub_node(tmp_path, pki, address, "ngo-nat", csv, signer=signer.public_text)


def federation_for(tmp_path: Path, pki: FederationPki, hub: HubThread, node: HubNode) -> Path:
    return write_hub_federation(
        tmp_path / "federation.yaml",
        pki,
        hub.address,
        {"ngo-nat": node.service.signing_key.public_text},
    )


def test_a_silent_blackhole_mid_call_is_noticed_in_bound_and_the_node_reconnects(
    tmp_path: Path, pki: FederationPki, hub_thread: HubThread, synth_csv: Path
) -> None:
    proxy = FaultProxy(("127.0.0.1", hub_thread.running.port))
    node = node_via(tmp_path, pki, proxy.address, synth_csv)
    try:
        fed = federation_for(tmp_path, pki, hub_thread, node)
        ask(fed, "q-before")
        proxy.blackhole(True)
        cut = time.monotonic()
        bound = WAIT + SILENCE_GRACE_SECONDS + 2
        while node.link.connected.is_set() and time.monotonic() - cut < bound + 5:
            time.sleep(0.1)
        noticed = time.monotonic() - cut
        assert not node.link.connected.is_set() and noticed <= bound, noticed
        proxy.blackhole(False)
        assert node.link.connected.wait(30), "the node did not reconnect"
        ask(fed, "q-after")
        assert node.budget_spent() == Fraction(2, 10)
        assert proxy.connections >= 2  # a new connection after the silent one
    finally:
        node.stop()
        proxy.close()


def test_a_proxy_that_kills_idle_connections_causes_no_failures(
    tmp_path: Path, pki: FederationPki, hub_thread: HubThread, synth_csv: Path
) -> None:
    proxy = FaultProxy(("127.0.0.1", hub_thread.running.port), idle_kill_seconds=3 * WAIT / 2)
    node = node_via(tmp_path, pki, proxy.address, synth_csv)
    try:
        fed = federation_for(tmp_path, pki, hub_thread, node)
        for i in range(3):
            ask(fed, f"q-idle-{i}")
            time.sleep(WAIT * 1.5)  # longer than the proxy's idle limit between questions
        assert node.budget_spent() == Fraction(3, 10)
        assert proxy.idle_kills == 0  # the hub's heartbeats kept the connection busy
    finally:
        node.stop()
        proxy.close()


@pytest.fixture
def proxied(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Set the standard proxy variable for the node's connection only (set, then unset)."""

    def use(url: str) -> None:
        monkeypatch.setenv("https_proxy", url)
        monkeypatch.setenv("grpc_proxy", url)

    return use


@pytest.mark.parametrize("auth", [False, True], ids=["open", "basic-auth"])
def test_the_node_reaches_the_hub_through_a_connect_proxy(
    tmp_path: Path,
    pki: FederationPki,
    hub_thread: HubThread,
    synth_csv: Path,
    proxied: Callable[[str], None],
    auth: bool,
) -> None:
    proxy = ConnectProxy(credentials=("ngo", "s3cret") if auth else None)
    proxied(proxy.url("ngo", "s3cret") if auth else proxy.url())
    node = node_via(tmp_path, pki, hub_thread.address, synth_csv)
    try:
        # The coordinator's own connections go direct from here on.
        os.environ.pop("https_proxy", None)
        os.environ.pop("grpc_proxy", None)
        assert proxy.tunnels == [hub_thread.address]
        fed = federation_for(tmp_path, pki, hub_thread, node)
        ask(fed, "q-proxied")
        assert node.budget_spent() == Fraction(1, 10)
    finally:
        node.stop()
        proxy.close()


def test_a_proxy_that_refuses_connect_is_a_clear_error_and_the_node_keeps_trying(
    tmp_path: Path,
    pki: FederationPki,
    hub_thread: HubThread,
    synth_csv: Path,
    proxied: Callable[[str], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = ConnectProxy(refuse=True)
    proxied(proxy.url())
    caplog.set_level(logging.WARNING, logger="tiaki.node.hub")
    node = start_hub_node(
        tmp_path, pki, hub_thread.address, "ngo-nat", synth_csv,
        signer=coordinator_key(tmp_path).public_text, wait_connected=False,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while proxy.refused < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proxy.refused >= 2 and not node.link.connected.is_set()  # refused, and retried
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "hub 127.0.0.1" in messages and "retrying" in messages
        assert "403" in messages or "proxy" in messages.lower(), messages
    finally:
        node.stop()
        proxy.close()
