"""``tiaki audit verify``: everything that can be proved from a set of exports, and a verdict.

For each export: its chain and signature (:func:`tiaki.ledger_export.integrity_problems`);
that every entry parses and belongs in its kind of ledger; that the first entry
is ``opened`` for the header's ledger id; that the header's key is the one the
ledger's latest ``signing_key`` entry records; that timestamps never go
backwards; for node ledgers, that the header names the node the policy names
and that the ledger keeps its own policy (:mod:`~coordinator.audit.node_rules`);
for coordinator ledgers, that outcomes follow their questions
(:mod:`~coordinator.audit.coordinator_rules`). Then, across exports: the keys
against the evaluator's trusted keys, continuity with earlier exports
(:mod:`~coordinator.audit.continuity`) and the coordinator against the nodes
(:mod:`~coordinator.audit.reconcile`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.audit.continuity import (
    check_continuity,
    choose_prefix,
    compare_exports,
    prefix_entries,
)
from coordinator.audit.coordinator_rules import check_coordinator_ledger
from coordinator.audit.findings import Finding, Severity, error, ordered, warning
from coordinator.audit.ledgers import ParsedLedger, parse_entries, parse_time
from coordinator.audit.node_rules import check_node_ledger
from coordinator.audit.reconcile import reconcile
from coordinator.audit.sessions import check_sessions
from tiaki.chain import ChainEntry
from tiaki.ledger_export import LedgerExport, integrity_problems
from tiaki.ledger_records import Opened, PolicyRecord, SigningKeyRecord
from tiaki.signing import key_id

VERIFY_FORMAT = "tiaki-audit-verify"
VERIFY_VERSION = 1


@dataclass(frozen=True)
class Verification:
    """The outcome of verifying a set of exports: what was read, and every finding."""

    exports: tuple[LedgerExport, ...]
    previous: tuple[LedgerExport, ...]
    ledgers: tuple[ParsedLedger, ...]  # the current exports, parsed (one per export)
    latest: tuple[ParsedLedger, ...]  # one per ledger id: what reconciliation and reports use
    findings: tuple[Finding, ...]
    keys_pinned: bool

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity is severity)

    @property
    def passed(self) -> bool:
        return self.count(Severity.ERROR) == 0

    def verdict(self) -> str:
        errors, warnings = self.count(Severity.ERROR), self.count(Severity.WARNING)
        n = len(self.exports)
        what = f"{n} export{'s' if n != 1 else ''} checked"
        if errors:
            return f"AUDIT FAILED: {errors} error(s), {warnings} warning(s); {what}"
        return f"audit passed: no errors, {warnings} warning(s); {what}"

    def doc(self) -> dict[str, Any]:
        """A stable document for programs (``--format json``)."""
        return {
            "format": VERIFY_FORMAT,
            "version": VERIFY_VERSION,
            "verdict": "passed" if self.passed else "failed",
            "summary": self.verdict(),
            "errors": self.count(Severity.ERROR),
            "warnings": self.count(Severity.WARNING),
            "info": self.count(Severity.INFO),
            "keys_pinned": self.keys_pinned,
            "exports": [_export_doc(e, "current") for e in self.exports]
            + [_export_doc(e, "previous") for e in self.previous],
            "findings": [f.doc() for f in self.findings],
        }


def _export_doc(export: LedgerExport, role: str) -> dict[str, Any]:
    return {
        "name": export.name,
        "role": role,
        "source": export.source,
        "subject": export.subject,
        "ledger_id": export.ledger_id,
        "public_key": export.public_key,
        "key_id": key_id(export.public_key),
        "from_seq": export.from_seq,
        "to_seq": export.to_seq,
        "head": export.head,
        "exported_at": export.exported_at,
    }


def _integrity(export: LedgerExport) -> list[Finding]:
    return [
        error(export.name, p.seq or None, "integrity", p.problem)
        for p in integrity_problems(export)
    ]


def _check_opened(ledger: ParsedLedger, raw: Sequence[tuple[str, ChainEntry]]) -> list[Finding]:
    """The first entry is ``opened`` for this ledger; no other entry is."""
    export = ledger.export
    findings: list[Finding] = []
    if ledger.history_complete:
        if not raw:
            return [warning(export.name, None, "empty", "the export holds no entries")]
        name, first = raw[0]
        if first.type != "opened" or first.seq != 1:
            findings.append(
                error(
                    name,
                    first.seq,
                    "not-opened-first",
                    f"the first entry is a {first.type!r:.40} entry; a ledger begins with 'opened'",
                )
            )
    for placed in ledger.of(Opened):
        if placed.seq != 1:
            findings.append(
                error(placed.export, placed.seq, "opened-again", "a second 'opened' entry")
            )
        elif placed.record.ledger_id != export.ledger_id:
            findings.append(
                error(
                    placed.export,
                    placed.seq,
                    "wrong-ledger",
                    f"the ledger was opened as {placed.record.ledger_id!r:.60}, but the header "
                    f"says {export.ledger_id!r:.60}",
                )
            )
        elif placed.record.ledger != export.source:
            findings.append(
                error(
                    placed.export,
                    placed.seq,
                    "wrong-ledger",
                    f"the ledger was opened as a {placed.record.ledger!r:.20} ledger, but the "
                    f"header says {export.source}",
                )
            )
    return findings


def _check_times(export: LedgerExport, raw: Sequence[tuple[str, ChainEntry]]) -> list[Finding]:
    """Entry times parse and never go backwards; the export is not older than its entries."""
    findings: list[Finding] = []
    latest = None
    latest_seq = 0
    for name, entry in raw:
        when = parse_time(entry.at)
        if when is None:
            findings.append(
                error(name, entry.seq, "bad-time", f"time {entry.at!r:.40} is not ISO 8601")
            )
            continue
        if latest is not None and when < latest:
            findings.append(
                error(
                    name,
                    entry.seq,
                    "time-backwards",
                    f"recorded at {entry.at}, earlier than entry {latest_seq} before it",
                )
            )
        if latest is None or when >= latest:
            latest, latest_seq = when, entry.seq
    exported = parse_time(export.exported_at)
    if exported is None:
        findings.append(
            error(
                export.name,
                None,
                "bad-time",
                f"export time {export.exported_at!r:.40} is not ISO 8601",
            )
        )
    elif latest is not None and exported < latest:
        findings.append(
            warning(
                export.name,
                None,
                "exported-before-entries",
                f"exported at {export.exported_at}, before its entry {latest_seq} was recorded",
            )
        )
    return findings


def _check_key_and_subject(ledger: ParsedLedger) -> list[Finding]:
    """The header's key is the latest recorded signing key; a node's subject is its policy's."""
    export = ledger.export
    findings: list[Finding] = []
    keys = ledger.of(SigningKeyRecord)
    ours = f"key {key_id(export.public_key)}"
    if not keys:
        if ledger.history_complete:
            findings.append(
                error(
                    export.name,
                    None,
                    "key-not-recorded",
                    f"signed by {ours}, which no signing_key entry in the ledger records",
                )
            )
        else:
            findings.append(
                warning(
                    export.name,
                    None,
                    "key-unconfirmed",
                    f"signed by {ours}; the signing_key entry recording it lies before entry "
                    f"{export.from_seq}, which this export does not include",
                )
            )
    elif keys[-1].record.public_key != export.public_key:
        findings.append(
            error(
                export.name,
                keys[-1].seq,
                "key-not-recorded",
                f"signed by {ours}, but the ledger's latest signing_key entry records key "
                f"{key_id(keys[-1].record.public_key)}",
            )
        )
    askers = sorted({q.record.identity for q in ledger.questions} - {export.subject})
    if not ledger.is_node and askers:
        # Nodes see, charge and reconcile the certificate identity the questions carry;
        # a key trusted for the export's subject should be the key of that same party.
        findings.append(
            warning(
                export.name,
                None,
                "subject-mismatch",
                f"the header names coordinator {export.subject!r:.60}, but its questions were "
                f"asked as {', '.join(repr(a)[:60] for a in askers)} (the identity the nodes "
                "saw)",
            )
        )
    policies = ledger.of(PolicyRecord)
    if ledger.is_node and policies:
        latest = policies[-1]
        if latest.record.node_id != export.subject:
            findings.append(
                error(
                    export.name,
                    latest.seq,
                    "wrong-subject",
                    f"the header names node {export.subject!r:.60}, but the policy in force "
                    f"names node {latest.record.node_id!r:.60}",
                )
            )
        definition = export.header.get("definition")
        if definition is not None and definition != latest.record.definition:
            findings.append(
                warning(
                    export.name,
                    latest.seq,
                    "wrong-definition",
                    f"the header's privacy definition {definition!r:.20} differs from the "
                    f"policy's {latest.record.definition!r:.20}",
                )
            )
    return findings


