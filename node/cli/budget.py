"""``tiaki-node budget``: what has been spent and what is left, from the node's own ledger."""

from __future__ import annotations

import argparse
from pathlib import Path

from node.config import load_config
from node.ledger import PrivacyLedger
from tiaki.budget import BudgetStatus, display_amount, format_amount
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Document, Table


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "budget",
        help="show privacy spent and remaining, per period",
        description="Read the node's ledger (the authoritative record) and show what was spent "
        "and what remains in each period and over the node's lifetime.",
    )
    p.add_argument("--config", type=Path, required=True, help="the node's node.yaml")
    p.add_argument("--format", choices=("table", "json"), default="table")
    runs(p, run)


def as_json(status: BudgetStatus) -> dict[str, object]:
    return {
        "definition": status.definition.value,
        "per_query_max": format_amount(status.per_query_max),
        "available": format_amount(status.available),
        "lifetime_spent": format_amount(status.lifetime_spent),
        "lifetime_limit": (
            format_amount(status.lifetime_limit) if status.lifetime_limit is not None else None
        ),
        "current": {
            "period": status.current.label,
            "limit": format_amount(status.current.limit),
            "spent": format_amount(status.current.spent),
            "remaining": format_amount(status.current.remaining),
        },
        "periods": [
            {
                "period": p.label,
                "start": p.start,
                "end": p.end,
                "limit": format_amount(p.limit),
                "spent": format_amount(p.spent),
                "remaining": format_amount(p.remaining),
            }
            for p in status.periods
        ],
    }


def budget_table(node_id: str, status: BudgetStatus) -> Table:
    """Each period's limit, spending and what is left, the current one marked."""
    periods = list(status.periods)
    if status.current.label not in {p.label for p in periods}:
        periods.append(status.current)
    rows = [
        [
            p.label + (" (current)" if p.label == status.current.label else ""),
            display_amount(p.limit),
            display_amount(p.spent),
            display_amount(p.remaining),
        ]
        for p in periods
    ]
    lifetime = f"lifetime spent: {display_amount(status.lifetime_spent)}"
    if status.lifetime_limit is not None:
        lifetime += f" of {display_amount(status.lifetime_limit)}"
    return Table(
        ["period", "limit", "spent", "remaining"],
        rows,
        title=[
            f"node {node_id}: {status.definition.value} privacy, "
            f"budget in {status.definition.letter}"
        ],
        notes=[
            lifetime,
            f"per-query maximum: {display_amount(status.per_query_max)}",
            f"available to the next query: {display_amount(status.available)}",
        ],
    )


def run(args: argparse.Namespace) -> Document | Table:
    config = load_config(args.config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger.open(config.paths.ledger, config.policy)
    try:
        status = ledger.status()
    finally:
        ledger.close()
    if args.format == "json":
        return Document(as_json(status))
    return budget_table(config.node_id, status)
