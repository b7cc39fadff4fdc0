"""What a node remembers of each secure sum it takes part in, durably, round by round.

Each round's answer is stored before it is returned, in one ``BEGIN
IMMEDIATE`` transaction on a WAL file with ``synchronous=FULL``: a retry of a
round gets exactly the bytes it got before (a masked input re-sent after a
crash is byte-identical, so its noise is not drawn twice), and a round asked
again with different inputs is refused, whatever happened in between. That
is what keeps a node from ever revealing both kinds of share for one member
across restarts: the survivor list it signed, and the reveal that follows
from it, are written once.

The file holds session secrets (X25519 private keys and the self-mask seed as
field elements) until the session's reveal is written, after which they are
erased; it is created with mode 0600 and never leaves the node. It is not the
privacy ledger: charges are the ledger's, and the ledger records each
session's public parameters.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from tiaki.budget import format_amount, read_amount

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id BLOB PRIMARY KEY,
    digest BLOB NOT NULL,
    identity TEXT NOT NULL,
    state TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class SessionState:
    """A node's progress through one session; each round adds its fields once.

    Integers that are field elements (keys, seeds, shares) are kept as
    decimal text in the file; byte strings as hex.
    """

    digest: bytes
    identity: str
    # round 0: our two X25519 private keys (as field elements) and the signed advert
    encryption_element: int | None = None
    mask_element: int | None = None
    advert_signature: str = ""
    # round 1: who shared (U1), their public keys, our self-mask seed and shares, what we sent
    holders: tuple[int, ...] = ()
    encryption_keys: dict[int, bytes] = field(default_factory=dict)
    mask_keys: dict[int, bytes] = field(default_factory=dict)
    self_seed: int | None = None
    own_mask_key_share: int | None = None
    own_self_mask_share: int | None = None
    sent_shares: dict[int, bytes] = field(default_factory=dict)
    # round 2: whose shares reached us (U2), the shares, what we sent
    senders: tuple[int, ...] = ()
    received_mask_key_shares: dict[int, int] = field(default_factory=dict)
    received_self_mask_shares: dict[int, int] = field(default_factory=dict)
    masked_vector: bytes = b""
    components: tuple[tuple[str, int, float], ...] = ()
    cells: tuple[tuple[tuple[str, ...], str], ...] = ()
    aggregate: Fraction = Fraction(0)
    worst_case: Fraction = Fraction(0)
    # round 3: the survivor list we signed (U3)
    survivors: tuple[int, ...] = ()
    survivors_signature: str = ""
    # round 4: what we revealed, for whom
    revealed_self_mask_shares: dict[int, int] | None = None
    revealed_mask_key_shares: dict[int, int] | None = None

    @property
    def revealed(self) -> bool:
        return self.revealed_self_mask_shares is not None

    def forget_secrets(self) -> SessionState:
        """The state once the reveal is written: no private key or seed remains."""
        return replace(
            self,
            encryption_element=None,
            mask_element=None,
            self_seed=None,
            own_mask_key_share=None,
            own_self_mask_share=None,
            received_mask_key_shares={},
            received_self_mask_shares={},
        )


def _ints(d: dict[int, int] | None) -> dict[str, str] | None:
    return None if d is None else {str(k): str(v) for k, v in d.items()}


def _read_ints(d: dict[str, str] | None) -> dict[int, int] | None:
    return None if d is None else {int(k): int(v) for k, v in d.items()}


def _hexes(d: dict[int, bytes]) -> dict[str, str]:
    return {str(k): v.hex() for k, v in d.items()}


def _read_hexes(d: dict[str, str]) -> dict[int, bytes]:
    return {int(k): bytes.fromhex(v) for k, v in d.items()}


def _opt(value: int | None) -> str | None:
    return None if value is None else str(value)


def _read_opt(value: str | None) -> int | None:
    return None if value is None else int(value)


def _to_json(state: SessionState) -> str:
    doc: dict[str, Any] = {
        "encryption_element": _opt(state.encryption_element),
        "mask_element": _opt(state.mask_element),
        "advert_signature": state.advert_signature,
        "holders": list(state.holders),
        "encryption_keys": _hexes(state.encryption_keys),
        "mask_keys": _hexes(state.mask_keys),
        "self_seed": _opt(state.self_seed),
        "own_mask_key_share": _opt(state.own_mask_key_share),
        "own_self_mask_share": _opt(state.own_self_mask_share),
        "sent_shares": _hexes(state.sent_shares),
        "senders": list(state.senders),
        "received_mask_key_shares": _ints(state.received_mask_key_shares),
        "received_self_mask_shares": _ints(state.received_self_mask_shares),
        "masked_vector": state.masked_vector.hex(),
        "components": [list(c) for c in state.components],
        "cells": [[list(group), bin_] for group, bin_ in state.cells],
        "aggregate": format_amount(state.aggregate),
        "worst_case": format_amount(state.worst_case),
        "survivors": list(state.survivors),
        "survivors_signature": state.survivors_signature,
        "revealed_self_mask_shares": _ints(state.revealed_self_mask_shares),
        "revealed_mask_key_shares": _ints(state.revealed_mask_key_shares),
    }
    return json.dumps(doc, sort_keys=True)


def _from_json(digest: bytes, identity: str, text: str) -> SessionState:
    doc = json.loads(text)
    return SessionState(
        digest=digest,
        identity=identity,
        encryption_element=_read_opt(doc["encryption_element"]),
        mask_element=_read_opt(doc["mask_element"]),
        advert_signature=doc["advert_signature"],
        holders=tuple(doc["holders"]),
        encryption_keys=_read_hexes(doc["encryption_keys"]),
        mask_keys=_read_hexes(doc["mask_keys"]),
        self_seed=_read_opt(doc["self_seed"]),
        own_mask_key_share=_read_opt(doc["own_mask_key_share"]),
        own_self_mask_share=_read_opt(doc["own_self_mask_share"]),
        sent_shares=_read_hexes(doc["sent_shares"]),
        senders=tuple(doc["senders"]),
        received_mask_key_shares=_read_ints(doc["received_mask_key_shares"]) or {},
        received_self_mask_shares=_read_ints(doc["received_self_mask_shares"]) or {},
        masked_vector=bytes.fromhex(doc["masked_vector"]),
        components=tuple((str(n), int(length), float(s)) for n, length, s in doc["components"]),
        cells=tuple((tuple(group), str(bin_)) for group, bin_ in doc["cells"]),
        aggregate=read_amount(doc["aggregate"]),
        worst_case=read_amount(doc["worst_case"]),
        survivors=tuple(doc["survivors"]),
        survivors_signature=doc["survivors_signature"],
        revealed_self_mask_shares=_read_ints(doc["revealed_self_mask_shares"]),
        revealed_mask_key_shares=_read_ints(doc["revealed_mask_key_shares"]),
    )


class SessionStore:
    """The node's file of secure-sum sessions (``secure_sessions.sqlite`` in its data folder)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            # Created private before any secret is written into it.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def session(self, session_id: bytes) -> Iterator[_Round]:
        """One round's read-check-write on a session, as one write transaction.

        What the body stores with :meth:`_Round.save` commits when the body
        returns; if it raises, nothing of it is kept.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    "SELECT digest, identity, state FROM sessions WHERE session_id = ?",
                    (session_id,),
                ).fetchone()
                state = None if row is None else _from_json(bytes(row[0]), row[1], row[2])
                current = _Round(self._conn, session_id, state)
                yield current
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])


class _Round:
    def __init__(self, conn: sqlite3.Connection, session_id: bytes, state: SessionState | None):
        self._conn = conn
        self._session_id = session_id
        self.state = state

    def commit(self) -> None:
        """Make what was saved so far durable now, and go on in a new transaction.

        For a round with an effect outside this file (the ledger's charge): what
        it committed to is on disk before the effect, so a crash in between
        cannot let it be asked again with other inputs.
        """
        self._conn.execute("COMMIT")
        self._conn.execute("BEGIN IMMEDIATE")

    def save(self, state: SessionState) -> None:
        self._conn.execute(
            "INSERT INTO sessions (session_id, digest, identity, state) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (session_id) DO UPDATE SET state = excluded.state",
            (self._session_id, state.digest, state.identity, _to_json(state)),
        )
        self.state = state
