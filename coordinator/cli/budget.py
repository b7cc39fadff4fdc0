"""``tiaki budget``: each node's word on its budget, beside the mirror ledger's."""

from __future__ import annotations

import argparse
from fractions import Fraction

from coordinator.cli.common import add_config_argument, open_federation
from coordinator.client import NodeClient
from coordinator.fanout import failure_reason
from coordinator.mirror import MirrorLedger, spending_disagreements
from tiaki.budget import BudgetStatus, display_amount, format_amount
from tiaki.cli.exits import ExitCode
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Document, Outcome, Table, View
from tiaki.errors import TiakiError


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "budget",
        help="per node: spent and remaining, the node's figures beside our mirror ledger",
        description="Ask every node for its budget (its ledger is the authority) and compare "
        "its lifetime spending with what this coordinator's mirror ledger recorded.",
    )
    add_config_argument(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    runs(p, run)


def run(args: argparse.Namespace) -> Outcome:
    config, federation = open_federation(args)

    def fetch(name: str, client: NodeClient) -> BudgetStatus | str:
        try:
            return client.budget()
        except TiakiError as exc:
            return failure_reason(exc)

    with federation:
        results = dict(federation.each(fetch))
    with MirrorLedger(config.ledger) as mirror:
        mirrored = mirror.spent_by_node()
    reported = {n: r.lifetime_spent for n, r in results.items() if isinstance(r, BudgetStatus)}
    findings = {
        d.node: d
        for d in spending_disagreements(
            {n: mirrored.get(n, Fraction(0)) for n in reported}, reported
        )
    }
    rows: list[list[str]] = []
    doc: list[dict[str, object]] = []
    for entry in config.nodes:
        result = results[entry.name]
        ours = mirrored.get(entry.name, Fraction(0))
        if isinstance(result, str):
            rows.append([entry.name, "unreachable", "", "", "", display_amount(ours), result])
            doc.append(
                {
                    "node": entry.name,
                    "reachable": False,
                    "mirror_spent": format_amount(ours),
                    "error": result,
                }
            )
            continue
        finding = findings.get(entry.name)
        rows.append(
            [
                entry.name,
                result.current.label,
                display_amount(result.current.spent),
                display_amount(result.available),
                display_amount(result.lifetime_spent),
                display_amount(ours),
                finding.message if finding else "agrees",
            ]
        )
        doc.append(
            {
                "node": entry.name,
                "reachable": True,
                "definition": result.definition.value,
                "period": result.current.label,
                "period_spent": format_amount(result.current.spent),
                "available": format_amount(result.available),
                "lifetime_spent": format_amount(result.lifetime_spent),
                "mirror_spent": format_amount(ours),
                "agrees": finding is None,
                "finding": finding.message if finding else None,
            }
        )
    view: View
    if args.format == "json":
        view = Document({"nodes": doc})
    else:
        view = Table(
            ["node", "period", "spent", "left", "lifetime (node)", "lifetime (mirror)", "check"],
            rows,
        )
    return Outcome(view, ExitCode.OK if reported else ExitCode.UNAVAILABLE)
