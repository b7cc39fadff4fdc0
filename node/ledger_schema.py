"""The privacy ledger's tables, and how a ledger of an older schema is brought up to date.

Schema 4 (this release) keeps, for each entry that paid for a node's part in
a secure sum, its worst-case charge (``worst_case``) and the session's
record (``secure_session``, the canonical JSON of its chain body). Schema 3
added OpenDP's map beside each charge and the salt that opens its answer's
commitment. Older ledgers gain the columns they lack when they are opened,
inside the opening write transaction; their rows keep NULL there, which is
what an entry written before the column existed means. (Schema 2 files also
keep their prev_hash column, which nothing reads.)
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 4

TABLES = (
    """CREATE TABLE entries (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        query_id        TEXT NOT NULL,
        identity        TEXT NOT NULL,
        analyst         TEXT NOT NULL,
        kind            TEXT NOT NULL,
        canonical_query TEXT NOT NULL,
        requested       TEXT NOT NULL,
        charge          TEXT NOT NULL,
        period          TEXT NOT NULL,
        dataset_version TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        response        BLOB NOT NULL,
        entry_hash      TEXT,  -- the hash of this charge's entry in the chain
        privacy_map     TEXT,  -- OpenDP's map at the scales used (NULL before schema 3)
        commitment_salt BLOB,  -- opens response_commitment (NULL before schema 3)
        worst_case      TEXT,  -- a secure sum's worst-case charge (NULL otherwise)
        secure_session  TEXT,  -- its session record, canonical JSON (NULL otherwise)
        UNIQUE (identity, query_id)
    )""",
    """CREATE TABLE spending (
        period TEXT PRIMARY KEY,
        spent  TEXT NOT NULL
    )""",
)

# The columns each schema version added to the entries table.
ADDED_COLUMNS: dict[int, tuple[tuple[str, str], ...]] = {
    3: (("privacy_map", "TEXT"), ("commitment_salt", "BLOB")),
    4: (("worst_case", "TEXT"), ("secure_session", "TEXT")),
}
# The oldest schema this release upgrades.
OLDEST_UPGRADABLE = 2


def upgradable(version: str) -> bool:
    """Whether a file of schema ``version`` is older than this one and can be upgraded."""
    return version.isdigit() and OLDEST_UPGRADABLE <= int(version) < SCHEMA_VERSION


def upgrade_entries(db: sqlite3.Connection, version: int) -> None:
    """Bring the tables of schema ``version`` up to :data:`SCHEMA_VERSION`, one step at a
    time, and record the new version; call inside a write transaction."""
    present = {str(row[1]) for row in db.execute("PRAGMA table_info(entries)")}
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for name, sql_type in ADDED_COLUMNS[step]:
            if name not in present:
                db.execute(f"ALTER TABLE entries ADD COLUMN {name} {sql_type}")
                present.add(name)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
