"""Real ledgers for the ``tiaki audit`` tests: chains in SQLite, exports signed with real keys.

:class:`LedgerBuilder` appends entries to a real ``chain`` table with
:func:`tiaki.chain.append_entry` and writes signed exports with
:func:`tiaki.ledger_export.export_lines`, so the audit reads exactly what a
node or coordinator would write. :func:`federation` builds one small
federation's ledgers: two nodes (one counting quarterly, rolling over from Q1
to Q2; one counting a single lifetime period) charged by two identities, and
the coordinator ``ministry`` whose mirror matches them, including a retry
after an unreachable first attempt and a refusal.

Tampering helpers (:func:`rechain`, :func:`edit_lines`) forge what an attacker
or a buggy writer could produce: entries re-linked into a self-consistent
chain, or raw lines changed after signing.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from coordinator.cli.main import main
from tiaki.chain import (
    ChainEntry,
    append_entry,
    create_chain_table,
    entry_hash,
    genesis_hash,
    read_entries,
)
from tiaki.ledger_export import export_lines
from tiaki.ledger_records import (
    COORDINATOR_LEDGER,
    NODE_LEDGER,
    ChargeRecord,
    GrantRecord,
    Opened,
    OutcomeRecord,
    PeriodRecord,
    PolicyRecord,
    QuestionRecord,
    SigningKeyRecord,
)
from tiaki.signing import SigningKey, create_signing_key

COORDINATOR = "ministry"  # the coordinator's certificate identity
OTHER_IDENTITY = "university"  # another coordinator the node also answers


def at(day: str, clock: str = "09:00:00") -> str:
    """An entry time as the ledgers write it: ``2026-03-30T09:00:00.000000Z``."""
    when = datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


EXPORTED_AT = at("2026-04-03", "00:00:00")


class LedgerBuilder:
    """One ledger's chain in a real SQLite table, and its signing key."""

    def __init__(self, key_dir: Path, source: str, subject: str, opened_at: str) -> None:
        self.source = source
        self.subject = subject
        self.ledger_id = uuid.uuid4().hex
        self.key = create_signing_key(key_dir / f"{subject}-{self.ledger_id[:8]}.key")
        self.conn = sqlite3.connect(":memory:")
        with self.conn:
            create_chain_table(self.conn)
        self.add(Opened(source, self.ledger_id, 1), opened_at)
        self.add(SigningKeyRecord(self.key.public_text), opened_at)

    def add(self, record: Any, when: str) -> ChainEntry:
        """Append one typed record (anything with ``type`` and ``body()``) at ``when``."""
        with self.conn:
            return append_entry(self.conn, self.ledger_id, record.type, when, record.body())

    @property
    def entries(self) -> list[ChainEntry]:
        return list(read_entries(self.conn))

    def seq_of(self, predicate: Callable[[ChainEntry], bool]) -> int:
        """The number of the first entry ``predicate`` picks."""
        return next(e.seq for e in self.entries if predicate(e))

    def export(
        self,
        path: Path,
        *,
        entries: Sequence[ChainEntry] | None = None,
        key: SigningKey | None = None,
        exported_at: str = EXPORTED_AT,
        ledger_id: str | None = None,
        subject: str | None = None,
        policy: Mapping[str, Any] | None = None,
        definition: str = "pure",
    ) -> Path:
        """Sign and write an export of ``entries`` (default: the whole chain).

        The range, anchor and checkpoint are computed from the entries given,
        as an honest writer (or a forger with the key) would.
        """
        chosen = list(self.entries if entries is None else entries)
        lid = ledger_id or self.ledger_id
        first = chosen[0].seq if chosen else 1
        # The anchor is what the first entry links to, as the writer (or forger) chained it.
        anchor = genesis_hash(lid) if first == 1 else chosen[0].prev
        lines = export_lines(
            source=self.source,
            subject=subject or self.subject,
            ledger_id=lid,
            definition=definition if self.source == NODE_LEDGER else None,
            policy=self._policy() if policy is None else policy,
            entries=chosen,
            anchor=anchor,
            from_seq=first,
            to_seq=chosen[-1].seq if chosen else 0,
            exported_at=exported_at,
            key=key or self.key,
        )
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _policy(self) -> dict[str, Any]:
        policies = [e for e in self.entries if e.type == "policy"]
        return dict(policies[-1].body) if policies else {}


def rechain(ledger_id: str, entries: Sequence[ChainEntry]) -> list[ChainEntry]:
    """Renumber and re-link ``entries`` into a valid chain of ``ledger_id`` from entry 1:
    what someone holding the ledger's key would do to rewrite its history."""
    out: list[ChainEntry] = []
    prev = genesis_hash(ledger_id)
    for seq, entry in enumerate(entries, start=1):
        hash_ = entry_hash(seq, entry.type, entry.at, entry.body, prev)
        out.append(ChainEntry(seq, entry.type, entry.at, entry.body, prev, hash_))
        prev = hash_
    return out


