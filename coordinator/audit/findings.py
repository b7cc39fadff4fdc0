"""What an audit finds: one plain-words statement per problem, pinned to an entry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """``error`` fails the audit; ``warning`` limits what it could prove; ``info`` is context."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


@dataclass(frozen=True)
class Finding:
    """One thing the audit found.

    ``export`` is the export file it concerns ("" for the audit as a whole),
    ``seq`` the ledger entry (None when it concerns the export as a whole),
    ``code`` a stable short name for programs, ``message`` the plain words.
    """

    severity: Severity
    export: str
    seq: int | None
    code: str
    message: str

    def doc(self) -> dict[str, Any]:
        return {
            "severity": self.severity.value,
            "export": self.export,
            "seq": self.seq,
            "code": self.code,
            "message": self.message,
        }


def error(export: str, seq: int | None, code: str, message: str) -> Finding:
    return Finding(Severity.ERROR, export, seq, code, message)


def warning(export: str, seq: int | None, code: str, message: str) -> Finding:
    return Finding(Severity.WARNING, export, seq, code, message)


def info(export: str, seq: int | None, code: str, message: str) -> Finding:
    return Finding(Severity.INFO, export, seq, code, message)


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then information; within each, by export and entry.

    Duplicates (the same statement reached twice) are dropped.
    """
    unique = dict.fromkeys(findings)
    return sorted(
        unique,
        key=lambda f: (_RANK[f.severity], f.export, -1 if f.seq is None else f.seq, f.code),
    )
