"""``tiaki history``: the questions this coordinator asked, from its mirror ledger."""

from __future__ import annotations

import argparse
from fractions import Fraction
from typing import Any

from coordinator.cli.common import add_config_argument
from coordinator.config import load_federation
from coordinator.mirror import MirrorLedger, MirrorQuestion
from tiaki.budget import display_amount, format_amount
from tiaki.cli.exits import CommandError
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Document, Table
from tiaki.plain_words import describe_query


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "history",
        help="past questions: id, when, who, what, cost, coverage (from the mirror ledger)",
        description="List the questions this coordinator asked, newest last. 'tiaki show ID' "
        "renders one of them again without asking any node.",
    )
    add_config_argument(p)
    p.add_argument("--last", type=int, metavar="N", help="only the N most recent questions")
    p.add_argument("--format", choices=("table", "json"), default="table")
    runs(p, run)


def _row(question: MirrorQuestion) -> dict[str, Any]:
    answered = [o.node for o in question.outcomes if o.status in ("answered", "replayed")]
    charged = [o.charged for o in question.outcomes if o.charged is not None]
    return {
        "query_id": question.query_id,
        "asked_at": question.created_at,
        "analyst": question.analyst,
        "identity": question.identity,
        "question": describe_query(question.canonical_query),
        "cost_per_node": {question.definition.symbol: format_amount(question.requested)},
        "charged_total": format_amount(sum(charged, Fraction(0))),
        "answered": answered,
        "asked": [o.node for o in question.outcomes],
    }


def run(args: argparse.Namespace) -> Document | Table:
    if args.last is not None and args.last < 1:
        raise CommandError(f"--last takes a positive number of questions, not {args.last}")
    config = load_federation(args.config)
    with MirrorLedger(config.ledger) as mirror:
        questions = mirror.questions()
    if args.last is not None:
        questions = questions[-args.last :]
    rows = [_row(q) for q in questions]
    if args.format == "json":
        return Document(list(rows), ascii_only=False)
    table = [
        [
            r["query_id"],
            r["asked_at"][:16].replace("T", " "),
            r["analyst"],
            r["question"],
            f"{q.definition.symbol} {display_amount(q.requested)}",
            f"{len(r['answered'])} of {len(r['asked'])}",
        ]
        for r, q in zip(rows, questions, strict=True)
    ]
    return Table(
        ["query id", "asked (UTC)", "analyst", "question", "cost per node", "answered"],
        table,
        widths=[None, None, 16, 60, None, None],
        empty="no questions yet: ask one with 'tiaki query'",
    )
