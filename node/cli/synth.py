"""``tiaki-node synth``: realistic synthetic NGO client records, reproducible from a seed."""

from __future__ import annotations

import argparse
from pathlib import Path

from tiaki.cli.exits import CommandError, ExitCode
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Text


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "synth",
        help="write synthetic client records (CSV) matching the example config",
        description="Generate realistic synthetic NGO records: several service episodes per "
        "client, NZ regions and prioritised ethnic groups, outcome scores that improve "
        "differently by service. The same --clients and --seed give the same file.",
    )
    p.add_argument("--clients", type=int, default=5000, help="number of clients (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; also sets the NGO's mix")
    p.add_argument("--out", type=Path, required=True, help="CSV file to write")
    runs(p, run)


def run(args: argparse.Namespace) -> Text:
    from node.synth import write_csv

    try:
        rows = write_csv(args.out, args.clients, args.seed)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write {args.out}: {exc.strerror}", ExitCode.USAGE) from None
    return Text.lines(f"wrote {rows} records for {args.clients} clients to {args.out}")
