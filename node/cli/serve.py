"""``tiaki-node serve``: run the node's gRPC server until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from node.cli.errors import CommandError
from node.config import NodeConfig, load_config
from node.server import create_server
from node.service import open_service
from node.tls import TlsError, server_credentials
from tiaki.files import is_loopback

RELOAD_CHECK_SECONDS = 2.0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="answer DP queries over gRPC",
        description="Serve the node's records over gRPC. Stops gracefully on SIGTERM or Ctrl-C "
        "(in-flight queries finish; nothing is charged that is not answered). A re-import is "
        "picked up automatically; SIGHUP makes the node check at once.",
    )
    p.add_argument("--config", type=Path, required=True, help="the node's node.yaml")
    p.add_argument("--address", help="host:port to bind (default: server.address in the config)")
    p.add_argument("--verbose", action="store_true", help="log every query (never record values)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="development only: plaintext gRPC without TLS, loopback addresses only; the "
        "coordinator's identity is then an unverified claim",
    )
    p.set_defaults(run=run)


def credentials_for(
    config: NodeConfig, address: str, insecure: bool
) -> grpc.ServerCredentials | None:
    """mTLS credentials, or None for --insecure (which only ever binds loopback)."""
    if insecure:
        if not is_loopback(address):
            raise CommandError(
                f"--insecure refuses to bind {address}: plaintext is for loopback development "
                "only; configure server.tls to serve other hosts"
            )
        print(
            "WARNING: --insecure: no TLS, and coordinator identities are unverified claims. "
            "Never use this with real client records.",
            file=sys.stderr,
            flush=True,
        )
        return None
    if config.server.tls is None:
        raise CommandError(
            "server.tls is not configured: give the node's certificate, key and client CA "
            "(see 'tiaki-node certs --help'), or pass --insecure for loopback development"
        )
    try:
        return server_credentials(config.server.tls)
    except TlsError as exc:
        raise CommandError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    address = args.address or config.server.address
    credentials = credentials_for(config, address, args.insecure)
    service = open_service(config)
    try:
        node = create_server(service, address, credentials)
    except (OSError, RuntimeError) as exc:
        raise CommandError(f"cannot listen on {address}: {exc}") from None
    dataset = service.datasets.current
    print(
        f"node {config.node_id} serving on {address.rpartition(':')[0]}:{node.port} "
        f"({dataset.n_records} records, {dataset.n_clients} clients, version {dataset.version})",
        flush=True,
    )

    stopping = threading.Event()
    check_now = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        check_now.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        check_now.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    while not stopping.is_set():
        check_now.wait(RELOAD_CHECK_SECONDS)
        check_now.clear()
        if not stopping.is_set() and service.datasets.reload_if_changed():
            print(f"records reloaded: version {service.datasets.current.version}", flush=True)
    print("stopping: letting in-flight queries finish", flush=True)
    node.stop()
    service.ledger.close()
    print("stopped", flush=True)
    return 0
