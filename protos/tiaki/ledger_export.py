"""Signed ledger exports: one JSON Lines file an auditor can check with nothing else.

The format (documented for evaluators in ``docs/audit.md``), one JSON object
per line, UTF-8:

1. a **header** (``"record": "header"``): format and version, which kind of
   ledger (``source``: node or coordinator), whose (``subject``: the node id or
   the coordinator's identity), the ledger id, the public key that signs it,
   the privacy definition and the node's current policy, the range of entries
   (``from_seq``, ``to_seq``, and ``anchor``: the hash the first entry links
   to), and when it was exported;
2. the **entries** (``"record": "entry"``), oldest first, exactly as chained
   (see :mod:`tiaki.chain`);
3. a **checkpoint** (``"record": "checkpoint"``): ledger id, last seq, the
   chain head hash, the SHA-256 of the header's canonical JSON, the export
   time and public key, and an Ed25519 ``signature`` over the canonical JSON of
   every other checkpoint field.

The signature covers the head hash, which covers every entry through the
chain, and the header hash, which covers the policy and range: nothing in the
file can change without either breaking the chain or the signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiaki import __version__
from tiaki.chain import (
    ChainBreak,
    ChainEntry,
    ChainFormatError,
    canonical_json,
    check_links,
    genesis_hash,
    sha256_hex,
)
from tiaki.signing import SigningKey, verify_signature

FORMAT = "tiaki-ledger-export"
FORMAT_VERSION = 1
SOURCES = ("node", "coordinator")
MAX_LINE_CHARS = 1_000_000


class ExportFormatError(Exception):
    """The file is not a readable tiaki ledger export; says which line and why."""


def _header_hash(header: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_json(dict(header)))


def _signed_part(checkpoint: Mapping[str, Any]) -> bytes:
    fields = {k: v for k, v in checkpoint.items() if k not in ("signature", "record")}
    return canonical_json(fields).encode("utf-8")


def export_lines(
    *,
    source: str,
    subject: str,
    ledger_id: str,
    definition: str | None,
    policy: Mapping[str, Any],
    entries: Iterable[ChainEntry],
    anchor: str,
    from_seq: int,
    to_seq: int,
    exported_at: str,
    key: SigningKey,
) -> Iterator[str]:
    """The export's lines (each without its newline), header first, checkpoint last.

    ``entries`` must be the ledger's entries ``from_seq``..``to_seq`` and
    ``anchor`` the hash entry ``from_seq`` links to; the checkpoint signs the
    hash of the last entry given (or ``anchor`` if there are none).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    header = {
        "record": "header",
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": source,
        "subject": subject,
        "ledger_id": ledger_id,
        "public_key": key.public_text,
        "definition": definition,
        "policy": dict(policy),
        "range": {"from_seq": from_seq, "to_seq": to_seq, "anchor": anchor},
        "exported_at": exported_at,
        "software": f"tiaki {__version__}",
    }
    yield canonical_json(header)
    head, last = anchor, from_seq - 1
    for entry in entries:
        yield canonical_json({"record": "entry", **entry.record()})
        head, last = entry.hash, entry.seq
    if last != to_seq:
        raise ValueError(f"entries ended at {last}, not at the promised to_seq {to_seq}")
    checkpoint: dict[str, Any] = {
        "record": "checkpoint",
        "ledger_id": ledger_id,
        "seq": last,
        "head": head,
        "header_sha256": _header_hash(header),
        "exported_at": exported_at,
        "public_key": key.public_text,
    }
    checkpoint["signature"] = key.sign(_signed_part(checkpoint))
    yield canonical_json(checkpoint)


@dataclass(frozen=True)
class LedgerExport:
    """A parsed export. Parsing checks shape only; :func:`integrity_problems` checks trust."""

    name: str  # where it came from (file name), for messages
    header: Mapping[str, Any]
    entries: tuple[ChainEntry, ...]
    checkpoint: Mapping[str, Any]

    @property
    def source(self) -> str:
        return str(self.header["source"])

    @property
    def subject(self) -> str:
        return str(self.header["subject"])

    @property
    def ledger_id(self) -> str:
        return str(self.header["ledger_id"])

    @property
    def public_key(self) -> str:
        return str(self.header["public_key"])

    @property
    def exported_at(self) -> str:
        return str(self.header["exported_at"])

    @property
    def from_seq(self) -> int:
        return int(self.header["range"]["from_seq"])

    @property
    def to_seq(self) -> int:
        return int(self.header["range"]["to_seq"])

    @property
    def anchor(self) -> str:
        return str(self.header["range"]["anchor"])

    @property
    def head(self) -> str:
        return str(self.checkpoint["head"])

    def entry(self, seq: int) -> ChainEntry | None:
        """The entry numbered ``seq`` if this export holds it (positions may be tampered)."""
        for entry in self.entries:
            if entry.seq == seq:
                return entry
        return None


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ExportFormatError(f"{where}: '{key}' is missing or of the wrong type")
    return value


