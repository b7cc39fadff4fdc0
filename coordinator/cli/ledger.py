"""``tiaki ledger``: this coordinator's hash-chained mirror ledger, and every node's ledger.

- ``export``: the mirror's signed export, the coordinator's side of an audit.
- ``fetch``: every node's signed export (the ``ExportLedger`` RPC) and ours,
  one file each in a folder, ready for ``tiaki audit``.
- ``verify``: re-check the mirror's chain and that it accounts for its tables.

Exports are signed with the coordinator's ledger signing key (the federation
file's ``signing_key``), created on first use. The key is recorded in the
chain before each export, so the key that signs an export is itself chained.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from coordinator.cli.common import add_config_argument, open_federation
from coordinator.client import NodeClient
from coordinator.config import FederationConfig, load_federation
from coordinator.fanout import TRANSIENT, coordinator_identity
from coordinator.mirror import MirrorLedger, utc_now
from tiaki.chain import ChainEntry, chain_time, genesis_hash
from tiaki.cli.exits import CommandError, ExitCode
from tiaki.cli.program import Subcommands, runs
from tiaki.cli.views import Outcome, Table, Text
from tiaki.errors import DeadlineExceededError, TiakiError, UnsupportedCallError
from tiaki.files import write_atomic
from tiaki.ledger_export import (
    ExportFormatError,
    LedgerExport,
    export_lines,
    integrity_problems,
    parse_export,
)
from tiaki.signing import SigningKey, key_id, load_or_create_signing_key

COORDINATOR = "coordinator"
COORDINATOR_FILE = f"{COORDINATOR}.jsonl"
# Exports name queries and analysts, never records: readable, not secret.
EXPORT_MODE = 0o644
# A node's export is held in memory before it is checked and written; a node
# that streams without end is cut off here (and by the call's deadline).
MAX_EXPORT_CHARS = 256 * 1024 * 1024

LEDGER_EXIT_CODES_HELP = """exit codes:
  0  done: the export was written, every ledger was fetched, or the mirror verifies
  1  unexpected internal error
  2  bad arguments, federation file, signing key or mirror ledger; for verify also:
     the mirror ledger does not verify (its chain is broken or disagrees with its tables)
  3  fetch: some node failed (refused, erred, or sent an export that does not parse or
     verify); the other ledgers were written
  4  fetch: no node could be contacted
"""


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "ledger",
        help="export, fetch and verify hash-chained, signed ledgers (ours and the nodes')",
        description="The coordinator's mirror ledger is hash-chained; export it signed, fetch "
        "every node's signed ledger beside it for an audit, or verify it.",
        epilog=LEDGER_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="write the mirror ledger's signed export (JSON Lines)",
        description="Write this coordinator's mirror ledger as a signed export: a header, "
        "the chained entries, and a checkpoint signed by the coordinator's ledger signing "
        "key (created on first use, beside the mirror ledger unless the federation file's "
        "signing_key says otherwise).",
        epilog=LEDGER_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(export)
    export.add_argument("--out", type=Path, metavar="FILE", help="write here (default: stdout)")
    export.add_argument(
        "--from-seq",
        type=_entry_number,
        default=1,
        metavar="N",
        help="first chain entry to include (default: 1, the whole ledger)",
    )
    runs(export, run_export)
    fetch = actions.add_parser(
        "fetch",
        help="fetch every node's signed ledger export, and write ours beside them",
        description="Ask every node (concurrently) for its signed ledger export and write "
        "DIR/<node>.jsonl for each, plus DIR/coordinator.jsonl for this coordinator's own.",
        epilog=LEDGER_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(fetch)
    fetch.add_argument(
        "--out-dir", type=Path, default=Path("ledgers"), metavar="DIR", help="default: ./ledgers"
    )
    fetch.add_argument("--nodes", help="fetch only these nodes (comma-separated names)")
    runs(fetch, run_fetch)
    verify = actions.add_parser(
        "verify",
        help="check the mirror ledger's hash chain against its tables",
        description="Re-check the mirror ledger's hash chain from its genesis, and that "
        "replaying the chain gives exactly the questions and outcomes the mirror holds. "
        "Exit code 2 if it does not verify (the message names the first entry that "
        "disagrees).",
        epilog=LEDGER_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(verify)
    runs(verify, run_verify)
    key = actions.add_parser(
        "key",
        help="print this coordinator's signing key (created on first use)",
        description="The public half of the key that signs this coordinator's ledger "
        "exports and the questions it sends through a hub. Give it to auditors, and to each "
        "NGO behind NAT for its grant's signing_key.",
    )
    add_config_argument(key)
    runs(key, run_key)


def run_key(args: argparse.Namespace) -> Text:
    config = load_federation(args.config)
    key, created = load_or_create_signing_key(config.signing_key_path)
    note = f" (created {config.signing_key_path})" if created else ""
    return Text.lines(f"{key.public_text}{note}")


def _entry_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an entry number, 1 or more, not {text!r:.20}")
    return value


# ---------------------------------------------------------------- our own export


@dataclass(frozen=True)
class CoordinatorExport:
    """The mirror's signed export, and what the summary line says about it."""

    lines: list[str]
    ledger_id: str
    from_seq: int
    to_seq: int
    head: str
    key: SigningKey

    @property
    def text(self) -> str:
        """The file's exact content: the signed lines, each ended by a newline."""
        return "".join(f"{line}\n" for line in self.lines)

    def summary(self) -> str:
        count = self.to_seq - self.from_seq + 1
        return (
            f"coordinator ledger {self.ledger_id[:12]}: entries {self.from_seq}..{self.to_seq} "
            f"({count}), head {self.head[:16]}, signed by key {self.key.key_id}"
        )


