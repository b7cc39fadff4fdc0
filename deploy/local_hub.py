"""The local federation's hub: a ``tiaki-hub serve`` process, and nodes that dial out to it.

A node named in ``hub_nodes`` of :func:`deploy.local_federation.start` opens
no port: its ``node.yaml`` gains ``server.hub`` (the hub's address, the CA
and a client certificate naming the node) and ``listen: false``, its policy
lists the hub in ``policy.hubs`` and grants the ministry's signing key, and
the ministry's federation file reaches it ``via: hub`` with its ledger key
pinned. The hub's own files live in ``DIR/hub``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tiaki import certs
from tiaki.signing import load_or_create_signing_key

BIN = Path(sys.executable).parent
HUB_NAME = "tiaki-hub"
START_TIMEOUT = 60.0
# Where the ministry's federation file keeps its signing key (beside its mirror ledger).
COORDINATOR_KEY = "coordinator-signing.key"


def coordinator_signing_key(workdir: Path) -> str:
    """The ministry's envelope-signing key (its ledger key), created once; its public text."""
    key, _ = load_or_create_signing_key(workdir / COORDINATOR_KEY)
    return key.public_text


def hub_certificates(pki: Path, nodes: list[str]) -> None:
    """A server certificate for the hub, and a client certificate for each node that dials it."""
    ca = pki / "ca"
    if not (pki / HUB_NAME / f"{HUB_NAME}.crt").exists():
        certs.issue_node(ca, pki / HUB_NAME, HUB_NAME, ips=["127.0.0.1"], force=True)
    for name in nodes:
        if not (pki / f"{name}-client" / f"{name}.crt").exists():
            certs.issue_coordinator(ca, pki / f"{name}-client", name, force=True)


def write_hub_config(workdir: Path, pki: Path, nodes: list[str], coordinator: str) -> Path:
    home = workdir / "hub"
    home.mkdir(parents=True, exist_ok=True)
    path = home / "hub.yaml"
    raw = {
        "version": 1,
        "address": "127.0.0.1:0",
        "queue": "hub-queue.sqlite",
        "tls": {
            "cert": str(pki / HUB_NAME / f"{HUB_NAME}.crt"),
            "key": str(pki / HUB_NAME / f"{HUB_NAME}.key"),
            "client_ca": str(pki / "ca" / "ca.crt"),
        },
        "nodes": nodes,
        "coordinators": [coordinator],
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def launch_hub(config: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the hub in its own session; (process, address) once it listens."""
    log = config.parent / "hub.log"
    with open(log, "ab") as out:
        offset = out.tell()
        process = subprocess.Popen(
            [str(BIN / "tiaki-hub"), "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (config.parent / "serve.pid").write_text(f"{process.pid}\n", encoding="ascii")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        match = re.search(r"hub serving on (\S+)", text)
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"the hub exited ({process.returncode}): {text.strip()[-2000:]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    raise RuntimeError(f"the hub did not start within {START_TIMEOUT:.0f} s; see {log}")


def dial_out(config: Path, pki: Path, hub_address: str, signer: str) -> None:
    """Make one node reach the ministry through the hub only (no port of its own)."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    name = raw["node_id"]
    client = pki / f"{name}-client"
    raw["server"]["listen"] = False
    raw["server"]["hub"] = {
        "address": hub_address,
        "server_name": HUB_NAME,
        "ca": str(pki / "ca" / "ca.crt"),
        "cert": str(client / f"{name}.crt"),
        "key": str(client / f"{name}.key"),
    }
    raw["policy"]["hubs"] = [HUB_NAME]
    for grant in raw["policy"].get("coordinators", []):
        grant["signing_key"] = signer
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
