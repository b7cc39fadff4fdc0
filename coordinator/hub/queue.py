"""The hub's durable queue of work items: one SQLite file, every change committed at once.

An item is ``queued`` when submitted, ``leased`` while a node holds it (for
``lease_seconds``; a lease that ends without an outcome puts it back in the
queue), ``done`` once its node pushed an outcome, and ``expired`` when its
envelope's ``not_after`` (plus :data:`EXPIRY_GRACE_SECONDS`, room for the
node's clock-skew allowance) passed first. The queue holds only what it relays
(signed envelopes and signed outcomes, which it cannot read or alter unseen)
and when each node was last connected. WAL journal: a hub killed at any moment
restarts with every item it acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# A node may act on an envelope up to its skew allowance after not_after; the hub
# keeps offering it that long, then reports it expired.
EXPIRY_GRACE_SECONDS = 300
# Done and expired items are kept this long for a coordinator to collect, then dropped.
KEEP_SECONDS = 7 * 24 * 3600
UPKEEP_SECONDS = 1.0

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS work (
        work_id     TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        envelope    BLOB NOT NULL,
        not_after   INTEGER NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'expired')),
        attempt     INTEGER NOT NULL DEFAULT 0,
        lease_until REAL,
        outcome     BLOB,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS work_by_node ON work (node_id, state)",
    # When each node was last connected. Named when nodes long-polled; kept, so
    # that a queue file written then opens as it is.
    """CREATE TABLE IF NOT EXISTS pulls (
        node_id   TEXT PRIMARY KEY,
        last_pull REAL NOT NULL
    )""",
)


@dataclass(frozen=True)
class Leased:
    work_id: str
    attempt: int
    envelope: bytes


@dataclass(frozen=True)
class ItemState:
    state: str  # queued, leased, done, expired, or unknown
    outcome: bytes | None = None


@dataclass(frozen=True)
class NodeQueue:
    node_id: str
    last_seen: float | None
    waiting: int  # queued or leased


class WorkQueue:
    """The hub's items, and when each node was last connected.

    Safe to share between threads (one connection, a lock).
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._last_upkeep = float("-inf")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL, not FULL: a commit survives the hub being killed (it is in the WAL),
        # though not a power cut; both ends resend then (the same envelope, the
        # same work id; the stored outcome), so at-least-once delivery holds.
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._write() as db:
            for statement in SCHEMA:
                db.execute(statement)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ coordinators

    def submit(
        self,
        items: Sequence[tuple[str, str, bytes, int]],
        handed: Collection[str] = (),
        lease_seconds: float = 0.0,
    ) -> set[str]:
        """Queue (work id, node id, envelope, not_after) items in one commit.

        A work id already known is left as it is (the same envelope sent
        again). New items whose work id is in ``handed`` go out at once to a
        node connected now: they are stored leased (attempt 1) instead of
        queued. Returns the work ids that were new.
        """
        now = self._clock()
        with self._write() as db:
            known = self._known(db, [w for w, _, _, _ in items])
            new = [item for item in items if item[0] not in known]
            db.executemany(
                "INSERT OR IGNORE INTO work (work_id, node_id, envelope, not_after, state, "
                "attempt, lease_until, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (w, n, e, a, "leased", 1, now + lease_seconds, now, now)
                    if w in handed
                    else (w, n, e, a, "queued", 0, None, now, now)
                    for w, n, e, a in new
                ],
            )
            self._expire(db, now)
        return {w for w, _, _, _ in new}

    @staticmethod
    def _known(db: sqlite3.Connection, work_ids: Sequence[str]) -> set[str]:
        return {
            str(row[0])
            for row in db.execute(
                "SELECT work_id FROM work WHERE work_id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(work_ids)),),
            )
        }

    def states(self, work_ids: Sequence[str]) -> dict[str, ItemState]:
        """The state of each work id (``unknown`` for one the hub has not got), in one read."""
        now = self._clock()
        found: dict[str, ItemState] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT work_id, state, outcome, not_after FROM work "
                "WHERE work_id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(work_ids)),),
            ).fetchall()
        for work_id, state, outcome, not_after in rows:
            if state in ("queued", "leased") and not_after + EXPIRY_GRACE_SECONDS < now:
                state = "expired"  # marked so at the next upkeep; never leased again
            found[str(work_id)] = ItemState(str(state), None if outcome is None else bytes(outcome))
        return {w: found.get(w, ItemState("unknown")) for w in work_ids}

    # ------------------------------------------------------------ nodes

    def seen(self, node_ids: Collection[str]) -> None:
        """Note that these nodes are connected now (kept for when they are not)."""
        now = self._clock()
        with self._write() as db:
            db.executemany(
                "INSERT INTO pulls (node_id, last_pull) VALUES (?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET last_pull = excluded.last_pull",
                [(n, now) for n in node_ids],
            )

    def lease(self, node_id: str, lease_seconds: float, max_items: int) -> list[Leased]:
        """Up to ``max_items`` items for ``node_id``: queued ones, and leases that ran out.

        Looks before it writes: a node with nothing waiting costs one read.
        """
        now = self._clock()
        query = (
            "SELECT work_id, attempt, envelope FROM work WHERE node_id = ? AND "
            "(state = 'queued' OR (state = 'leased' AND lease_until <= ?)) "
            "AND not_after + ? >= ? ORDER BY created_at LIMIT ?"
        )
        arguments = (node_id, now, EXPIRY_GRACE_SECONDS, now, max_items)
        with self._lock:
            if self._db.execute(query, arguments).fetchone() is None:
                return []
        with self._write() as db:
            self._expire(db, now)
            rows = db.execute(query, arguments).fetchall()
            db.executemany(
                "UPDATE work SET state = 'leased', attempt = attempt + 1, lease_until = ?, "
                "updated_at = ? WHERE work_id = ?",
                [(now + lease_seconds, now, work_id) for work_id, _, _ in rows],
            )
        return [Leased(str(w), int(a) + 1, bytes(e)) for w, a, e in rows]

    def release(self, work_ids: Collection[str]) -> None:
        """Put leased items that never went out (their node went first) back in the queue."""
        now = self._clock()
        with self._write() as db:
            db.executemany(
                "UPDATE work SET state = 'queued', attempt = attempt - 1, lease_until = NULL, "
                "updated_at = ? WHERE work_id = ? AND state = 'leased'",
                [(now, w) for w in work_ids],
            )

    def complete(self, outcomes: Sequence[tuple[str, str, bytes]]) -> list[str]:
        """Keep each (work id, node id, outcome), all in one commit. For each: ``stored``
        (kept now), ``repeat`` (it had one already) or ``refused`` (not that node's item,
        or unknown).

        The first outcome stands: a repeat (a re-push after a reconnect) is
        accepted and changes nothing. An outcome for an item the hub already
        reported expired is kept too: the node's word on what it did wins.
        """
        now = self._clock()
        with self._write() as db:
            held = {
                str(w): (str(n), str(state))
                for w, n, state in db.execute(
                    "SELECT work_id, node_id, state FROM work "
                    "WHERE work_id IN (SELECT value FROM json_each(?))",
                    (json.dumps([w for w, _, _ in outcomes]),),
                )
            }
            results, updates = [], []
            for work_id, node_id, outcome in outcomes:
                node, state = held.get(work_id, ("", ""))
                if node != node_id:
                    results.append("refused")
                elif state == "done":
                    results.append("repeat")
                else:
                    results.append("stored")
                    held[work_id] = (node, "done")  # the same item twice in one batch: a repeat
                    updates.append((outcome, now, work_id))
            db.executemany(
                "UPDATE work SET state = 'done', outcome = ?, lease_until = NULL, "
                "updated_at = ? WHERE work_id = ?",
                updates,
            )
        return results

    def nodes(self, roster: Sequence[str]) -> list[NodeQueue]:
        """Each rostered node: when it was last connected, and how many items wait for it."""
        with self._lock:
            pulls = dict(self._db.execute("SELECT node_id, last_pull FROM pulls").fetchall())
            waiting = dict(
                self._db.execute(
                    "SELECT node_id, COUNT(*) FROM work WHERE state IN ('queued', 'leased') "
                    "GROUP BY node_id"
                ).fetchall()
            )
        return [NodeQueue(n, pulls.get(n), int(waiting.get(n, 0))) for n in roster]

    # ------------------------------------------------------------ upkeep

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        # Both statements scan the table: at most once a second, not on every call.
        if now - self._last_upkeep < UPKEEP_SECONDS:
            return
        self._last_upkeep = now
        db.execute(
            "UPDATE work SET state = 'expired', lease_until = NULL, updated_at = ? "
            "WHERE state IN ('queued', 'leased') AND not_after + ? < ?",
            (now, EXPIRY_GRACE_SECONDS, now),
        )
        db.execute(
            "DELETE FROM work WHERE state IN ('done', 'expired') AND updated_at < ?",
            (now - KEEP_SECONDS,),
        )
