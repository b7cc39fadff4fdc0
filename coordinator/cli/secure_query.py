"""``tiaki query --secure``: the dry run and the wording of a question asked as a secure sum.

The question itself is built and checked as for any query (``coordinator.cli.query``);
this module plans the session, shows it, and asks it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from coordinator.config import FederationConfig
from coordinator.fanout import Federation
from coordinator.planning import expected_half_width
from coordinator.secure_question import SecurePlan, plan_secure
from tiaki.budget import display_amount
from tiaki.cli.exits import ExitCode
from tiaki.cli.views import Outcome, Table
from tiaki.query import Query


@dataclass(frozen=True)
class SecureChoice:
    """Whether to ask as a secure sum, and how: from the command line over the file's defaults."""

    secure: bool
    dropouts: int | None
    colluders: int
    session_seconds: float


def secure_choice(args: argparse.Namespace, config: FederationConfig) -> SecureChoice:
    settings = config.secure_aggregation
    secure = config.defaults.secure
    if args.secure:
        secure = True
    if args.per_node:
        secure = False
    return SecureChoice(
        secure=secure,
        dropouts=args.dropouts if args.dropouts is not None else settings.dropouts,
        colluders=args.colluders if args.colluders is not None else settings.colluders,
        session_seconds=settings.session_seconds,
    )


def add_secure_arguments(p: argparse.ArgumentParser) -> None:
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--secure",
        action="store_true",
        help="ask as a secure sum: one shared noise, one combined answer, no node's own answer "
        "seen (zCDP nodes whose policy takes part)",
    )
    how.add_argument(
        "--per-node",
        action="store_true",
        help="ask each node for its own answer, where the federation file makes --secure the "
        "default",
    )
    p.add_argument(
        "--dropouts",
        type=int,
        metavar="N",
        help="with --secure: members that may drop out without aborting (default: a tenth)",
    )
    p.add_argument(
        "--colluders",
        type=int,
        metavar="N",
        help="with --secure: members assumed to collude with this coordinator (at least what "
        "any node assumes)",
    )


def secure_dry_run(federation: Federation, query: Query, choice: SecureChoice) -> Outcome:
    """The session a secure question would run, each node's part, and its expected interval."""
    plan = plan_secure(federation, query, dropouts=choice.dropouts, colluders=choice.colluders)
    rows = []
    for m in plan.members:
        budget = m.plan.budget
        left = display_amount(budget.available) if budget is not None else "?"
        worst = f"≤ {display_amount(plan.worst_case(m))}"
        rows.append([m.name, display_amount(m.plan.charge.amount), worst, left, "member"])
    for name, (status, why) in plan.excluded.items():
        rows.append([name, "-", "-", "-", f"{status}: {why}"])
    table = Table(
        ["node", "cost", "worst case", "left", "part"],
        rows,
        notes=["", *plan_notes(plan, query)],
    )
    return Outcome(table, ExitCode.OK)


def plan_notes(plan: SecurePlan, query: Query) -> list[str]:
    halves = plan.half_widths()
    noise = ", ".join(
        f"{name} ±{half:.4g}" for name, half in zip(plan.components, halves, strict=True)
    )
    per_node, _ = expected_half_width(query.kind, [m.plan for m in plan.members])
    compared = (
        f"; asked per node, the same members' answers would add up to ±{per_node:.4g}"
        if per_node is not None and math.isfinite(per_node) and len(halves) == 1
        else ""
    )
    return [
        f"query: {query.canonical()}",
        f"secure sum of {plan.size} members: {plan.threshold} inputs needed (up to "
        f"{plan.dropouts} may drop out), assuming up to {plan.colluders} colluders, so at "
        f"least {plan.honest} honest noise shares",
        f"expected 95% half-width of each cell's total: {noise} "
        f"({plan.error_ratio():.2f}× one central release){compared}",
        "each member charges the cost above (its aggregate guarantee) and records a worst "
        "case for its share alone; an aborted session keeps its charges.",
        "dry run: nothing was sent for answering and nothing was spent.",
    ]


__all__ = [
    "SecureChoice",
    "add_secure_arguments",
    "secure_choice",
    "secure_dry_run",
]
