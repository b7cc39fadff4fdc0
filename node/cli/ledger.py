"""``tiaki-node ledger``: what has been asked of this NGO's data, by whom, at what cost.

Three actions on the node's own privacy ledger, none of which spends anything:

- ``show`` (the default): every event in plain words, oldest first: each
  question answered (when, which coordinator and analyst, what was asked, its
  cost), each budget period that began, each change of policy or signing key;
- ``export``: the signed, hash-chained export an auditor verifies with
  ``tiaki audit verify`` (format in docs/audit.md);
- ``verify``: check the ledger against itself (hash chain, stored answers,
  period totals).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path

from node.config import NodeConfig, load_config
from node.exports import export_ledger, node_signing_key
from node.ledger import PrivacyLedger
from node.service import open_ledger
from tiaki.budget import display_amount, format_amount
from tiaki.chain import ChainEntry
from tiaki.cli.exits import CommandError
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Document, Outcome, Table, Text
from tiaki.ledger_records import (
    ChargeRecord,
    Opened,
    PeriodRecord,
    PolicyRecord,
    SigningKeyRecord,
    parse_record,
)
from tiaki.plain_words import describe_query
from tiaki.signing import key_id

ACTIONS = ("show", "export", "verify")


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "ledger",
        help="what has been asked of this node's data, by whom and at what cost",
        description="Show the node's privacy ledger in plain words (default), export it "
        "signed for an auditor, or verify it. Nothing here spends privacy budget.",
    )
    p.add_argument("action", nargs="?", choices=ACTIONS, default="show", help="default: show")
    p.add_argument("--config", type=Path, required=True, help="the node's node.yaml")
    p.add_argument("--format", choices=("table", "json"), default="table", help="for show")
    p.add_argument("--since", metavar="YYYY-MM-DD", help="show: only events on or after")
    p.add_argument("--identity", help="show: only questions from this coordinator identity")
    p.add_argument("--out", type=Path, help="export: write here (default: standard output)")
    p.add_argument("--from-seq", type=int, default=1, metavar="N", help="export: start at entry N")
    runs(p, run)


def run(args: argparse.Namespace) -> Document | Outcome | Table | Text:
    if args.action != "export" and (args.out is not None or args.from_seq != 1):
        raise CommandError("--out and --from-seq apply only to 'ledger export'")
    if args.action != "show" and (args.since or args.identity or args.format != "table"):
        raise CommandError("--since, --identity and --format apply only to 'ledger show'")
    if args.since is not None:
        try:
            date.fromisoformat(args.since)
        except ValueError:
            why = f"--since must be a date written YYYY-MM-DD, not {args.since!r:.40}"
            raise CommandError(why) from None
    config = load_config(args.config)
    ledger_file = config.paths.ledger
    if not ledger_file.exists():
        raise CommandError(
            f"{ledger_file}: no ledger yet; it is created when the node first serves, "
            "and nothing has been asked of this node's data"
        )
    with open_ledger(config) as ledger:
        if args.action == "export":
            return _export(ledger, config, args.out, args.from_seq)
        if args.action == "verify":
            ledger.verify()
            seq, head = ledger.head()
            return Text.lines(
                f"ledger {ledger.ledger_id} verified: {seq} chain entries, head {head[:16]}…, "
                "every charge matches its chain entry and the period totals"
            )
        return _show(ledger, config, args)


def _export(ledger: PrivacyLedger, config: NodeConfig, out: Path | None, from_seq: int) -> Outcome:
    last, _ = ledger.head()
    if not 1 <= from_seq <= last + 1:
        raise CommandError(f"--from-seq must be between 1 and {last + 1}")
    key, created = node_signing_key(config)
    if created:
        print(f"created the ledger signing key {key.path}", file=sys.stderr)
    lines = list(export_ledger(ledger, key, config, from_seq))
    text = "".join(line + "\n" for line in lines)
    if out is not None:
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None
    return Outcome(
        Text(text) if out is None else None,
        note=f"exported {len(lines) - 2} entries of ledger {ledger.ledger_id}, signed by key "
        f"{key.key_id} ({key.public_text})",
    )


def _event(entry: ChainEntry) -> tuple[str, str, str, str] | None:
    """(who, what, cost, period) in plain words, or None for bookkeeping entries."""
    record = parse_record(entry)
    if isinstance(record, ChargeRecord):
        who = record.identity + (f" (analyst {record.analyst})" if record.analyst else "")
        return (
            who,
            describe_query(record.canonical_query),
            display_amount(record.charge),
            (record.period),
        )
    if isinstance(record, PeriodRecord):
        span = f" ({record.start} to {record.end})" if record.start else ""
        return "this node", f"budget period {record.period} began{span}", "", record.period
    if isinstance(record, PolicyRecord):
        lifetime = (
            f", at most {display_amount(record.lifetime_limit)} over the node's life"
            if record.lifetime_limit is not None
            else ""
        )
        per = "in total" if record.period == "none" else f"per {record.period} period"
        what = (
            f"budget policy set: {display_amount(record.limit)} {per}{lifetime}, at most "
            f"{display_amount(record.per_query_max)} per question; allowed coordinators: "
            + (", ".join(g.identity or f"fingerprint {g.fingerprint}" for g in record.coordinators)
               or "anyone on loopback (development)")
        )  # fmt: skip
        return "this node", what, "", ""
    if isinstance(record, SigningKeyRecord):
        return "this node", f"ledger signing key {key_id(record.public_key)} in use", "", ""
    if isinstance(record, Opened):
        return "this node", "privacy ledger created", "", ""
    return None


def _show(ledger: PrivacyLedger, config: NodeConfig, args: argparse.Namespace) -> Document | Table:
    _, entries = ledger.chain()
    status = ledger.status()
    rows: list[dict[str, str]] = []
    for entry in entries:
        if args.since and entry.at[:10] < args.since:
            continue
        event = _event(entry)
        if event is None:
            continue
        who, what, cost, period = event
        if args.identity and not (entry.type == "charge" and who.startswith(args.identity)):
            continue
        rows.append({"when": entry.at, "who": who, "what": what, "cost": cost, "period": period})
    questions = sum(1 for e in entries if e.type == "charge")
    if args.format == "json":
        doc = {
            "node_id": config.node_id,
            "ledger_id": ledger.ledger_id,
            "questions_answered": questions,
            "spent_this_period": format_amount(status.current.spent),
            "limit_per_period": format_amount(status.current.limit),
            "events": rows,
        }
        return Document(doc, ascii_only=False)
    symbol = status.definition.letter
    return Table(
        ["when (UTC)", "asked by", "what was asked", f"cost ({symbol})"],
        [[r["when"][:16].replace("T", " "), r["who"], r["what"], r["cost"]] for r in rows],
        title=[
            f"Privacy ledger of node {config.node_id}: {questions} questions answered. "
            f"Spent {display_amount(status.current.spent)} of "
            f"{display_amount(status.current.limit)} ({symbol}) in period {status.current.label}.",
            "No client record ever left this node: each question was answered with noisy totals "
            "only, and its cost was recorded here before the answer was sent.",
        ],
        widths=[None, 30, 70, None],
        empty="Nothing to show" + (" for that selection." if args.since or args.identity else "."),
    )
