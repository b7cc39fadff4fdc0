"""Commitments to answers: the ledger proves what was answered without revealing it.

Each charge in a node's ledger records ``response_commitment``, a SHA-256 over
a per-answer random salt and the stored answer. The node sends the salt only to
the identity that asked (with the answer, and again on its replays). The asker
can later show an auditor the answer and salt and prove that this is what the
ledger paid for; anyone else reading an export (other coordinators, auditors)
learns nothing from the commitment, because without the 256-bit salt no guess
at the noisy values can be tested. (A bare hash of the answer could be brute
forced: every field of a stored answer but its noisy values is known from the
query, so a one-cell count has only a few thousand plausible answers.)
"""

from __future__ import annotations

import hashlib
import secrets

from tiaki.v1 import node_pb2 as pb

DOMAIN = b"tiaki-receipt-v1\x00"
SALT_BYTES = 32


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def commitment(salt: bytes, stored_answer: bytes) -> str:
    """Hex SHA-256 of the domain, the salt and the stored answer's bytes."""
    return hashlib.sha256(DOMAIN + salt + stored_answer).hexdigest()


def stored_answer_bytes(response: pb.QueryResponse) -> bytes:
    """The bytes a node stored (and committed to) for the answer ``response`` carries.

    A reply adds the budget after the charge, the replay flag and the salt to
    the stored answer; clearing them gives back what was committed.
    """
    stored = pb.QueryResponse()
    stored.CopyFrom(response)
    stored.ClearField("budget")
    stored.ClearField("replayed")
    stored.ClearField("commitment_salt")
    return stored.SerializeToString(deterministic=True)


def commitment_of(response: pb.QueryResponse) -> str:
    """The commitment the answering node's ledger records for ``response`` (its asker's copy)."""
    return commitment(bytes(response.commitment_salt), stored_answer_bytes(response))
