"""``certs`` commands, the same under ``tiaki-node certs`` and ``tiaki certs``.

One federation CA signs a server certificate for every node and a client
certificate for every coordinator. Keys are written 0600 and never printed.
An NGO with its own CA needs none of this: the node only needs its
certificate, its key, and the CA(s) it trusts for coordinators.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tiaki import certs
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Text


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "certs",
        help="make and inspect the certificates for mutual TLS",
        description="Create a federation CA, issue node (server) and coordinator (client) "
        "certificates, show a certificate's identity and SHA-256 fingerprint, renew.",
    )
    csub = p.add_subparsers(dest="certs_command", required=True, metavar="SUBCOMMAND")

    ca = csub.add_parser("ca", help="create a federation CA (ca.crt, ca.key) in DIR")
    ca.add_argument("directory", type=Path)
    ca.add_argument("--name", default="tiaki federation CA")
    ca.add_argument("--days", type=int, default=3650)
    ca.add_argument("--force", action="store_true", help="replace an existing CA")
    runs(ca, _run_ca)

    for role, helptext in (
        ("node", "issue a node's server certificate (NAME.crt, NAME.key)"),
        ("coordinator", "issue a coordinator's client certificate (NAME.crt, NAME.key)"),
    ):
        leaf = csub.add_parser(role, help=helptext)
        leaf.add_argument("name", help="the identity: node name, or coordinator identity")
        leaf.add_argument("--ca", type=Path, required=True, help="directory with ca.crt, ca.key")
        leaf.add_argument("--out", type=Path, required=True, help="directory to write into")
        if role == "node":
            leaf.add_argument("--dns", action="append", default=[], help="extra DNS name (SAN)")
            leaf.add_argument("--ip", action="append", default=[], help="IP address (SAN)")
        leaf.add_argument("--days", type=int, default=397)
        leaf.add_argument("--force", action="store_true", help="replace existing files")
        runs(leaf, _run_node if role == "node" else _run_coordinator)

    show = csub.add_parser("show", help="a certificate's identity, validity and fingerprint")
    show.add_argument("certificate", type=Path)
    runs(show, _run_show)

    renew = csub.add_parser("renew", help="re-issue a certificate with the same name and key")
    renew.add_argument("certificate", type=Path)
    renew.add_argument("--key", type=Path, help="its key (default: the .key beside it)")
    renew.add_argument("--ca", type=Path, required=True)
    renew.add_argument("--days", type=int, default=397)
    renew.add_argument(
        "--if-expiring-within", type=int, metavar="DAYS", help="only renew if it expires soon"
    )
    runs(renew, _run_renew)


def _run_ca(args: argparse.Namespace) -> Text:
    crt, _ = certs.create_ca(args.directory, args.name, days=args.days, force=args.force)
    return Text.lines(
        f"created CA {args.name!r}: {crt} (key beside it, mode 0600: keep it offline)",
        *_info_lines(certs.describe(crt)),
    )


def _run_node(args: argparse.Namespace) -> Text:
    crt, key = certs.issue_node(
        args.ca, args.out, args.name, dns=args.dns, ips=args.ip, days=args.days, force=args.force
    )
    return Text.lines(
        f"issued node certificate {crt} and key {key}", *_info_lines(certs.describe(crt))
    )


def _run_coordinator(args: argparse.Namespace) -> Text:
    crt, key = certs.issue_coordinator(
        args.ca, args.out, args.name, days=args.days, force=args.force
    )
    info = certs.describe(crt)
    return Text.lines(
        f"issued coordinator certificate {crt} and key {key}",
        *_info_lines(info),
        f"NGOs allow it with, under policy.coordinators:  - identity: {info.subject_cn}",
    )


def _run_show(args: argparse.Namespace) -> Text:
    return Text.lines(*_info_lines(certs.describe(args.certificate)))


def _run_renew(args: argparse.Namespace) -> Text:
    if not args.certificate.name:
        raise certs.CertError(f"{args.certificate} is not a certificate file")
    key = args.key or args.certificate.with_suffix(".key")
    if args.if_expiring_within is not None and not (
        certs.expires_within(args.certificate, args.if_expiring_within)
    ):
        return Text.lines(
            f"{args.certificate} does not expire within {args.if_expiring_within} days"
        )
    path = certs.renew(args.ca, args.certificate, key, days=args.days)
    return Text.lines(
        f"renewed {path}; its fingerprint changed (update any fingerprint pins)",
        *_info_lines(certs.describe(path)),
    )


def _info_lines(info: certs.CertInfo) -> list[str]:
    lines = [f"  identity:    {info.subject_cn} ({info.role})"]
    if info.dns_names or info.ip_addresses:
        lines.append(f"  names:       {', '.join((*info.dns_names, *info.ip_addresses))}")
    lines.append(f"  issuer:      {info.issuer_cn}")
    lines.append(f"  valid:       {info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d}")
    lines.append(f"  sha256:      {info.sha256}")
    return lines
