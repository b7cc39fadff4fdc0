"""``tiaki nodes``: add nodes to the federation file and check each one."""

from __future__ import annotations

import argparse
import time

from coordinator.cli.common import add_config_argument, open_federation
from coordinator.client import NodeClient
from coordinator.config import add_node
from coordinator.fanout import Federation, failure_reason
from tiaki.budget import BudgetStatus, PrivacyDefinition, display_amount
from tiaki.cli.exits import CommandError, ExitCode
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Outcome, Table, Text
from tiaki.errors import TiakiError
from tiaki.node_info import NodeInfo

_DEFINITION_WORDS = {PrivacyDefinition.PURE: "pure", PrivacyDefinition.ZCDP: "zCDP"}


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "nodes",
        help="list the federation's nodes: reachable, schema compatible, budget left",
        description="Without a subcommand: contact every node and show whether it is "
        "reachable, whether its schema matches the others', and what budget it has left.",
    )
    add_config_argument(p)
    runs(p, run_list)
    nodes_sub = p.add_subparsers(dest="nodes_command", metavar="SUBCOMMAND")
    add = nodes_sub.add_parser("add", help="add or update a node in the federation file")
    add.add_argument("name", help="a short name for the node, e.g. ngo-a")
    add.add_argument("address", nargs="?", help="host:port of the node (none with --via-hub)")
    add.add_argument(
        "--via-hub",
        metavar="HUB_HOST:PORT",
        help="the node dials out to this hub instead of listening (it is behind NAT); give "
        "its --signing-key too",
    )
    add.add_argument(
        "--hub-server-name", help="with --via-hub: identity the hub's certificate must carry"
    )
    add.add_argument(
        "--signing-key",
        help="with --via-hub: the node's ledger key (ed25519:..., from 'tiaki-node info'); "
        "its answers through the hub are checked against it",
    )
    add.add_argument("--analyst", help="your name, when this creates the file")
    add.add_argument(
        "--server-name", help="identity the node's certificate must carry (default: NAME)"
    )
    add.add_argument(
        "--tls-ca", help="when creating the file: CA certificate that vouches for nodes"
    )
    add.add_argument("--tls-cert", help="when creating the file: this coordinator's certificate")
    add.add_argument("--tls-key", help="when creating the file: this coordinator's key")
    add.add_argument(
        "--insecure", action="store_true", help="when creating the file: plaintext, loopback only"
    )
    add_config_argument(add)
    runs(add, run_add)


def run_add(args: argparse.Namespace) -> Text:
    tls_parts = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls_parts) and not all(tls_parts):
        raise CommandError("--tls-ca, --tls-cert and --tls-key go together")
    tls = dict(zip(("ca", "cert", "key"), tls_parts, strict=True)) if all(tls_parts) else None
    if (args.address is None) == (args.via_hub is None):
        raise CommandError("give the node's address, or --via-hub HUB_HOST:PORT (not both)")
    hub = None
    if args.via_hub is not None:
        hub = {"address": args.via_hub}
        if args.hub_server_name:
            hub["server_name"] = args.hub_server_name
    new = add_node(
        args.config,
        args.name,
        args.address,
        analyst=args.analyst,
        server_name=args.server_name,
        tls=tls,
        insecure=args.insecure,
        hub=hub,
        signing_key=args.signing_key,
    )
    verb = "added" if new else "updated"
    where = f"at {args.address}" if args.address else f"via hub {args.via_hub}"
    return Text.lines(f"{verb} node {args.name} {where} in {args.config}")


def _schema_signature(info: NodeInfo) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {c.name: (c.type, tuple(c.categories)) for c in info.columns}


def _compatibility(info: NodeInfo, reference: NodeInfo) -> str:
    mine, theirs = _schema_signature(info), _schema_signature(reference)
    if info.definition != reference.definition:
        return "no: different privacy definition"
    differing = sorted(n for n in set(mine) | set(theirs) if mine.get(n) != theirs.get(n))
    if differing:
        return "differs: " + ", ".join(differing[:4]) + ("..." if len(differing) > 4 else "")
    return "yes"


def _hub_polls(federation: Federation) -> dict[str, str]:
    """For nodes reached through the hub: when each last pulled, as the hub saw it."""
    if federation.hub is None:
        return {}
    try:
        seen = {n.node_id: n for n in federation.hub.nodes()}
    except TiakiError as exc:
        return {
            e.name: f"; hub: {failure_reason(exc)}"
            for e in federation.config.nodes
            if e.via == "hub"
        }
    now = time.time()
    words = {}
    for entry in federation.config.nodes:
        if entry.via != "hub":
            continue
        node = seen.get(entry.expected_identity)
        if node is None or not node.last_seen:
            words[entry.name] = "; via hub, never connected"
        elif node.connected:
            words[entry.name] = "; via hub, connected now"
        else:
            words[entry.name] = (
                f"; via hub, not connected (last {max(0, now - node.last_seen):.0f} s ago)"
            )
    return words


def _secure_words(info: NodeInfo) -> str:
    """Whether a node takes part in secure sums, and on what terms, in a few words."""
    secure = info.secure_aggregation
    if secure is None:
        return "no"
    return (
        f"yes: {secure.min_cohort}+ members, {secure.colluders} colluders assumed, worst "
        f"case ≤ {display_amount(secure.worst_case_per_query)} each, "
        f"{display_amount(secure.worst_case_remaining)} left"
    )


def run_list(args: argparse.Namespace) -> Outcome:
    config, federation = open_federation(args)
    infos: dict[str, NodeInfo | str] = {}

    def probe(name: str, client: NodeClient) -> tuple[NodeInfo, BudgetStatus] | str:
        try:
            return client.info(), client.budget()
        except TiakiError as exc:
            return failure_reason(exc)

    with federation:
        results = dict(federation.each(probe))
        polls = _hub_polls(federation)
    # The reference schema is the one most reachable nodes share (ties: file order),
    # not whichever node happened to answer first.
    infos_in_order = [r[0] for e in config.nodes if isinstance(r := results[e.name], tuple)]
    reference = max(
        infos_in_order,
        key=lambda i: sum(
            _schema_signature(j) == _schema_signature(i) and j.definition == i.definition
            for j in infos_in_order
        ),
        default=None,
    )
    rows = []
    for entry in config.nodes:
        result = results[entry.name]
        if isinstance(result, str):
            infos[entry.name] = result
            rows.append(
                [entry.name, entry.where, "no", "", "", "", "", result + polls.get(entry.name, "")]
            )
            continue
        info, budget = result
        assert reference is not None
        rows.append(
            [
                entry.name,
                entry.where,
                "yes",
                f"{info.definition.letter} ({_DEFINITION_WORDS[info.definition]})",
                _compatibility(info, reference),
                f"{display_amount(budget.available)} ({budget.current.label})",
                _secure_words(info),
                f"{info.node_id}, data {info.dataset_version[:10]}" + polls.get(entry.name, ""),
            ]
        )
    table = Table(
        ["node", "address", "reachable", "accounts in", "schema", "left", "secure sums", "about"],
        rows,
        widths=[None, None, None, None, 30, None, 30, 60],  # wrapped, never cut
    )
    reachable = any(not isinstance(r, str) for r in results.values())
    return Outcome(table, ExitCode.OK if reachable else ExitCode.UNAVAILABLE)
