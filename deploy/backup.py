"""Back up a node's data directory while it serves, and restore it into a fresh one.

    python3 backup.py backup /var/lib/tiaki /srv/backups/tiaki-2030-01-31
    python3 backup.py restore /srv/backups/tiaki-2030-01-31 /var/lib/tiaki   # node stopped

Standard library only, so the system's python3 can run it. The SQLite files
(``ledger.sqlite``, ``records.sqlite``) are copied with SQLite's online backup
API: the copy is one consistent snapshot that includes what is still in the
write-ahead log, taken without stopping the node (a query charged meanwhile is
simply not in it). Copying the ``.sqlite`` file alone with ``cp`` while the
node runs can miss the WAL or tear a page, which is why this exists. Every
other file (``node.salt``, ``signing.key``) is copied as it is; the WAL and
shared-memory files, locks and temporary files are not needed and are skipped.

Everything in a backup is as secret as the data directory: records, salt and
keys. Keep backups encrypted, and readable only by whoever restores them.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

SQLITE_SUFFIX = ".sqlite"
SKIPPED_SUFFIXES = ("-wal", "-shm", "-journal", ".tmp")


def _wanted(path: Path) -> bool:
    """Worth keeping: not hidden (locks, half-written temporaries), not SQLite's side files."""
    name = path.name
    return path.is_file() and not name.startswith(".") and not name.endswith(SKIPPED_SUFFIXES)


def _fresh_dir(path: Path) -> None:
    if path.exists() and any(path.iterdir()):
        raise SystemExit(f"{path} is not empty; give a new directory")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _check(path: Path) -> None:
    db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    try:
        result = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    if result != "ok":
        raise SystemExit(f"{path}: integrity check failed: {result}")


def snapshot(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database, as one self-contained file."""
    # Read-only: the backup must never be able to change the node's files.
    src = sqlite3.connect(f"file:{quote(str(source))}?mode=ro", uri=True)
    partial = target.with_name(target.name + ".partial")
    dst = sqlite3.connect(partial)
    try:
        src.backup(dst)
        # The copy carries the source's WAL flag; a rollback journal keeps the
        # backup a single file. The node switches back to WAL when it opens it.
        dst.execute("PRAGMA journal_mode = DELETE")
    finally:
        dst.close()
        src.close()
    partial.replace(target)
    _check(target)


def copy_dir(source: Path, target: Path) -> list[Path]:
    """Copy the wanted files of ``source`` into the new directory ``target``; returns them."""
    if not source.is_dir():
        raise SystemExit(f"{source} is not a directory")
    _fresh_dir(target)
    copied = []
    for path in sorted(source.iterdir()):
        if not _wanted(path):
            continue
        out = target / path.name
        if path.suffix == SQLITE_SUFFIX:
            snapshot(path, out)
        else:
            shutil.copyfile(path, out)
        out.chmod(0o600)
        copied.append(out)
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help="snapshot a data directory (the node may be running)")
    b.add_argument("data_dir", type=Path)
    b.add_argument("backup_dir", type=Path, help="a new or empty directory")
    r = sub.add_parser("restore", help="fill a new data directory from a backup (node stopped)")
    r.add_argument("backup_dir", type=Path)
    r.add_argument("data_dir", type=Path, help="a new or empty directory")
    args = p.parse_args(argv)
    if args.command == "backup":
        files = copy_dir(args.data_dir, args.backup_dir)
    else:
        files = copy_dir(args.backup_dir, args.data_dir)
    for path in files:
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