def signing_key(config: FederationConfig) -> SigningKey:
    """The coordinator's ledger signing key, created (0600) the first time one is needed."""
    key, created = load_or_create_signing_key(config.signing_key_path)
    if created:
        print(
            f"created the coordinator's ledger signing key {key.path}: public key "
            f"{key.public_text} (key id {key.key_id}); give the public key to auditors",
            file=sys.stderr,
        )
    return key


def _slice(
    entries: list[ChainEntry], from_seq: int, ledger_id: str, last: int
) -> tuple[str, list[ChainEntry]]:
    """``(anchor, entries from from_seq)`` out of entries read from ``from_seq - 1``."""
    if from_seq == 1:
        return genesis_hash(ledger_id), entries
    if not entries or entries[0].seq != from_seq - 1:
        raise CommandError(
            f"--from-seq {from_seq}: the mirror ledger's chain ends at entry {last}, so an "
            f"export can start at entry {last + 1} at the latest"
        )
    return entries[0].hash, entries[1:]


def coordinator_export(config: FederationConfig, from_seq: int = 1) -> CoordinatorExport:
    """Chain the signing key, then export the mirror's entries from ``from_seq`` on, signed."""
    key = signing_key(config)
    with MirrorLedger(config.ledger) as mirror:
        mirror.record_signing_key(key.public_text)
        # One read gives the anchor entry and everything after it, consistently.
        read = mirror.chain_entries(max(1, from_seq - 1))
        ledger_id = mirror.ledger_id
        last, _ = mirror.head()
    anchor, entries = _slice(read, from_seq, ledger_id, last)
    to_seq = entries[-1].seq if entries else from_seq - 1
    lines = list(
        export_lines(
            source="coordinator",
            subject=coordinator_identity(config),
            ledger_id=ledger_id,
            definition=None,
            policy={},
            entries=entries,
            anchor=anchor,
            from_seq=from_seq,
            to_seq=to_seq,
            exported_at=chain_time(utc_now()),
            key=key,
        )
    )
    head = entries[-1].hash if entries else anchor
    return CoordinatorExport(lines, ledger_id, from_seq, to_seq, head, key)


def _write(path: Path, text: str) -> None:
    try:
        write_atomic(path, text.encode("utf-8"), EXPORT_MODE)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    except ValueError:  # a path the system cannot use: empty name, NUL byte
        raise CommandError(f"{str(path)[:80]!r} is not a usable file name") from None


def run_export(args: argparse.Namespace) -> Outcome:
    config = load_federation(args.config)
    export = coordinator_export(config, args.from_seq)
    if args.out is None:
        return Outcome(Text(export.text), note=f"exported {export.summary()}")
    _write(args.out, export.text)
    return Outcome(note=f"exported {export.summary()} to {args.out}")


# ---------------------------------------------------------------- the nodes' exports


class _BadExport(Exception):
    """A node's stream is not something to write as its ledger export."""


@dataclass(frozen=True)
class Fetched:
    """What one node sent: its export's lines, or why there are none."""

    node: str
    lines: list[str] | None
    problem: str = ""
    unreachable: bool = False


def _receive(client: NodeClient) -> list[str]:
    lines: list[str] = []
    size = 0
    for line in client.export_ledger():
        if "\n" in line or "\r" in line:
            # Lines are joined with newlines on disk: one inside a line would change
            # the file's lines, and with them what the signature covers.
            raise _BadExport("the node sent a line holding a line break; not a ledger export")
        size += len(line) + 1
        if size > MAX_EXPORT_CHARS:
            raise _BadExport(f"the export is larger than {MAX_EXPORT_CHARS} characters; stopped")
        lines.append(line)
    return lines