def _read(
    export: LedgerExport, previous: Sequence[LedgerExport]
) -> tuple[ParsedLedger, list[tuple[str, ChainEntry]], list[Finding]]:
    """Parse an export (with the entries before it, when an earlier export has them)."""
    earlier = choose_prefix(export, previous)
    prefix = prefix_entries(export, earlier) if earlier is not None else []
    ledger, findings = parse_entries(export, prefix, earlier.name if earlier else None)
    raw = [(earlier.name if earlier else "", e) for e in prefix]
    raw += [(export.name, e) for e in export.entries]
    if not ledger.history_complete:
        findings.append(
            warning(
                export.name,
                None,
                "history-unchecked",
                f"the export starts at entry {export.from_seq}; the history before it was not "
                "checked (give an earlier export of this ledger with --since)",
            )
        )
    return ledger, raw, findings


def _check_keys(
    exports: Sequence[LedgerExport], trusted: Mapping[str, str] | None
) -> list[Finding]:
    if trusted is None:
        return [
            warning(
                "",
                None,
                "keys-not-pinned",
                "signatures were checked only against the keys the exports carry, which "
                "anyone can replace; give the keys you obtained from each party with --keys",
            )
        ]
    findings: list[Finding] = []
    for export in exports:
        pinned = trusted.get(export.subject)
        if pinned is None:
            findings.append(
                error(
                    export.name,
                    None,
                    "key-not-trusted",
                    f"the keys file has no key for {export.subject!r:.60}, so this export's "
                    f"signature (key {key_id(export.public_key)}) cannot be trusted",
                )
            )
        elif pinned != export.public_key:
            findings.append(
                error(
                    export.name,
                    None,
                    "key-not-trusted",
                    f"signed by key {key_id(export.public_key)}, but the keys file gives "
                    f"{export.subject!r:.60} the key {key_id(pinned)}",
                )
            )
    return findings


