"""``tiaki``: the analyst's command line.

For now it asks one node directly (``--node``); federation-wide questions,
the mirror ledger and audits build on the same query words.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from coordinator.client import NodeClient, new_query_id
from coordinator.output import answer_json, answer_table
from coordinator.query_spec import build_query
from tiaki import __version__
from tiaki.budget import display_amount
from tiaki.errors import RemoteError, TiakiError

EXIT_CODES_HELP = """exit codes:
  0  success
  1  unexpected internal error
  2  bad arguments or an invalid query (nothing spent)
  3  the node refused the query (policy, budget, reused id; nothing spent)
  4  the node could not be reached
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, help="node address host:port")
    p.add_argument("--identity", default="coordinator", help="coordinator identity to present")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiaki",
        description="Ask tiaki nodes differentially private questions.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tiaki {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser(
        "query",
        help="ask one DP question",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(q)
    q.add_argument("kind", help="count, count_clients, sum, mean, proportion or histogram")
    q.add_argument("column", nargs="?", help="numeric column for sum, mean and histogram")
    q.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COND",
        help="col=a[,b], col>=x, col<=x or col=lo..hi; repeat to AND",
    )
    q.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="group by a categorical column (up to three)",
    )
    q.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="COND",
        help="proportion: what a client must meet",
    )
    q.add_argument("--bounds", help="lower,upper: clamp bounds narrower than the schema's")
    q.add_argument("--bins", help="histogram bin edges, comma-separated")
    q.add_argument("--epsilon", help="privacy cost under pure DP")
    q.add_argument("--rho", help="privacy cost under zCDP")
    q.add_argument("--analyst", default="analyst", help="who is asking (recorded by the node)")
    q.add_argument("--query-id", help="reuse an id to fetch a stored answer (default: new id)")
    q.add_argument("--format", choices=("table", "json"), default="table")
    q.set_defaults(run=_run_query)

    b = sub.add_parser("budget", help="a node's budget: spent and remaining")
    _common(b)
    b.set_defaults(run=_run_budget)
    return parser


def _run_query(args: argparse.Namespace) -> int:
    with NodeClient(args.node, identity=args.identity, timeout=args.timeout) as client:
        info = client.info()
        types = {c.name: c.type for c in info.columns}
        for c in info.columns:
            if c.type == "derived":
                types[c.name] = "derived"
        query = build_query(
            kind=args.kind,
            column=args.column,
            where=args.where,
            by=args.by,
            condition=args.condition,
            bounds=args.bounds,
            bins=args.bins,
            epsilon=args.epsilon,
            rho=args.rho,
            column_types=types,
        )
        answer = client.query(query, query_id=args.query_id or new_query_id(), analyst=args.analyst)
    print(answer_json(answer) if args.format == "json" else answer_table(answer))
    return 0


def _run_budget(args: argparse.Namespace) -> int:
    with NodeClient(args.node, identity=args.identity, timeout=args.timeout) as client:
        status = client.budget()
    print(
        f"period {status.current.label}: spent {display_amount(status.current.spent)} of "
        f"{display_amount(status.current.limit)}; available {display_amount(status.available)}"
    )
    print(f"lifetime spent: {display_amount(status.lifetime_spent)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    try:
        return int(args.run(args))
    except RemoteError as exc:
        print(f"error: node {args.node}: {exc.message}", file=sys.stderr)
        unreachable = exc.status_code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        invalid = exc.status_code.name == "INVALID_ARGUMENT"
        return 4 if unreachable else 2 if invalid else 3
    except TiakiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
