"""Does a ledger's current export continue what an earlier export of it showed?

An export is only self-consistent: a node that cuts entries off the end, or
rewrites its history, and signs the result with its own key produces a file
that verifies on its own. An evaluator who kept an earlier export can tell.
For each earlier export (``--since``) and each current export of the same
ledger id, this module checks that the current one:

- was exported no earlier (otherwise an old export is being presented as
  current: a replay);
- reaches at least as far (otherwise the history was truncated);
- has the identical hash at every entry both hold, including the entry the
  current one's anchor names (otherwise the history was forked or rewritten
  at or before the first entry that differs);
- is signed by the same key, unless a ``signing_key`` entry after the earlier
  export's last entry records the new key.

A current export with the same subject but another ledger id means the history
was replaced. An earlier export also lets a partial current export (one
starting after entry 1) be read with the entries before it: see
:func:`choose_prefix`.
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.audit.findings import Finding, error, warning
from coordinator.audit.ledgers import parse_time
from tiaki.chain import ChainEntry
from tiaki.ledger_export import LedgerExport
from tiaki.signing import key_id


def choose_prefix(current: LedgerExport, previous: Sequence[LedgerExport]) -> LedgerExport | None:
    """The earlier export that holds every entry before ``current`` starts and whose entry
    just before it has the hash ``current`` is anchored to (the longest if several)."""
    if current.from_seq <= 1:
        return None
    best: LedgerExport | None = None
    for earlier in previous:
        if earlier.ledger_id != current.ledger_id or earlier.from_seq != 1:
            continue
        before = earlier.entry(current.from_seq - 1)
        if before is None or before.hash != current.anchor:
            continue
        if best is None or earlier.to_seq > best.to_seq:
            best = earlier
    return best


def prefix_entries(current: LedgerExport, earlier: LedgerExport) -> list[ChainEntry]:
    return [e for e in earlier.entries if e.seq < current.from_seq]


def _hashes(export: LedgerExport) -> dict[int, str]:
    """Entry number -> hash, for every entry the export vouches for (its anchor included)."""
    hashes = {e.seq: e.hash for e in export.entries}
    if export.from_seq > 1:
        hashes.setdefault(export.from_seq - 1, export.anchor)
    return hashes


def compare_exports(earlier: LedgerExport, current: LedgerExport) -> list[Finding]:
    """Whether ``current`` continues what ``earlier`` showed of the same ledger."""
    findings: list[Finding] = []
    name = current.name
    then, now = parse_time(earlier.exported_at), parse_time(current.exported_at)
    if then is not None and now is not None and now < then:
        findings.append(
            error(
                name,
                None,
                "replayed-export",
                f"an older export presented as current (replay): exported at "
                f"{current.exported_at}, before the earlier export {earlier.name} "
                f"({earlier.exported_at})",
            )
        )
    if current.to_seq < earlier.to_seq:
        findings.append(
            error(
                name,
                current.to_seq + 1,
                "truncated",
                f"truncated: the history ends at entry {current.to_seq} but an earlier export "
                f"({earlier.name}) showed it reaching entry {earlier.to_seq}",
            )
        )
    old, new = _hashes(earlier), _hashes(current)
    common = sorted(set(old) & set(new))
    for seq in common:
        if old[seq] != new[seq]:
            exact = seq - 1 in old and seq - 1 in new and old[seq - 1] == new[seq - 1]
            where = f"at entry {seq}" if exact else f"at or before entry {seq}"
            findings.append(
                error(
                    name,
                    seq,
                    "forked",
                    f"forked/rewritten {where}: its hash differs from the one the earlier "
                    f"export {earlier.name} showed for the same entry",
                )
            )
            break
    if not common:
        findings.append(
            warning(
                name,
                None,
                "continuity-unknown",
                f"shares no entry with the earlier export {earlier.name} (which ends at entry "
                f"{earlier.to_seq}; this one starts at {current.from_seq}), so whether it "
                "continues that history could not be checked",
            )
        )
    if current.public_key != earlier.public_key and not any(
        e.type == "signing_key"
        and e.seq > earlier.to_seq
        and e.body.get("public_key") == current.public_key
        for e in current.entries
    ):
        findings.append(
            error(
                name,
                None,
                "key-changed",
                f"signed by key {key_id(current.public_key)}, but the earlier export "
                f"{earlier.name} was signed by {key_id(earlier.public_key)} and no signing_key "
                f"entry after entry {earlier.to_seq} records the change",
            )
        )
    return findings


def check_continuity(
    current: Sequence[LedgerExport], previous: Sequence[LedgerExport]
) -> list[Finding]:
    """Compare every earlier export with the current exports of the same ledger."""
    findings: list[Finding] = []
    for earlier in previous:
        same = [c for c in current if c.ledger_id == earlier.ledger_id]
        for export in same:
            findings.extend(compare_exports(earlier, export))
        if same:
            continue
        replaced = [
            c for c in current if c.subject == earlier.subject and c.source == earlier.source
        ]
        for export in replaced:
            findings.append(
                error(
                    export.name,
                    None,
                    "history-replaced",
                    f"history replaced: {export.subject!r:.60}'s ledger is now "
                    f"{export.ledger_id!r:.60}, but the earlier export {earlier.name} showed "
                    f"its ledger as {earlier.ledger_id!r:.60}",
                )
            )
        if not replaced:
            findings.append(
                warning(
                    earlier.name,
                    None,
                    "no-current-export",
                    f"no current export of this ledger ({earlier.subject!r:.60}) was given, "
                    "so nothing was compared with it",
                )
            )
    return findings
