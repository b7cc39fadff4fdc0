"""``tiaki-node import``: validate client records and swap them in atomically."""

from __future__ import annotations

import argparse
from pathlib import Path

from node.config import load_config
from tiaki.cli.exits import CommandError, ExitCode
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Outcome, Text

SHOWN_BAD_ROWS = 20


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "import",
        help="import client records from CSV or a SQLite table",
        description="Check every row against the schema and replace the node's records in one "
        "atomic step. With any bad row nothing changes, unless --allow-bad-rows is given. A "
        "running node picks up the new records by itself within a few seconds.",
    )
    p.add_argument("--config", type=Path, required=True, help="the node's node.yaml")
    p.add_argument("source", type=Path, help="CSV file, or SQLite file with --table")
    p.add_argument("--table", help="table or view to read when SOURCE is a SQLite file")
    p.add_argument(
        "--allow-bad-rows", action="store_true", help="import the good rows, report the rest"
    )
    runs(p, run)


def run(args: argparse.Namespace) -> Outcome:
    from node.importer import ImportFailed, import_csv, import_sqlite

    config = load_config(args.config)
    try:
        if args.table:
            report = import_sqlite(
                config, args.source, args.table, allow_bad_rows=args.allow_bad_rows
            )
        else:
            report = import_csv(config, args.source, allow_bad_rows=args.allow_bad_rows)
    except ImportFailed as exc:
        raise CommandError(str(exc), ExitCode.REFUSED) from None

    lines = [
        f"source:        {report.source}",
        f"rows read:     {report.rows_read}",
        f"bad rows:      {report.bad_row_count}",
    ]
    if report.ignored_columns:
        lines.append(f"ignored columns (not in the schema): {', '.join(report.ignored_columns)}")
    lines.extend(f"  line {bad.line}: {bad.reason}" for bad in report.bad_rows[:SHOWN_BAD_ROWS])
    if report.bad_row_count > SHOWN_BAD_ROWS:
        lines.append(f"  ... and {report.bad_row_count - SHOWN_BAD_ROWS} more")
    if not report.committed:
        lines.append("nothing imported: the previous records are unchanged.")
        if report.bad_rows:
            lines.append("fix the rows above, or re-run with --allow-bad-rows to import the rest.")
        return Outcome(Text.lines(*lines), ExitCode.REFUSED)
    lines.append(f"imported:      {report.rows_imported} records of {report.clients} clients")
    lines.append(f"version:       {report.dataset_version}")
    return Outcome(Text.lines(*lines))
