"""Reading what an evaluator hands ``tiaki audit``: export files and a trusted-keys file.

Anything unusable (a missing file, a file that is not an export, a keys file
that is not a mapping of subjects to Ed25519 public keys) raises
:class:`AuditInputError` with the file and the reason, so the command can stop
with a clear message instead of auditing half of what it was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from tiaki.files import yaml_problem
from tiaki.ledger_export import ExportFormatError, LedgerExport, read_export
from tiaki.signing import SigningKeyError, parse_public_key

MAX_KEYS_FILE_BYTES = 1_000_000


class AuditInputError(Exception):
    """An input file cannot be audited at all (as opposed to a finding about its content)."""


def load_exports(paths: Sequence[Path]) -> list[LedgerExport]:
    """Parse every export, in the order given; the first unreadable one stops the audit."""
    exports: list[LedgerExport] = []
    for path in paths:
        try:
            exports.append(read_export(Path(path)))
        except ExportFormatError as exc:
            raise AuditInputError(str(exc)) from None
    names = [e.name for e in exports]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AuditInputError(f"{repeated[0]}: given more than once")
    return exports


def load_trusted_keys(path: Path) -> dict[str, str]:
    """A YAML mapping ``subject: "ed25519:<base64>"`` of keys obtained outside the exports.

    Every subject must be a non-empty string and every key a valid Ed25519
    public key; anything else is an :class:`AuditInputError`, because a keys
    file that is silently half-read would let a wrong key through.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KEYS_FILE_BYTES + 1)
    except FileNotFoundError:
        raise AuditInputError(f"{path}: no such keys file") from None
    except IsADirectoryError:
        raise AuditInputError(f"{path}: is a folder, not a keys file") from None
    except OSError as exc:
        raise AuditInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_KEYS_FILE_BYTES:
        raise AuditInputError(f"{path}: too large to be a keys file")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise AuditInputError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise AuditInputError(f"{path}: {yaml_problem(exc)}") from None
    if not isinstance(data, dict) or not data:
        raise AuditInputError(
            f"{path}: a keys file maps each subject (node id or coordinator identity) to its "
            'public key, one per line, e.g.  ngo-a: "ed25519:..."'
        )
    keys: dict[str, str] = {}
    for subject, key in data.items():
        if not isinstance(subject, str) or not subject.strip():
            raise AuditInputError(f"{path}: subject {subject!r:.60} must be a non-empty name")
        if not isinstance(key, str):
            raise AuditInputError(
                f"{path}: the key of {subject!r:.60} must be text 'ed25519:<base64>'"
            )
        try:
            parse_public_key(key.strip())
        except SigningKeyError as exc:
            raise AuditInputError(f"{path}: {subject!r:.60}: {exc}") from None
        keys[subject] = key.strip()
    return keys
