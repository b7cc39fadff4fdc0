"""``tiaki-node serve``: run the node's gRPC server until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import sys
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2_grpc

from node import logs
from node.config import ConfigError, NodeConfig, load_config
from node.datadir_lock import DataDirBusy, DataDirLock
from node.hub_link import HubLink, start_hub_link
from node.ledger import LedgerError
from node.server import NodeServicer, RunningNode, create_server, gatekeeper_for
from node.service import NodeService, PolicyReloadError, open_service
from node.tls import TlsError, server_credentials
from tiaki.cli.exits import CommandError
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Outcome
from tiaki.files import is_loopback

RELOAD_CHECK_SECONDS = 2.0


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "serve",
        help="answer DP queries over gRPC",
        description="Serve the node's records over gRPC. Stops gracefully on SIGTERM or Ctrl-C "
        "(in-flight queries finish; nothing is charged that is not answered). A re-import is "
        "picked up automatically; SIGHUP makes the node check at once and re-read the config's "
        "policy (an invalid file is refused and the running policy kept).",
    )
    p.add_argument("--config", type=Path, required=True, help="the node's node.yaml")
    p.add_argument("--address", help="host:port to bind (default: server.address in the config)")
    p.add_argument("--verbose", action="store_true", help="log every query (never record values)")
    p.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        default="text",
        help="text lines for people (default), or one JSON object per line for log collectors",
    )
    p.add_argument(
        "--health-address",
        metavar="HOST:PORT",
        help="also serve the grpc.health.v1 service, plaintext, on this loopback address, for "
        "local health checks that hold no client certificate (containers, monitoring agents)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="development only: plaintext gRPC without TLS, loopback addresses only; the "
        "coordinator's identity is then an unverified claim",
    )
    runs(p, run)


def credentials_for(
    config: NodeConfig, address: str, insecure: bool, warn: logs.Announcer | None = None
) -> grpc.ServerCredentials | None:
    """mTLS credentials, or None for --insecure (which only ever binds loopback)."""
    if insecure:
        if not is_loopback(address):
            raise CommandError(
                f"--insecure refuses to bind {address}: plaintext is for loopback development "
                "only; configure server.tls to serve other hosts"
            )
        (warn or logs.Announcer("text", sys.stderr))(
            "WARNING: --insecure: no TLS, and coordinator identities are unverified claims. "
            "Never use this with real client records.",
            level=logging.WARNING,
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


def check_health_address(address: str | None) -> None:
    if address is not None and not is_loopback(address):
        raise CommandError(
            f"--health-address {address} is not a loopback address: the plaintext health "
            "port is for checks on this host only (remote checks use the mTLS port)"
        )


def start_health_server(node: RunningNode, address: str) -> tuple[grpc.Server, str]:
    """The node's own health servicer, plaintext, on a loopback address.

    Plaintext is safe here because the address must be loopback (inside a
    container that is the container's own network namespace) and the service
    says only SERVING or NOT_SERVING; it lets a local checker look without a
    client certificate. Sharing the servicer means it reports exactly what the
    mTLS port reports, NOT_SERVING included while a stop drains queries.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(node.health, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise CommandError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise CommandError(f"cannot listen on {address}")
    server.start()
    return server, f"{address.rpartition(':')[0]}:{port}"


def _address_in_use(address: str) -> bool:
    """Whether something already listens on ``address`` (after grpc failed to bind it)."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return False
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def cannot_listen(address: str, exc: BaseException) -> CommandError:
    if _address_in_use(address):
        return CommandError(
            f"cannot listen on {address}: address in use (another process, perhaps another "
            "node, is listening there); stop it or choose another server.address"
        )
    return CommandError(f"cannot listen on {address}: {exc}")


def reload_config(path: Path, service: NodeService, say: logs.Announcer) -> None:
    """Re-read ``node.yaml`` and apply its policy; on any problem keep the running one."""
    try:
        notes = service.apply_config(load_config(path))
    except (ConfigError, PolicyReloadError, LedgerError) as exc:
        say(
            f"config not reloaded, the running policy stays in force: {exc}",
            level=logging.WARNING,
            event="reload_refused",
        )
        return
    say("policy reloaded from " + str(path), event="policy_reloaded")
    for note in notes:
        say(note, level=logging.WARNING, event="reload_note")


def run(args: argparse.Namespace) -> Outcome:
    check_health_address(args.health_address)
    config = load_config(args.config)
    address = args.address or config.server.address
    log_format = getattr(args, "log_format", "text")
    logs.configure(log_format, args.verbose)
    say = logs.Announcer(log_format)
    if not config.server.listen and args.health_address is not None:
        raise CommandError(
            "--health-address needs a listening node; this one only dials out to its hub "
            "(server.listen is false)"
        )
    credentials = (
        credentials_for(config, address, args.insecure, logs.Announcer(log_format, sys.stderr))
        if config.server.listen
        else None
    )
    lock = DataDirLock(config.data_dir)
    try:
        lock.acquire()
    except DataDirBusy as exc:
        raise CommandError(str(exc)) from None
    try:
        _serve(args, config, address, credentials, say)
    finally:
        lock.release()
    return Outcome()


def _serve(
    args: argparse.Namespace,
    config: NodeConfig,
    address: str,
    credentials: grpc.ServerCredentials | None,
    say: logs.Announcer,
) -> None:
    service = open_service(config)
    node: RunningNode | None = None
    if config.server.listen:
        try:
            node = create_server(service, address, credentials)
        except (OSError, RuntimeError) as exc:
            service.close()
            raise cannot_listen(address, exc) from None
    health_server: grpc.Server | None = None
    health_address = ""
    link: HubLink | None = None
    try:
        if args.health_address is not None and node is not None:
            health_server, health_address = start_health_server(node, args.health_address)
        if config.server.hub is not None:
            servicer = (
                node.servicer
                if node is not None
                else NodeServicer(service, gatekeeper_for(service))
            )
            link = start_hub_link(service, servicer)
    except BaseException:
        if node is not None:
            node.stop(grace=0)
        service.close()
        raise
    # Handlers before the "serving" line: whoever waits for it may signal at once.
    stopping = threading.Event()
    check_now = threading.Event()
    reload_now = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        check_now.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_now.set()
        check_now.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    dataset = service.datasets.current
    bound = f"{address.rpartition(':')[0]}:{node.port}" if node is not None else ""
    where = [f"serving on {bound}"] if node is not None else []
    if config.server.hub is not None:
        where.append(f"taking work from hub {config.server.hub.address}")
    say(
        f"node {config.node_id} {' and '.join(where)} "
        f"({dataset.n_records} records, {dataset.n_clients} clients, version {dataset.version})",
        event="serving",
        node_id=config.node_id,
        address=bound,
        hub=config.server.hub.address if config.server.hub is not None else "",
        records=dataset.n_records,
        clients=dataset.n_clients,
        dataset_version=dataset.version,
    )
    if health_server is not None:
        say(
            f"health service (plaintext, this host only) on {health_address}",
            event="health",
            health_address=health_address,
        )

    while not stopping.is_set():
        check_now.wait(RELOAD_CHECK_SECONDS)
        check_now.clear()
        if not stopping.is_set() and reload_now.is_set():
            reload_now.clear()
            reload_config(args.config, service, say)
        if not stopping.is_set() and service.datasets.reload_if_changed():
            version = service.datasets.current.version
            say(f"records reloaded: version {version}", event="reloaded", dataset_version=version)
    say("stopping: letting in-flight queries finish", event="stopping")
    if link is not None:
        link.stop()
    if node is not None:
        node.stop()
    if health_server is not None:
        health_server.stop(0).wait()
    service.close()
    say("stopped", event="stopped")
