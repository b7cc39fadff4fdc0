"""What every tiaki ledger file guarantees, for the node's ledger and the mirror alike.

Both are a :class:`tiaki.chained_ledger.ChainedLedger`, so each check runs
against both, each refusing with its own error type and words.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.mirror import MirrorError, MirrorLedger
from node.ledger import LedgerError
from tests.unit.test_ledger import make
from tiaki.chained_ledger import ChainedLedger

# kind -> (open the file, the error it raises, how "not a usable ..." names it)
KINDS: dict[str, tuple[Callable[[Path], ChainedLedger], type[Exception], str]] = {
    "node": (make, LedgerError, "privacy ledger"),
    "mirror": (MirrorLedger, MirrorError, "mirror"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("version", ["99", "1"])  # newer, and one no release ever wrote
def test_a_schema_this_release_cannot_read_is_refused_and_left_as_it_was(
    kind: str, version: str, tmp_path: Path
) -> None:
    open_ledger, error, _ = KINDS[kind]
    path = tmp_path / "ledger.sqlite"
    ledger = open_ledger(path)
    ledger.close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    raw.close()
    reads = ledger.schema_version  # the node's ledger and the mirror each have their own
    with pytest.raises(error, match=f"schema version {version}, this tiaki reads version {reads}"):
        open_ledger(path)
    with sqlite3.connect(path) as raw:
        stored = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    raw.close()
    assert stored == (version,)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_file_that_is_not_sqlite_is_refused(kind: str, tmp_path: Path) -> None:
    open_ledger, error, noun = KINDS[kind]
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(error, match=f"not a usable {noun}"):
        open_ledger(junk)
