"""A node in a network namespace of its own that nobody can connect to, answering through the hub.

The hub (``tiaki-hub serve``) runs in one namespace at 10.78.0.1 with a
certificate for that address, and the coordinator's CLI runs there too; the
node (``tiaki-node serve`` with ``listen: false``) runs in another, joined by a
veth pair, and opens no socket to connect to: a connection to its address is
refused. It dials out, and the question is answered and charged through the
hub. Needs root and iproute2; skips, saying why, otherwise.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

import yaml

from node.config import load_config
from node.importer import import_csv
from node.synth import write_csv
from tests.conftest import write_node_config
from tests.integration.test_netns import BIN, Network, in_namespace, network  # noqa: F401
from tiaki import certs
from tiaki.signing import create_signing_key, load_or_create_signing_key

HUB = "10.78.0.1"
NODE = "10.78.0.2"
COORDINATOR = "msd-coordinator"


def wait_for(proc: subprocess.Popen[str], words: str, seconds: float = 30) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + seconds
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            seen += line
            if words in line:
                return line
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no {words!r}: {seen}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_node_no_one_can_reach_answers_through_the_hub(
    network: Network,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    pki = tmp_path / "pki"
    certs.create_ca(pki / "ca", "tiaki hub netns CA")
    ca = pki / "ca" / "ca.crt"
    hub_cert, hub_key = certs.issue_node(pki / "ca", pki / "hub", "tiaki-hub", ips=[HUB])
    coord_cert, coord_key = certs.issue_coordinator(pki / "ca", pki / "msd", COORDINATOR)
    node_cert, node_key = certs.issue_coordinator(pki / "ca", pki / "ngo-nat", "ngo-nat")
    hub_ns, node_ns = network.namespace("hub"), network.namespace("nat")
    network.link(0, hub_ns, HUB, node_ns, NODE)

    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(
        yaml.safe_dump(
            {
                "address": f"{HUB}:50060",
                "queue": str(tmp_path / "hub-queue.sqlite"),
                "tls": {"cert": str(hub_cert), "key": str(hub_key), "client_ca": str(ca)},
                "nodes": ["ngo-nat"],
                "coordinators": [COORDINATOR],
            }
        ),
        encoding="utf-8",
    )
    signer, _ = load_or_create_signing_key(tmp_path / "coordinator-signing.key")
    config_path = write_node_config(
        tmp_path / "ngo-nat",
        node_id="ngo-nat",
        policy={
            "coordinators": [{"identity": COORDINATOR, "signing_key": signer.public_text}],
            "hubs": ["tiaki-hub"],
        },
        server={
            "listen": False,
            "hub": {
                "address": f"{HUB}:50060",
                "server_name": "tiaki-hub",
                "ca": str(ca),
                "cert": str(node_cert),
                "key": str(node_key),
            },
        },
    )
    config = load_config(config_path)
    ledger_key = create_signing_key(config.paths.signing_key)
    csv = tmp_path / "clients.csv"
    write_csv(csv, 400, 17)
    assert import_csv(config, csv).committed

    federation = tmp_path / "federation.yaml"
    federation.write_text(
        yaml.safe_dump(
            {
                "analyst": "ana",
                "identity": COORDINATOR,
                "ledger": "coordinator-ledger.sqlite",
                "signing_key": "coordinator-signing.key",
                "tls": {"ca": str(ca), "cert": str(coord_cert), "key": str(coord_key)},
                "hub": {"address": f"{HUB}:50060"},
                "nodes": [{"name": "ngo-nat", "via": "hub", "signing_key": ledger_key.public_text}],
            }
        ),
        encoding="utf-8",
    )
    run = ["ip", "netns", "exec"]
    hub = subprocess.Popen(
        [*run, hub_ns, str(BIN / "tiaki-hub"), "serve", "--config", str(hub_yaml)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    node = subprocess.Popen(
        [*run, node_ns, str(BIN / "tiaki-node"), "serve", "--config", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(hub, "hub serving on")
        assert "taking work from hub" in wait_for(node, "taking work from hub")
        # Nothing at the node's address accepts a connection.
        probe = in_namespace(
            hub_ns, sys.executable, "-c",
            f"import socket; socket.create_connection(('{NODE}', 50051), timeout=3)",
        )  # fmt: skip
        assert probe.returncode != 0 and "refused" in probe.stderr.lower(), probe.stderr
        asked = in_namespace(
            hub_ns, str(BIN / "tiaki"), "query", "--config", str(federation),
            "count_clients", "--by", "region", "--epsilon", "0.5", "--format", "json",
        )  # fmt: skip
        assert asked.returncode == 0, asked.stdout + asked.stderr
        answer = json.loads(asked.stdout)
        assert answer["coverage"] == {"answered": ["ngo-nat"], "total": 1}
        assert [n["charged"] for n in answer["nodes"]] == ["0.5"]
    finally:
        stop(node)
        stop(hub)
    assert node.returncode == 0, "the node did not stop gracefully"
