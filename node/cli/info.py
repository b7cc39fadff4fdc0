"""``tiaki-node info``: who this node is, and the keys an auditor or coordinator pins."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.config import load_config
from node.exports import signing_key_path
from node.service import open_ledger
from tiaki import __version__
from tiaki.certs import describe
from tiaki.cli.exits import CommandError
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Document, Table
from tiaki.signing import load_signing_key


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "info",
        help="the node's id, ledger signing key, TLS identity and ledger head",
        description="Print what others need to know about this node: its id and address, "
        "the public key that signs its ledger exports (give it to auditors), its TLS "
        "certificate's identity and fingerprint, and its ledger's id and latest entry.",
    )
    p.add_argument("--config", type=Path, required=True, help="the node's node.yaml")
    p.add_argument("--format", choices=("table", "json"), default="table")
    runs(p, run)


def run(args: argparse.Namespace) -> Document | Table:
    config = load_config(args.config)
    key_file = signing_key_path(config)
    if not key_file.exists():
        raise CommandError(
            f"{key_file}: no ledger signing key yet; 'tiaki-node init' or the first "
            "'tiaki-node serve' creates it"
        )
    key = load_signing_key(key_file)
    doc: dict[str, Any] = {
        "node_id": config.node_id,
        "version": __version__,
        "address": config.server.address,
        "signing_key": key.public_text,
        "signing_key_id": key.key_id,
        "tls_identity": None,
        "tls_fingerprint": None,
        "ledger_id": None,
        "ledger_entries": 0,
        "ledger_head": None,
    }
    tls = config.server.tls
    if tls is not None:
        cert = describe(tls.cert)
        doc["tls_identity"], doc["tls_fingerprint"] = cert.subject_cn, cert.sha256
    if config.paths.ledger.exists():
        with open_ledger(config) as ledger:
            seq, head = ledger.head()
            doc.update(ledger_id=ledger.ledger_id, ledger_entries=seq, ledger_head=head)
    if args.format == "json":
        return Document(doc)
    return Table((), [[k.replace("_", " "), "-" if v is None else str(v)] for k, v in doc.items()])
