"""``tiaki query``: one question to every node, one combined answer."""

from __future__ import annotations

import argparse
import math
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

from coordinator.cli.common import (
    EXIT_CODES_HELP,
    add_config_argument,
    add_unreliable_share_argument,
    column_types,
    open_federation,
)
from coordinator.cli.secure_query import add_secure_arguments, secure_choice, secure_dry_run
from coordinator.cli.show import AnswerView
from coordinator.client import NodeClient
from coordinator.fanout import Federation
from coordinator.federated import ask_federation
from coordinator.mirror import MirrorLedger
from coordinator.planning import choose_cost, plan_question
from coordinator.query_files import load_query_file
from coordinator.query_spec import build_query
from coordinator.results import FederatedAnswer, NodeOutcome
from coordinator.schema_check import check_against_schemas
from coordinator.secure_question import ask_secure, choose_secure_cost
from tiaki.budget import PrivacyDefinition, display_amount
from tiaki.cli.exits import CommandError, ExitCode
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Outcome, Table
from tiaki.errors import TiakiError
from tiaki.node_info import NodeInfo
from tiaki.query import Query


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "query",
        help="ask every node one DP question and combine the answers",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(p)
    p.add_argument("kind", nargs="?", help="count, count_clients, sum, mean, proportion, histogram")
    p.add_argument("column", nargs="?", help="numeric column for sum, mean and histogram")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COND",
        help="col=a[,b], col>=x, col<=x or col=lo..hi; repeat to AND",
    )
    p.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="group by a categorical column (up to three)",
    )
    p.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="COND",
        help="proportion: what a client must meet",
    )
    p.add_argument("--bounds", help="lower,upper: clamp bounds narrower than the schema's")
    p.add_argument("--bins", help="histogram bin edges, comma-separated")
    p.add_argument("--epsilon", help="privacy cost at each node, pure DP")
    p.add_argument("--rho", help="privacy cost at each node, zCDP")
    p.add_argument("--file", type=Path, help="YAML file of named queries")
    p.add_argument("--name", help="which query of --file to run")
    p.add_argument("--nodes", help="ask only these nodes (comma-separated names)")
    p.add_argument(
        "--require-all", action="store_true", help="release nothing unless every node answers"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show cost per node and expected 95%% half-width; spend nothing",
    )
    p.add_argument(
        "--target-ci",
        type=float,
        metavar="HALF_WIDTH",
        help="choose the smallest cost whose 95%% half-width is at most this",
    )
    p.add_argument(
        "--expected-count",
        type=float,
        metavar="N",
        help="with --dry-run of a mean or proportion: the denominator (records or clients, "
        "all nodes together) to plan the half-width for; without it a guess is used, and said",
    )
    p.add_argument("--query-id", help="reuse an id to retry a question without a new charge")
    p.add_argument("--format", choices=("table", "json", "csv"), help="output format")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="bar chart with error bars")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_secure_arguments(p)
    add_unreliable_share_argument(p)
    runs(p, run)


def _words(args: argparse.Namespace) -> dict[str, Any]:
    if args.file or args.name:
        if not (args.file and args.name):
            raise CommandError("--file and --name go together")
        queries = load_query_file(args.file)
        if args.name not in queries:
            raise CommandError(
                f"{args.file}: no query named {args.name!r}; it has: {', '.join(queries)}"
            )
        words = dict(queries[args.name].words())
        # Command-line cost options override the file's.
        if args.epsilon or args.rho:
            words["epsilon"], words["rho"] = args.epsilon, args.rho
        return words
    if not args.kind:
        raise CommandError("name a query kind (e.g. count_clients), or use --file and --name")
    return {
        "kind": args.kind,
        "column": args.column,
        "where": args.where,
        "by": args.by,
        "condition": args.condition,
        "bounds": args.bounds,
        "bins": args.bins,
        "epsilon": args.epsilon,
        "rho": args.rho,
    }


def _infos(federation: Federation) -> dict[str, NodeInfo]:
    """Every reachable node's public metadata, in federation order (asked concurrently)."""

    def info(name: str, client: NodeClient) -> NodeInfo | None:
        try:
            return client.info()
        except TiakiError:
            return None

    found = dict(federation.each(info))
    return {name: i for name in federation.names if (i := found.get(name)) is not None}


def _build(federation: Federation, words: dict[str, Any], target: float | None) -> Query:
    """The analyst's words as a query, checked against the nodes' schemas before asking."""
    infos = _infos(federation)
    if not infos:
        raise CommandError("no node could be reached to read the schema", ExitCode.UNAVAILABLE)
    first = next(iter(infos.values()))
    if target is not None and not (words.get("epsilon") or words.get("rho")):
        # A placeholder cost of the node's kind; --target-ci replaces it.
        words = {**words, ("epsilon" if first.definition is PrivacyDefinition.PURE else "rho"): "1"}
    types: dict[str, str] = {}
    for info in reversed(infos.values()):  # the first node's word wins where they differ
        types.update(column_types(info))
    query = build_query(**words, column_types=types)
    check_against_schemas(query, infos)
    return query