def fetch_one(name: str, client: NodeClient) -> Fetched:
    """One node's export over ``ExportLedger``; failures become a reason, never an exception."""
    try:
        return Fetched(name, _receive(client))
    except _BadExport as exc:
        return Fetched(name, None, str(exc))
    except UnsupportedCallError:
        return Fetched(name, None, "the node's tiaki cannot export its ledger; upgrade it")
    except DeadlineExceededError:
        return Fetched(
            name,
            None,
            "unreachable: the export did not arrive before the deadline "
            "(defaults.timeout_seconds in the federation file)",
            True,
        )
    except TiakiError as exc:
        first = exc.message.splitlines()[0][:120] if exc.message else exc.reason
        unreachable = isinstance(exc, TRANSIENT)
        return Fetched(name, None, f"unreachable: {first}" if unreachable else first, unreachable)


def _check(fetched: Fetched) -> tuple[LedgerExport | None, str]:
    """The parsed export and "" if it is sound; else what is wrong (export None: unusable)."""
    assert fetched.lines is not None
    try:
        export = parse_export(fetched.lines, f"{fetched.node}'s export")
    except ExportFormatError as exc:
        return None, str(exc)
    if export.source != "node":
        return export, f"it is a {export.source} ledger, not a node's"
    problems = integrity_problems(export)
    if problems:
        where = f"entry {problems[0].seq}: " if problems[0].seq else ""
        return export, f"the export does not verify: {where}{problems[0].problem}"
    return export, ""


def _row(fetched: Fetched, out_dir: Path) -> tuple[list[str], bool]:
    """Write what can be written; the node's report row, and whether it is ok."""
    path = out_dir / f"{fetched.node}.jsonl"
    # A failed node's file from an earlier fetch stays; say so, lest it pass for new.
    stale = f"; the older {path} was left as it was" if path.exists() else ""
    if fetched.lines is None:
        status = "unreachable" if fetched.unreachable else "failed"
        return [fetched.node, status, "", "", fetched.problem + stale], False
    export, problem = _check(fetched)
    if export is None:
        # Not an export at all: writing it would leave junk where an audit looks.
        return [fetched.node, "failed", "", "", problem + stale], False
    # A parsed export that does not verify is still written: it is the evidence.
    _write(path, "".join(f"{line}\n" for line in fetched.lines))
    span = f"{export.from_seq}..{export.to_seq}"
    ok = not problem
    detail = str(path) if ok else f"{path}: {problem}"
    return [fetched.node, "ok" if ok else "failed", span, key_id(export.public_key), detail], ok


def _fetch_exit_code(outcomes: list[Fetched], ok: int) -> ExitCode:
    if ok == len(outcomes):
        return ExitCode.OK
    if ok == 0 and all(f.unreachable for f in outcomes):
        return ExitCode.UNAVAILABLE
    return ExitCode.REFUSED


def run_fetch(args: argparse.Namespace) -> Outcome:
    config, federation = open_federation(args)
    with federation:
        if COORDINATOR in federation.names:
            raise CommandError(
                f"a node is named 'coordinator': its ledger would overwrite this coordinator's "
                f"own {COORDINATOR_FILE}; leave it out with --nodes and fetch it separately "
                "into another folder"
            )
        out_dir: Path = args.out_dir
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
        except ValueError:  # a NUL byte in the name
            raise CommandError(f"{str(out_dir)[:80]!r} is not a usable folder name") from None
        # Our own first: a problem with the signing key or mirror stops before any node.
        ours = coordinator_export(config)
        _write(out_dir / COORDINATOR_FILE, ours.text)
        results = dict(federation.each(fetch_one))
    fetched = [results[name] for name in federation.names]
    rows: list[list[str]] = []
    ok = 0
    for one in fetched:
        row, good = _row(one, out_dir)
        rows.append(row)
        ok += good
    span = f"{ours.from_seq}..{ours.to_seq}"
    rows.append(["(coordinator)", "ok", span, ours.key.key_id, str(out_dir / COORDINATOR_FILE)])
    table = Table(
        ["ledger", "status", "entries", "key id", "file"],
        rows,
        notes=[
            "",
            f"{ok} of {len(fetched)} node ledgers fetched, and the coordinator's, into {out_dir}",
        ],
    )
    return Outcome(table, _fetch_exit_code(fetched, ok))


# ---------------------------------------------------------------- verify


def run_verify(args: argparse.Namespace) -> Text:
    config = load_federation(args.config)
    if not config.ledger.exists():
        raise CommandError(
            f"{config.ledger}: no mirror ledger yet (the first 'tiaki query' creates it)"
        )
    with MirrorLedger(config.ledger) as mirror:
        count = mirror.verify()
        _, head = mirror.head()
    return Text.lines(
        f"ok: {config.ledger} verifies: {count} chained entries linked from its genesis, "
        f"accounting exactly for its questions and outcomes (head {head[:16]})"
    )