def _latest_per_ledger(
    ledgers: Sequence[ParsedLedger],
) -> tuple[list[ParsedLedger], list[Finding]]:
    """One export per ledger id (the longest, then the newest); the older ones are compared
    with it as earlier exports, and two ledgers claiming one subject are pointed out."""
    groups: dict[str, list[ParsedLedger]] = {}
    for ledger in ledgers:
        groups.setdefault(ledger.export.ledger_id, []).append(ledger)
    findings: list[Finding] = []
    latest: list[ParsedLedger] = []
    for group in groups.values():
        group.sort(key=lambda g: (g.export.to_seq, g.export.exported_at))
        newest = group[-1]
        latest.append(newest)
        for older in group[:-1]:
            findings.extend(compare_exports(older.export, newest.export))
    subjects: dict[tuple[str, str], list[ParsedLedger]] = {}
    for ledger in latest:
        subjects.setdefault((ledger.export.source, ledger.export.subject), []).append(ledger)
    for (source, subject), same in subjects.items():
        for other in same[1:]:
            findings.append(
                warning(
                    other.name,
                    None,
                    "two-ledgers",
                    f"{same[0].name} and this export are two different {source} ledgers, both "
                    f"for {subject!r:.60}",
                )
            )
    return latest, findings


def verify_exports(
    exports: Sequence[LedgerExport],
    previous: Sequence[LedgerExport] = (),
    trusted_keys: Mapping[str, str] | None = None,
) -> Verification:
    """Run every check (see the module docs) and collect the findings, errors first."""
    findings: list[Finding] = []
    ledgers: list[ParsedLedger] = []
    for export in previous:
        findings.extend(_integrity(export))
    for export in exports:
        findings.extend(_integrity(export))
        ledger, raw, parse_findings = _read(export, previous)
        findings.extend(parse_findings)
        findings.extend(_check_opened(ledger, raw))
        findings.extend(_check_times(export, raw))
        findings.extend(_check_key_and_subject(ledger))
        if ledger.is_node:
            findings.extend(check_node_ledger(ledger))
        else:
            findings.extend(check_coordinator_ledger(ledger))
        ledgers.append(ledger)
    findings.extend(_check_keys(exports, trusted_keys))
    findings.extend(check_continuity(exports, previous))
    latest, duplicate_findings = _latest_per_ledger(ledgers)
    findings.extend(duplicate_findings)
    findings.extend(
        reconcile(
            [g for g in latest if not g.is_node],
            [g for g in latest if g.is_node],
        )
    )
    findings.extend(check_sessions([g for g in latest if g.is_node]))
    return Verification(
        tuple(exports),
        tuple(previous),
        tuple(ledgers),
        tuple(latest),
        tuple(ordered(findings)),
        trusted_keys is not None,
    )
