"""Requests and outcomes relayed by a hub, signed end to end (``tiaki/v1/hub.proto``).

A coordinator signs each envelope with its Ed25519 signing key, over all of
the envelope's bytes; a node signs each outcome with its ledger key, over all
of the outcome's bytes, naming the envelope it answers by hash. So a hub that
changes, swaps or invents one byte is caught by whoever reads it next, and
the only thing a hub can do unseen is delay or drop. Each signature is over a
domain-separation prefix first, so an envelope signature can never pass for an
outcome's, a ledger export's or a secure-sum message's.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from tiaki.errors import InvalidQueryError
from tiaki.signing import SigningKey, SigningKeyError, parse_public_key, verify_signature
from tiaki.v1 import hub_pb2 as hub

ENVELOPE_PREFIX = b"tiaki-envelope-v1\0"
OUTCOME_PREFIX = b"tiaki-outcome-v1\0"
NONCE_BYTES = 16
# The Node RPCs an envelope may stand for.
METHODS = frozenset(
    {
        "GetInfo",
        "GetBudget",
        "Plan",
        "Query",
        "ExportLedger",
        "SecureAdvertise",
        "SecureShareKeys",
        "SecureMaskedInput",
        "SecureConsistency",
        "SecureUnmask",
    }
)


class EnvelopeError(InvalidQueryError):
    """A relayed envelope or outcome is malformed, or its signature does not check."""


def work_id_of(signed: hub.SignedEnvelope) -> str:
    """The hub's id for an envelope: hex SHA-256 of its bytes (the same envelope, one id)."""
    return hashlib.sha256(signed.envelope).hexdigest()


def seal_envelope(
    key: SigningKey,
    *,
    node_id: str,
    method: str,
    payload: bytes,
    issued_at: int,
    not_after: int,
) -> hub.SignedEnvelope:
    """A signed envelope asking ``node_id`` to run ``method`` on ``payload``."""
    if method not in METHODS:
        raise EnvelopeError(f"no Node RPC is called {method!r}")
    envelope = hub.Envelope(
        node_id=node_id,
        method=method,
        payload=payload,
        issued_at=issued_at,
        not_after=not_after,
        signer_key=key.public_text,
        nonce=secrets.token_bytes(NONCE_BYTES),
    )
    data = envelope.SerializeToString(deterministic=True)
    return hub.SignedEnvelope(envelope=data, signature=key.sign(ENVELOPE_PREFIX + data))


@dataclass(frozen=True)
class OpenedEnvelope:
    """An envelope whose signature checked: what it asks, and who signed it."""

    envelope: hub.Envelope
    sha256: bytes  # of its bytes, as signed

    @property
    def signer_key(self) -> str:
        return str(self.envelope.signer_key)


def open_envelope(signed: hub.SignedEnvelope) -> OpenedEnvelope:
    """The envelope, if it is well formed and its signer's key signed exactly these bytes."""
    try:
        envelope = hub.Envelope.FromString(signed.envelope)
    except DecodeError:
        raise EnvelopeError("the envelope is not a tiaki.v1.Envelope") from None
    try:
        parse_public_key(envelope.signer_key)
    except SigningKeyError:
        raise EnvelopeError("the envelope names no valid signing key") from None
    if not verify_signature(
        envelope.signer_key, ENVELOPE_PREFIX + signed.envelope, signed.signature
    ):
        raise EnvelopeError("the envelope's signature does not check: it was altered or forged")
    if envelope.method not in METHODS or len(envelope.nonce) != NONCE_BYTES:
        raise EnvelopeError("the envelope asks for no Node RPC, or has no nonce")
    return OpenedEnvelope(envelope, hashlib.sha256(signed.envelope).digest())


def seal_outcome(key: SigningKey, outcome: hub.Outcome) -> hub.SignedOutcome:
    """The node's outcome, signed with its ledger key."""
    data = outcome.SerializeToString(deterministic=True)
    return hub.SignedOutcome(outcome=data, signature=key.sign(OUTCOME_PREFIX + data))


def open_outcome(
    signed: hub.SignedOutcome, node_key: str, envelope: hub.SignedEnvelope
) -> hub.Outcome:
    """The outcome, if ``node_key`` signed it and it answers exactly ``envelope``."""
    if not verify_signature(node_key, OUTCOME_PREFIX + signed.outcome, signed.signature):
        raise EnvelopeError(
            "the node's outcome is not signed by its pinned ledger key: it was altered or forged"
        )
    try:
        outcome = hub.Outcome.FromString(signed.outcome)
    except DecodeError:
        raise EnvelopeError("the outcome is not a tiaki.v1.Outcome") from None
    if outcome.envelope_sha256 != hashlib.sha256(envelope.envelope).digest():
        raise EnvelopeError("the outcome answers another request than the one sent")
    return outcome
