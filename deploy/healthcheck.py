"""Ask nodes' standard grpc.health.v1 service whether they are SERVING; exit 0 if all are.

Used by the container images' HEALTHCHECK and by monitoring; it needs only
what a tiaki installation already has:

    python healthcheck.py --address 127.0.0.1:50052          # a node's loopback health port
    python healthcheck.py --address ngo-a.example.nz:50051 \\
        --tls-ca ca.crt --tls-cert msd.crt --tls-key msd.key  # its mTLS port, as a coordinator
    python healthcheck.py --federation federation.yaml        # every node in a federation file

A plaintext check is made only towards a loopback address (the node serves
plaintext health only there: ``tiaki-node serve --health-address``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tiaki.files import is_loopback


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    tls: tuple[Path, Path, Path] | None  # ca, cert, key
    server_name: str | None


def check(target: Target, timeout: float) -> str:
    """The target's status name (SERVING, NOT_SERVING, ...) or why it could not be asked."""
    if target.tls is None:
        channel = grpc.insecure_channel(target.address)
    else:
        ca, cert, key = (p.read_bytes() for p in target.tls)
        options = []
        if target.server_name:
            options.append(("grpc.ssl_target_name_override", target.server_name))
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        channel = grpc.secure_channel(target.address, credentials, options=options)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            return f"unreachable ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def federation_targets(path: Path) -> list[Target]:
    from coordinator.config import load_federation  # only this mode needs the coordinator

    config = load_federation(path)
    if config.tls is None:
        raise SystemExit(f"{path}: has no tls section; health over mTLS needs one")
    tls = (config.tls.ca, config.tls.cert, config.tls.key)
    # A node reached through the hub has no address to check: the hub's roster says
    # when it last pulled ('tiaki nodes').
    return [
        Target(n.name, n.address, tls, n.expected_identity)
        for n in config.nodes
        if n.address is not None
    ]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="host:port of one node's health service")
    where.add_argument("--federation", type=Path, help="check every node of a federation file")
    p.add_argument("--tls-ca", type=Path, help="CA that signed the node's certificate")
    p.add_argument("--tls-cert", type=Path, help="a client certificate the node trusts")
    p.add_argument("--tls-key", type=Path, help="its key")
    p.add_argument("--server-name", help="name the node's certificate must carry")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per node (default 3)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.federation is not None:
        targets = federation_targets(args.federation)
    else:
        parts = (args.tls_ca, args.tls_cert, args.tls_key)
        if any(parts) and not all(parts):
            raise SystemExit("--tls-ca, --tls-cert and --tls-key go together")
        if not any(parts) and not is_loopback(args.address):
            raise SystemExit(
                f"{args.address} is not loopback: give --tls-ca/--tls-cert/--tls-key for mTLS"
            )
        tls = (args.tls_ca, args.tls_cert, args.tls_key) if all(parts) else None
        targets = [Target(args.address, args.address, tls, args.server_name)]
    healthy = True
    for target in targets:
        status = check(target, args.timeout)
        healthy = healthy and status == "SERVING"
        print(f"{target.name}: {status}", flush=True)
    return 0 if healthy and targets else 1


if __name__ == "__main__":
    sys.exit(main())