def with_body(entry: ChainEntry, **changes: Any) -> ChainEntry:
    """The same entry with some body fields changed (its hash left as it was)."""
    return replace(entry, body={**entry.body, **changes})


def edit_lines(path: Path, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Path:
    """Rewrite an export's JSON lines after signing (the signature is left as it was)."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    path.write_text("\n".join(json.dumps(r) for r in edit(records)) + "\n", encoding="utf-8")
    return path


def policy(
    node_id: str,
    *,
    period: str = "quarterly",
    limit: str = "2",
    lifetime_limit: str | None = "5",
    per_query_max: str = "1",
    cap: str | None = "1.5",
) -> PolicyRecord:
    return PolicyRecord(
        node_id=node_id,
        definition="pure",
        period=period,
        limit=Fraction(limit),
        lifetime_limit=None if lifetime_limit is None else Fraction(lifetime_limit),
        per_query_max=Fraction(per_query_max),
        coordinators=(
            GrantRecord(COORDINATOR, None, None if cap is None else Fraction(cap), None),
            GrantRecord(OTHER_IDENTITY, None, None, ("count",)),
        ),
    )


QUERIES = {
    "q1": '{"kind":"count","where":[]}',
    "q2": '{"kind":"count","where":["service=housing"]}',
    "q3": '{"kind":"mean","column":"age"}',
    "q4": '{"kind":"count","group_by":["region"]}',
    "q5": '{"kind":"count","where":["region=otago"]}',
    "q6": '{"kind":"sum","column":"visits"}',
}
KINDS = {"q1": "count", "q2": "count", "q3": "mean", "q4": "count", "q5": "count", "q6": "sum"}


def charge(
    query_id: str,
    amount: str,
    period: str,
    *,
    identity: str = COORDINATOR,
    analyst: str = "aroha",
    requested: str | None = None,
    canonical_query: str | None = None,
    privacy_map: str | None = None,
) -> ChargeRecord:
    return ChargeRecord(
        query_id=query_id,
        identity=identity,
        analyst=analyst,
        kind=KINDS.get(query_id, "count"),
        canonical_query=canonical_query or QUERIES.get(query_id, "{}"),
        requested=Fraction(requested or amount),
        charge=Fraction(amount),
        period=period,
        dataset_version="v1",
        response_sha256="0" * 64,
        privacy_map=None if privacy_map is None else Fraction(privacy_map),
    )


def question(query_id: str, nodes: Sequence[str], analyst: str = "aroha") -> QuestionRecord:
    return QuestionRecord(
        query_id=query_id,
        analyst=analyst,
        identity=COORDINATOR,
        canonical_query=QUERIES[query_id],
        requested=Fraction(1),
        definition="pure",
        nodes=tuple(nodes),
    )


def outcome(
    query_id: str,
    node: str,
    status: str,
    amount: str | None,
    node_id: str,
    attempts: int = 1,
) -> OutcomeRecord:
    return OutcomeRecord(
        query_id=query_id,
        node=node,
        status=status,
        reason="" if status in ("answered", "replayed") else f"{status} (test)",
        charge=None if amount is None else Fraction(amount),
        attempts=attempts,
        dataset_version="v1" if node_id else "",
        node_id=node_id,
    )


Q1 = PeriodRecord("2026-Q1", "2026-01-01", "2026-04-01")
Q2 = PeriodRecord("2026-Q2", "2026-04-01", "2026-07-01")
LIFETIME = PeriodRecord("lifetime", "", "")


@dataclass
class Federation:
    """The three ledgers of one small federation, as builders."""

    ngo_a: LedgerBuilder  # node id "ngo-a", federation name "ngo-a", quarterly periods
    ngo_b: LedgerBuilder  # node id "ngo-b-id", federation name "ngo-b", one lifetime period
    ministry: LedgerBuilder

    def export_all(self, folder: Path) -> tuple[Path, Path, Path]:
        return (
            self.ngo_a.export(folder / "ngo-a.jsonl"),
            self.ngo_b.export(folder / "ngo-b.jsonl"),
            self.ministry.export(folder / "ministry.jsonl"),
        )

    def keys_file(self, path: Path) -> Path:
        lines = [
            f'{b.subject}: "{b.key.public_text}"' for b in (self.ngo_a, self.ngo_b, self.ministry)
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


# What the federation's node ledgers spent, for checking totals by hand.
NGO_A_SPENT = {"2026-Q1": Fraction("1.25"), "2026-Q2": Fraction("0.625")}
NGO_B_SPENT = {"lifetime": Fraction("1.25")}


def federation(key_dir: Path) -> Federation:
    """Build the federation's ledgers, interleaved in time as a real run would write them.

    ngo-a: Q1 charges q1 (ministry 0.5), q2 (university 0.25), q3 (ministry 0.5, whose
    first reply was lost: the coordinator retried and got a replay); roll-over to Q2;
    q4 (ministry 0.5), q5 (university 0.125). ngo-b: q1 (0.5), q3 refused, q4 (0.75).
    """
    start = at("2026-03-30", "08:00:00")
    a = LedgerBuilder(key_dir, NODE_LEDGER, "ngo-a", start)
    b = LedgerBuilder(key_dir, NODE_LEDGER, "ngo-b-id", start)
    k = LedgerBuilder(key_dir, COORDINATOR_LEDGER, COORDINATOR, start)
    a.add(policy("ngo-a"), start)
    a.add(Q1, start)
    b.add(policy("ngo-b-id", period="none", limit="3", lifetime_limit=None, cap=None), start)
    b.add(LIFETIME, start)
    nodes = ("ngo-a", "ngo-b")

    k.add(question("q1", nodes), at("2026-03-30", "09:00:00"))
    a.add(charge("q1", "0.5", "2026-Q1"), at("2026-03-30", "09:00:01"))
    b.add(charge("q1", "0.5", "lifetime"), at("2026-03-30", "09:00:01"))
    k.add(outcome("q1", "ngo-a", "answered", "0.5", "ngo-a"), at("2026-03-30", "09:00:02"))
    k.add(outcome("q1", "ngo-b", "answered", "0.5", "ngo-b-id"), at("2026-03-30", "09:00:02"))

    a.add(
        charge("q2", "0.25", "2026-Q1", identity=OTHER_IDENTITY, analyst="dr-smith"),
        at("2026-03-30", "10:00:00"),
    )

    k.add(question("q3", nodes, analyst="mere"), at("2026-03-31", "09:00:00"))
    a.add(charge("q3", "0.5", "2026-Q1", analyst="mere"), at("2026-03-31", "09:00:01"))
    k.add(outcome("q3", "ngo-a", "unreachable", None, "", 3), at("2026-03-31", "09:00:05"))
    k.add(outcome("q3", "ngo-b", "refused", None, "ngo-b-id"), at("2026-03-31", "09:00:05"))
    k.add(outcome("q3", "ngo-a", "replayed", "0.5", "ngo-a"), at("2026-03-31", "09:10:00"))

    a.add(Q2, at("2026-04-01", "00:00:00"))
    k.add(question("q4", nodes), at("2026-04-02", "09:00:00"))
    a.add(charge("q4", "0.5", "2026-Q2"), at("2026-04-02", "09:00:01"))
    b.add(charge("q4", "0.75", "lifetime", requested="1"), at("2026-04-02", "09:00:01"))
    k.add(outcome("q4", "ngo-a", "answered", "0.5", "ngo-a"), at("2026-04-02", "09:00:02"))
    k.add(outcome("q4", "ngo-b", "answered", "0.75", "ngo-b-id"), at("2026-04-02", "09:00:02"))

    a.add(
        charge("q5", "0.125", "2026-Q2", identity=OTHER_IDENTITY, analyst="dr-smith"),
        at("2026-04-02", "10:00:00"),
    )
    return Federation(a, b, k)


# ---------------------------------------------------------------- running the CLI


@dataclass(frozen=True)
class AuditRun:
    """What one ``tiaki audit`` invocation returned and printed."""

    code: int
    out: str
    err: str

    def doc(self) -> Any:
        return json.loads(self.out)

    def findings(self, severity: str = "error") -> list[dict[str, Any]]:
        return [f for f in self.doc()["findings"] if f["severity"] == severity]

    def where(self, severity: str = "error") -> set[tuple[str, str, int | None]]:
        """``(code, export file name, entry)`` of every finding of one severity."""
        return {(f["code"], Path(f["export"]).name, f["seq"]) for f in self.findings(severity)}

    def error_line(self) -> str:
        """The one ``error:`` line a refused command prints, and no traceback."""
        assert "Traceback" not in self.err + self.out
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: "), self.err
        return lines[0]


def run_audit(capsys: Any, *argv: str | Path) -> AuditRun:
    code = main(["audit", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return AuditRun(code, captured.out, captured.err)


def verify_json(capsys: Any, *argv: str | Path) -> AuditRun:
    """``tiaki audit verify ARGV --format json``; checks the exit code matches the verdict."""
    run = run_audit(capsys, "verify", *argv, "--format", "json")
    assert run.code in (0, 5), run.err
    assert run.code == (5 if run.doc()["errors"] else 0)
    return run