def _progress(quiet: bool) -> Any:
    def report(outcome: NodeOutcome, done: int, total: int) -> None:
        if not quiet:
            extra = f": {outcome.reason}" if outcome.reason else ""
            print(
                f"  [{done}/{total}] {outcome.node} {outcome.status.value} "
                f"({outcome.seconds:.1f} s){extra}",
                file=sys.stderr,
                flush=True,
            )

    return report


def _waiting(quiet: bool) -> Any:
    def report(names: list[str], seconds: float) -> None:
        if not quiet:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            print(f"  waiting for {shown} ({seconds:.0f} s)", file=sys.stderr, flush=True)

    return report


def _plan(federation: Federation, query: Query, expected_count: float | None) -> Outcome:
    """The dry run: each node's cost, budget left and noise, and the expected half-width."""
    if expected_count is not None and not (math.isfinite(expected_count) and expected_count >= 1):
        raise CommandError(f"--expected-count must be a number of at least 1, not {expected_count}")
    plan = plan_question(federation, query, expected_count)
    rows = []
    for name, check in plan.nodes.items():
        if check.plan is None:
            rows.append([name, "-", "-", "-", f"{check.status}: {check.reason}"])
            continue
        cost = check.plan.charge.amount
        noise = ", ".join(f"{c.name} ±{c.accuracy_95:.4g}" for c in check.plan.components)
        left = display_amount(check.budget.available) if check.budget else "?"
        status = "ready" if check.ok else f"{check.status}: {check.reason}"
        rows.append([name, display_amount(cost), left, noise, status])
    if plan.expected_half_width is not None:
        expected = (
            f"expected 95% half-width of each combined cell: ±{plan.expected_half_width:.4g} "
            f"({plan.method})"
        )
    else:
        expected = f"expected 95% half-width: {plan.method}"
    table = Table(
        ["node", "cost", "left", "95% noise per cell", "status"],
        rows,
        notes=[
            "",
            f"query: {query.canonical()}",
            expected,
            "dry run: nothing was sent for answering and nothing was spent.",
        ],
    )
    if not any(check.ok for check in plan.nodes.values()):
        return Outcome(
            table, ExitCode.REFUSED, note="no node would answer this question as it stands."
        )
    return Outcome(table)


def _ceiling(federation: Federation, query: Query) -> Fraction:
    def room(name: str, client: NodeClient) -> Fraction | None:
        try:
            status = client.budget()
        except TiakiError:
            return None
        return min(status.per_query_max, status.available)

    amounts = [a for _, a in federation.each(room) if a is not None]
    if not amounts:
        raise CommandError("no node could be reached", ExitCode.UNAVAILABLE)
    return min(amounts)


def _exit_code(answer: FederatedAnswer) -> ExitCode:
    if not answer.released:
        return ExitCode.REFUSED
    if answer.answered_nodes:
        return ExitCode.OK
    if all(o.status.value == "unreachable" for o in answer.outcomes):
        return ExitCode.UNAVAILABLE
    return ExitCode.REFUSED


def run(args: argparse.Namespace) -> Outcome:
    config, federation = open_federation(args)
    fmt = args.format or config.defaults.format
    choice = secure_choice(args, config)
    if choice.secure and args.require_all:
        raise CommandError(
            "--require-all is for per-node answers; a secure sum releases one total of at "
            "least its threshold's inputs (give --dropouts 0 to need every member)"
        )
    with federation:
        words = _words(args)
        try:
            query = _build(federation, words, args.target_ci)
            if args.target_ci is not None:
                ceiling = _ceiling(federation, query)
                query = (
                    choose_secure_cost(
                        federation,
                        query,
                        args.target_ci,
                        ceiling,
                        dropouts=choice.dropouts,
                        colluders=choice.colluders,
                    )
                    if choice.secure
                    else choose_cost(federation, query, args.target_ci, ceiling)
                )
                print(
                    f"chose {query.cost} per node for a 95% half-width of at most "
                    f"{args.target_ci:g}",
                    file=sys.stderr,
                )
            if args.dry_run:
                if choice.secure:
                    return secure_dry_run(federation, query, choice)
                return _plan(federation, query, args.expected_count)
        except TiakiError as exc:
            if exc.node is None:  # ours, not a node's
                raise
            raise CommandError(exc.message, ExitCode.UNAVAILABLE) from None
        if choice.secure:
            with MirrorLedger(config.ledger) as mirror:
                answer = ask_secure(
                    federation,
                    query,
                    analyst=config.analyst,
                    mirror=mirror,
                    query_id=args.query_id,
                    dropouts=choice.dropouts,
                    colluders=choice.colluders,
                    session_seconds=choice.session_seconds,
                    unreliable_share=args.unreliable_share,
                )
            return Outcome(AnswerView(answer, fmt, args.plot), _exit_code(answer))
        with MirrorLedger(config.ledger) as mirror:
            answer = ask_federation(
                federation,
                query,
                analyst=config.analyst,
                mirror=mirror,
                require_all=args.require_all,
                query_id=args.query_id,
                on_outcome=_progress(args.quiet or fmt != "table"),
                on_waiting=_waiting(args.quiet or fmt != "table"),
                unreliable_share=args.unreliable_share,
            )
    # Every node answer is durable in the mirror by now; output that fails loses nothing.
    return Outcome(AnswerView(answer, fmt, args.plot), _exit_code(answer))