def _check_header(header: Mapping[str, Any], where: str) -> None:
    if header.get("format") != FORMAT:
        raise ExportFormatError(f"{where}: not a tiaki ledger export (format is not {FORMAT!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise ExportFormatError(
            f"{where}: export format version {header.get('format_version')!r:.20}; this tiaki "
            f"reads version {FORMAT_VERSION}"
        )
    if header.get("source") not in SOURCES:
        raise ExportFormatError(f"{where}: 'source' must be one of {', '.join(SOURCES)}")
    for key in ("subject", "ledger_id", "public_key", "exported_at"):
        _require(header, key, str, where)
    _require(header, "policy", dict, where)
    span = _require(header, "range", dict, where)
    _require(span, "from_seq", int, f"{where} range")
    _require(span, "to_seq", int, f"{where} range")
    _require(span, "anchor", str, f"{where} range")


def _check_checkpoint(checkpoint: Mapping[str, Any], where: str) -> None:
    for key in ("ledger_id", "head", "header_sha256", "exported_at", "public_key", "signature"):
        _require(checkpoint, key, str, where)
    _require(checkpoint, "seq", int, where)


def parse_export(lines: Iterable[str], name: str) -> LedgerExport:
    """Parse an export's lines; :class:`ExportFormatError` names the line that is wrong."""
    header: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    entries: list[ChainEntry] = []
    for number, line in enumerate(lines, start=1):
        where = f"{name}, line {number}"
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise ExportFormatError(f"{where}: line longer than {MAX_LINE_CHARS} characters")
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            raise ExportFormatError(f"{where}: not valid JSON") from None
        if not isinstance(obj, dict):
            raise ExportFormatError(f"{where}: expected a JSON object")
        record = obj.get("record")
        if checkpoint is not None:
            raise ExportFormatError(f"{where}: content after the checkpoint")
        if header is None:
            if record != "header":
                raise ExportFormatError(f"{where}: the first line must be the header")
            _check_header(obj, where)
            header = obj
        elif record == "entry":
            try:
                entries.append(ChainEntry.from_record(obj))
            except ChainFormatError as exc:
                raise ExportFormatError(f"{where}: {exc}") from None
        elif record == "checkpoint":
            _check_checkpoint(obj, where)
            checkpoint = obj
        else:
            raise ExportFormatError(f"{where}: unknown record {record!r:.40}")
    if header is None:
        raise ExportFormatError(f"{name}: empty; not a tiaki ledger export")
    if checkpoint is None:
        raise ExportFormatError(
            f"{name}: no checkpoint at the end (the export is cut short or unsigned)"
        )
    return LedgerExport(name, header, tuple(entries), checkpoint)


def read_export(path: Path) -> LedgerExport:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_export(f, str(path))
    except FileNotFoundError:
        raise ExportFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ExportFormatError(f"{path}: is a folder, not an export file") from None
    except UnicodeDecodeError:
        raise ExportFormatError(f"{path}: not UTF-8 text; not a tiaki ledger export") from None
    except OSError as exc:
        raise ExportFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None


def integrity_problems(export: LedgerExport) -> list[ChainBreak]:
    """Everything that makes ``export`` untrustworthy on its own terms, by entry.

    Checks: the chain links from its anchor (or the ledger's genesis hash when
    it starts at entry 1) through every entry; the range matches the entries;
    the checkpoint names this ledger, its head and the header's hash; and the
    signature verifies under the header's public key. Whether that key is the
    right one is for the caller to decide (it must come from somewhere else).
    Each problem carries the entry it concerns (0: the export as a whole).
    """
    problems: list[ChainBreak] = []
    header, checkpoint = export.header, export.checkpoint
    if export.from_seq == 1 and export.anchor != genesis_hash(export.ledger_id):
        problems.append(
            ChainBreak(
                0, "the export starts at entry 1 but does not anchor at its ledger's genesis"
            )
        )
    problems.extend(check_links(list(export.entries), export.anchor, export.from_seq))
    last = export.entries[-1].seq if export.entries else export.from_seq - 1
    if last != export.to_seq:
        problems.append(
            ChainBreak(
                last,
                f"the header promises entries up to {export.to_seq} but the last entry is {last} "
                "(entries were removed from or added to the end)",
            )
        )
    head = export.entries[-1].hash if export.entries else export.anchor
    if checkpoint["ledger_id"] != export.ledger_id:
        problems.append(ChainBreak(0, "the checkpoint belongs to another ledger"))
    if checkpoint["seq"] != last or checkpoint["head"] != head:
        problems.append(
            ChainBreak(
                last,
                f"the signed checkpoint is for entry {checkpoint['seq']}, not this chain's last "
                f"entry {last} (the tail was cut, extended or rewritten)",
            )
        )
    if checkpoint["header_sha256"] != _header_hash(header):
        problems.append(ChainBreak(0, "the header was changed after it was signed"))
    if checkpoint["public_key"] != export.public_key:
        problems.append(ChainBreak(0, "the checkpoint and the header name different keys"))
    if not verify_signature(export.public_key, _signed_part(checkpoint), checkpoint["signature"]):
        problems.append(
            ChainBreak(0, "the checkpoint's signature does not verify under the header's key")
        )
    return problems
