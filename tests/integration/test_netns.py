"""A federation across hosts that are not loopback: one network namespace per party.

Each node runs ``tiaki-node serve`` inside its own namespace, bound to its own
10.x address, with a certificate carrying that address as an IP SAN; the
coordinator CLI runs in a namespace of its own, joined to each node by a veth
pair. So certificates, SANs, bind addresses and timeouts are exercised over
real (virtual) links. Needs root and iproute2; skips, saying why, otherwise.
Every namespace and link is removed afterwards, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from coordinator.config import add_node
from node.config import load_config
from node.importer import import_csv
from node.synth import write_csv
from tests.conftest import ROOT, write_node_config
from tiaki import certs

BIN = Path(sys.executable).parent
COORDINATOR = "msd-coordinator"
PORT = 50051


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Network:
    """Namespaces and veth links made for one test; :meth:`remove` undoes all of it."""

    prefix: str = field(default_factory=lambda: f"tk{os.getpid() % 10000}{secrets.token_hex(2)}")
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def namespace(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def link(self, index: int, a: str, a_address: str, b: str, b_address: str) -> None:
        """A veth pair between namespaces ``a`` and ``b``, addressed /24, both ends up."""
        end_a, end_b = f"{self.prefix}a{index}", f"{self.prefix}b{index}"
        self.links += [end_a, end_b]
        ip("link", "add", end_a, "netns", a, "type", "veth", "peer", "name", end_b, "netns", b)
        for ns, end, address in ((a, end_a, a_address), (b, end_b, b_address)):
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", end)
            ip("-n", ns, "link", "set", end, "up")

    def remove(self) -> None:
        # Deleting a namespace deletes the veth ends inside it; a link left in
        # the root namespace by a half-finished setup is deleted by name.
        for ns in self.namespaces:
            ip("netns", "del", ns, check=False)
        for end in self.links:
            if ip("link", "show", end, check=False).returncode == 0:
                ip("link", "del", end, check=False)


def why_not_permitted() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs this as root)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"tkprobe{os.getpid()}{secrets.token_hex(2)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"'ip netns add' is not permitted here: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def network() -> Iterator[Network]:
    reason = why_not_permitted()
    if reason is not None:
        pytest.skip(f"network namespace test skipped: {reason}")
    net = Network()
    try:
        yield net
    finally:
        net.remove()


class Node:
    """``tiaki-node serve`` inside a namespace; stopped with SIGTERM like a real service."""

    def __init__(self, namespace: str, config: Path) -> None:
        # `ip netns exec` execs the command, so this process is the node itself.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, str(BIN / "tiaki-node"), "serve",
             "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def wait_serving(self) -> str:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        match = re.search(r"serving on (\S+)", line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"node did not start: {line!r} {self.proc.stderr.read()}")
        return match.group(1)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def in_namespace(namespace: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, timeout=120
    )


def test_federation_query_across_namespaces(network: Network, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    certs.create_ca(pki / "ca", "tiaki netns CA")
    ca = pki / "ca" / "ca.crt"
    coord_cert, coord_key = certs.issue_coordinator(pki / "ca", pki / "msd", COORDINATOR)
    tls = {"ca": str(ca), "cert": str(coord_cert), "key": str(coord_key)}

    coordinator_ns = network.namespace("coord")
    names = ("ngo-a", "ngo-b")
    nodes: list[Node] = []
    federation = tmp_path / "federation.yaml"
    try:
        for i, name in enumerate(names):
            node_ns = network.namespace(f"n{i}")
            address = f"10.77.{i}.2"
            network.link(i, coordinator_ns, f"10.77.{i}.1", node_ns, address)
            cert, key = certs.issue_node(pki / "ca", pki / name, name, ips=[address])
            config = write_node_config(
                tmp_path / name,
                node_id=name,
                server={
                    "address": f"{address}:{PORT}",
                    "tls": {"cert": str(cert), "key": str(key), "client_ca": str(ca)},
                },
                policy={"coordinators": [{"identity": COORDINATOR}]},
            )
            csv = tmp_path / f"{name}.csv"
            write_csv(csv, 400, 31 + i)
            assert import_csv(load_config(config), csv).committed
            nodes.append(Node(node_ns, config))
            add_node(federation, name, f"{address}:{PORT}", analyst="netns-analyst", tls=tls)
        assert [node.wait_serving() for node in nodes] == [f"10.77.{i}.2:{PORT}" for i in (0, 1)]

        # The node's IP SAN, checked without any name override, from the coordinator's host.
        health = in_namespace(
            coordinator_ns, sys.executable, str(ROOT / "deploy" / "healthcheck.py"),
            "--address", f"10.77.0.2:{PORT}", "--tls-ca", tls["ca"], "--tls-cert", tls["cert"],
            "--tls-key", tls["key"], "--timeout", "10",
        )  # fmt: skip
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stdout + health.stderr
        # ... and pinning: ngo-a's certificate does not pass for ngo-b.
        wrong = in_namespace(
            coordinator_ns, sys.executable, str(ROOT / "deploy" / "healthcheck.py"),
            "--address", f"10.77.0.2:{PORT}", "--tls-ca", tls["ca"], "--tls-cert", tls["cert"],
            "--tls-key", tls["key"], "--server-name", "ngo-b", "--timeout", "10",
        )  # fmt: skip
        assert wrong.returncode == 1 and "unreachable" in wrong.stdout

        asked = in_namespace(
            coordinator_ns, str(BIN / "tiaki"), "query", "--config", str(federation),
            "count_clients", "--by", "region", "--epsilon", "0.5", "--format", "json",
        )  # fmt: skip
        assert asked.returncode == 0, asked.stdout + asked.stderr
        answer = json.loads(asked.stdout)
        assert answer["coverage"] == {"answered": list(names), "total": 2}
        assert [n["charged"] for n in answer["nodes"]] == ["0.5", "0.5"]
        assert len(answer["cells"]) == 16
    finally:
        codes = [node.stop() for node in nodes]
    assert codes == [0, 0], "a node did not stop gracefully on SIGTERM"


def test_the_skip_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in (why_not_permitted() or "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "iproute2" in (why_not_permitted() or "")
