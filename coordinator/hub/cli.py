"""``tiaki-hub``: run the relay for outbound-only nodes, and see who is connected."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from coordinator.hub.config import HubConfig, HubConfigError, load_hub_config
from coordinator.hub.queue import WorkQueue
from coordinator.hub.server import start_hub
from tiaki.certs import CertError
from tiaki.cli.exits import ErrorRule, ErrorTable, ExitCode
from tiaki.cli.program import Program, Subcommands, runs
from tiaki.cli.views import Table, Text
from tiaki.files import is_loopback

EXIT_CODES = """exit codes:
  0  success
  1  unexpected internal error
  2  bad arguments or hub file
  4  the hub could not listen on its address
"""


def server_credentials(config: HubConfig) -> grpc.ServerCredentials | None:
    """Mutual TLS from the hub file (every caller must present a certificate)."""
    if config.tls is None:
        return None
    try:
        cert = config.tls.cert.read_bytes()
        key = config.tls.key.read_bytes()
        ca = config.tls.client_ca.read_bytes()
    except OSError as exc:
        raise HubConfigError(f"cannot read the hub's TLS files: {exc}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


class CannotListen(Exception):
    pass


async def _serve(config: HubConfig, address: str | None, health_address: str | None) -> None:
    try:
        running = await start_hub(config, address, server_credentials(config), health_address)
    except (OSError, RuntimeError) as exc:
        raise CannotListen(f"cannot listen on {address or config.address}: {exc}") from None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    host = (address or config.address).rpartition(":")[0]
    print(
        f"hub serving on {host}:{running.port} ({len(config.nodes)} nodes on the roster, "
        f"queue {config.queue})",
        flush=True,
    )
    if health_address is not None:
        print(
            f"health service (plaintext, this host only) on "
            f"{health_address.rpartition(':')[0]}:{running.health_port}",
            flush=True,
        )
    await stopping.wait()
    print("stopping", flush=True)
    await running.stop()
    print("stopped", flush=True)


def run_serve(args: argparse.Namespace) -> Text:
    config = load_hub_config(args.config)
    if args.health_address is not None and not is_loopback(args.health_address):
        raise HubConfigError(
            f"--health-address {args.health_address} is not a loopback address: the plaintext "
            "health service is for this host only"
        )
    asyncio.run(_serve(config, args.address, args.health_address))
    return Text("")


def run_status(args: argparse.Namespace) -> Table:
    config = load_hub_config(args.config)
    if not Path(config.queue).exists():
        raise HubConfigError(f"{config.queue}: no queue yet (the hub has not run)")
    queue = WorkQueue(config.queue)
    try:
        now = time.time()
        rows = [
            [
                n.node_id,
                "never" if n.last_seen is None else f"{max(0, now - n.last_seen):.0f} s ago",
                str(n.waiting),
            ]
            for n in queue.nodes(config.nodes)
        ]
    finally:
        queue.close()
    return Table(["node", "last connected", "waiting"], rows)


def register(sub: Subcommands) -> None:
    serve = sub.add_parser("serve", help="run the hub until SIGTERM or Ctrl-C")
    serve.add_argument("--config", type=Path, default=Path("hub.yaml"), help="the hub's file")
    serve.add_argument("--address", help="host:port to listen on (default: the file's)")
    serve.add_argument(
        "--health-address",
        help="also answer grpc.health.v1 in plaintext here (loopback only), e.g. 127.0.0.1:50061",
    )
    runs(serve, run_serve)
    status = sub.add_parser("status", help="each rostered node: when last connected, what waits")
    status.add_argument("--config", type=Path, default=Path("hub.yaml"), help="the hub's file")
    runs(status, run_status)


PROGRAM = Program(
    name="tiaki-hub",
    description="Relay signed questions to tiaki nodes that dial out (behind NAT), and "
    "their signed answers back; it cannot read, forge or redirect them.",
    epilog=EXIT_CODES,
    commands=(register,),
    errors=ErrorTable(
        [
            ErrorRule((HubConfigError, CertError), ExitCode.USAGE),
            ErrorRule(CannotListen, ExitCode.UNAVAILABLE),
        ]
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv)


if __name__ == "__main__":
    sys.exit(main())
