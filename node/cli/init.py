"""``tiaki-node init``: a ready-to-edit node directory with an annotated config."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

from node.config import load_config
from node.exports import node_signing_key
from node.store import load_or_create_salt
from tiaki.cli.exits import CommandError
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Text

CONFIG_NAME = "node.yaml"
TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "node.yaml"


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "init",
        help="create a node directory with an annotated node.yaml",
        description="Write DIR/node.yaml (schema and policy, annotated, matching the records "
        "that 'tiaki-node synth' makes) and DIR/data/ with the node's secret salt and its "
        "ledger signing key.",
    )
    p.add_argument("directory", type=Path, help="directory to create or fill")
    p.add_argument("--address", default="127.0.0.1:50051", help="host:port to serve on")
    p.add_argument("--node-id", default=None, help="the node's name (default: directory name)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="where records, ledger, salt and signing key live (default: DIR/data); "
        "relative paths are taken from DIR",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing node.yaml")
    p.add_argument("--cert", help="this node's TLS certificate (turns on mutual TLS)")
    p.add_argument("--key", help="this node's TLS key")
    p.add_argument("--client-ca", help="CA certificate(s) whose coordinators may connect")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="IDENTITY",
        help="a coordinator identity allowed to ask (repeat for several)",
    )
    p.add_argument(
        "--privacy",
        choices=("pure", "zcdp"),
        default="pure",
        help="how this node accounts: pure (epsilon-DP, discrete Laplace) or zcdp (rho, "
        "discrete Gaussian). Only zcdp nodes can take part in secure sums (OpenDP has no "
        "distributed Laplace sampler); the choice is fixed for the life of the ledger",
    )
    runs(p, run)


def template_text() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


def render(
    node_id: str,
    address: str,
    tls: tuple[str, str, str] | None = None,
    allow: Sequence[str] = (),
    data_dir: str | None = None,
    privacy: str = "pure",
) -> str:
    text = template_text()
    if privacy != "pure":
        text = re.sub(
            r"(?m)^  privacy_definition: pure ",
            lambda _: f"  privacy_definition: {privacy} ",
            text,
            count=1,
        )
    # Replacements are functions so that nothing in them is read as a regex escape;
    # values are JSON-quoted, which YAML reads as plain strings (IPv6 brackets too).
    text = re.sub(r"(?m)^node_id: \S+", lambda _: f"node_id: {node_id}", text, count=1)
    text = re.sub(
        r"(?m)^  address: \S+", lambda _: f"  address: {json.dumps(address)}", text, count=1
    )
    if data_dir is not None:
        text = re.sub(
            r"(?m)^data_dir: \S+", lambda _: f"data_dir: {json.dumps(data_dir)}", text, count=1
        )
    if tls is not None:
        cert, key, client_ca = (json.dumps(str(Path(p).resolve())) for p in tls)
        block = f"  tls:\n    cert: {cert}\n    key: {key}\n    client_ca: {client_ca}\n"
        text = re.sub(r"(?m)^  # tls:\n.*\n.*\n.*\n", lambda _: block, text, count=1)
    if allow:
        grants = "".join(f"    - identity: {json.dumps(name)}\n" for name in allow)
        text = re.sub(
            r"(?m)^  # coordinators:\n", lambda _: f"  coordinators:\n{grants}", text, count=1
        )
    return text


def run(args: argparse.Namespace) -> Text:
    directory: Path = args.directory
    node_id = args.node_id or re.sub(r"[^A-Za-z0-9._-]", "-", directory.resolve().name) or "node"
    target = directory / CONFIG_NAME
    if target.exists() and not args.force:
        raise CommandError(f"{target} already exists; use --force to overwrite it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".yaml.tmp")
        parts = (args.cert, args.key, args.client_ca)
        if any(parts) and not all(parts):
            raise CommandError("--cert, --key and --client-ca go together")
        tls = (args.cert, args.key, args.client_ca) if all(parts) else None
        if tls is not None and not args.allow:
            raise CommandError("with TLS on, name at least one coordinator with --allow")
        text = render(node_id, args.address, tls, args.allow, args.data_dir, args.privacy)
        tmp.write_text(text, encoding="utf-8")
        load_config(tmp)  # never leave a config the node would refuse
        tmp.replace(target)
    except OSError as exc:
        raise CommandError(f"cannot write {target}: {exc.strerror or exc}") from None
    config = load_config(target)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    load_or_create_salt(config.data_dir)
    key, _ = node_signing_key(config)
    return Text.lines(
        f"created {target} (node id {node_id}, serving on {args.address}, accounting in "
        f"{args.privacy})",
        f"ledger signing key {key.path}; give auditors its public key:",
        f"  {key.public_text}",
        "next:",
        "  tiaki-node synth --clients 5000 --seed 7 --out clients.csv   # or your own export",
        f"  tiaki-node import --config {target} clients.csv",
        f"  tiaki-node serve --config {target}",
    )
