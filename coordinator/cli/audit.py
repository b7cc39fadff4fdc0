"""``tiaki audit``: verify signed ledger exports and report what they spent.

``tiaki audit verify EXPORT... [--since EARLIER...] [--keys FILE] [--format table|json]``
prints every finding (error, warning, information) and a one-line verdict.
``tiaki audit report EXPORT... [--format table|json|html] [--out FILE] [--plot FILE.png]``
totals spending per node, period, identity, query kind and analyst, with the
verification verdict on top. Both exit 0 when no errors were found, 5 (audit
failed) when any was, and 2 when an input cannot be read at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.audit.html_report import report_html
from coordinator.audit.inputs import AuditInputError, load_exports, load_trusted_keys
from coordinator.audit.plot import PlotUnavailable, spend_png, write_spend_plot
from coordinator.audit.report import build_report, findings_table, report_json, report_table
from coordinator.audit.verify import Verification, verify_exports
from tiaki.cli.exits import CommandError, ExitCode
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Document, Outcome, Text
from tiaki.files import write_atomic

_TRUST = (
    "Keys: a signature proves only that the holder of the export's key wrote it. Give the "
    "keys you obtained from each NGO and from the ministry (not from the exports) with "
    '--keys, a YAML file of  subject: "ed25519:..."  lines.'
)


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "exports", nargs="+", type=Path, metavar="EXPORT", help="ledger export files (.jsonl)"
    )
    p.add_argument(
        "--since",
        nargs="+",
        action="extend",
        type=Path,
        default=[],
        metavar="EARLIER",
        help="earlier exports of the same ledgers, kept from a previous audit: the current "
        "exports must continue them (put --since after the exports, or repeat it)",
    )
    p.add_argument(
        "--keys",
        type=Path,
        help="trusted public keys, a YAML mapping of subject (node id or coordinator "
        'identity) to "ed25519:<base64>"',
    )


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "audit",
        help="verify signed ledger exports and report what was spent",
        description="Check nodes' and coordinators' signed ledger exports: chains, signatures, "
        "budgets, continuity with earlier exports, and agreement between the coordinator "
        "and each node. See docs/audit.md.",
    )
    commands = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = commands.add_parser(
        "verify",
        help="check exports and print every finding and a verdict",
        description="Check every export on its own, against the trusted keys, against "
        "earlier exports, and the coordinator's ledger against the nodes'. Exit 0 if no "
        "errors, 5 if any.",
        epilog=_TRUST,
    )
    _add_inputs(verify)
    verify.add_argument("--format", choices=("table", "json"), default="table")
    runs(verify, run_verify)
    report = commands.add_parser(
        "report",
        help="spent and remaining per node, period, identity, kind and analyst",
        description="Total the exports' spending, with the verification verdict on top. "
        "Exit 0 if verification found no errors, 5 if it did (the report is written anyway).",
        epilog=_TRUST,
    )
    _add_inputs(report)
    report.add_argument("--format", choices=("table", "json", "html"), default="table")
    report.add_argument("--out", type=Path, help="write the report to this file, not stdout")
    report.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="also draw cumulative spend per node"
    )
    runs(report, run_report)


def _verify(args: argparse.Namespace) -> Verification:
    try:
        exports = load_exports(args.exports)
        previous = load_exports(args.since)
        keys = load_trusted_keys(args.keys) if args.keys is not None else None
    except AuditInputError as exc:
        raise CommandError(str(exc)) from None
    current_names = {e.name for e in exports}
    both = [e.name for e in previous if e.name in current_names]
    if both:
        raise CommandError(f"{both[0]}: given both as an export and with --since")
    return verify_exports(exports, previous, keys)


def _exit(verification: Verification) -> ExitCode:
    return ExitCode.OK if verification.passed else ExitCode.AUDIT_FAILED


def run_verify(args: argparse.Namespace) -> Outcome:
    verification = _verify(args)
    if args.format == "json":
        return Outcome(Document(verification.doc(), ascii_only=False), _exit(verification))
    findings = (findings_table(verification.findings), "") if verification.findings else ()
    return Outcome(Text.lines(*findings, verification.verdict()), _exit(verification))


def run_report(args: argparse.Namespace) -> Outcome:
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise CommandError(f"--plot {args.plot}: the chart is written as PNG; name it *.png")
    verification = _verify(args)
    report = build_report(verification)
    if args.plot is not None:
        try:
            write_spend_plot(report.nodes, str(args.plot))
        except PlotUnavailable as exc:
            raise CommandError(str(exc)) from None
    if args.format == "json":
        text = report_json(report) + "\n"
    elif args.format == "html":
        try:
            png: bytes | None = spend_png(report.nodes)
            note = ""
        except PlotUnavailable as exc:
            png, note = None, f"No chart: {exc}."
        text = report_html(report, png, note)
    else:
        text = report_table(report)
    if args.out is None:
        return Outcome(Text(text), _exit(verification))
    try:
        write_atomic(args.out, text.encode("utf-8"), 0o644)
    except OSError as exc:
        raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    return Outcome(code=_exit(verification), note=f"wrote {args.out}; {verification.verdict()}")
