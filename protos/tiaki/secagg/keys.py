"""X25519 key agreement and sealed node-to-node messages, for a coordinator in the middle.

Nodes never talk to each other: every message from one node to another (its
Shamir shares, in Bonawitz et al.'s ShareKeys round) is relayed by the
coordinator, which must be able neither to read it nor to alter, replay or
redirect it undetected. So each pair of nodes agrees a key by X25519 from the
public keys the coordinator relays (whose authenticity the protocol layer
establishes by signing them), and seals each message with ChaCha20-Poly1305
under it, binding the session, sender, recipient and round in the
associated data.

Keys are separated by purpose: one X25519 key pair per node and session gives
a sealing key and a pairwise mask seed that are unrelated to each other,
because HKDF derives each with its own ``info``.

A private key's raw 32 bytes are a field element of GF(2**255 - 19)
(:func:`generate` draws it so), because Bonawitz et al. Shamir-share the
private key the pairwise masks are agreed with: if its node drops out, the
coordinator rebuilds it (:func:`from_element`) and recomputes that node's
pairwise masks. X25519 clamps the bytes before use, so this costs nothing.
"""

from __future__ import annotations

import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tiaki.secagg.errors import SecureAggregationError
from tiaki.secagg.shamir import is_element, random_element

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
LABEL = "tiaki/secagg/v1"
# A purpose is one path segment of the HKDF info, so it cannot contain "/".
_PURPOSE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def from_element(element: int) -> X25519PrivateKey:
    """The private key whose raw bytes are ``element``, little-endian (RFC 7748's order)."""
    if not is_element(element):
        raise SecureAggregationError("a private key element must be in [0, 2**255 - 19)")
    return X25519PrivateKey.from_private_bytes(element.to_bytes(KEY_BYTES, "little"))


def generate() -> X25519PrivateKey:
    """A fresh private key whose raw bytes are a uniform field element, so it can be shared."""
    return from_element(random_element())


def private_element(key: X25519PrivateKey) -> int:
    """The field element a private key's raw bytes encode, to Shamir-share it.

    A key not made by :func:`generate` or :func:`from_element` may have raw
    bytes outside the field; it is refused rather than silently reduced, which
    would share a different key.
    """
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    element = int.from_bytes(raw, "little")
    if not is_element(element):
        raise SecureAggregationError("this private key's bytes are not a field element")
    return element


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key (or of a private key's public key), for the wire."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public(raw: bytes) -> X25519PublicKey:
    """A peer's public key from its 32 raw bytes."""
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        size = f"{len(raw)} bytes" if isinstance(raw, bytes) else type(raw).__name__
        raise SecureAggregationError(f"an X25519 public key is {KEY_BYTES} bytes, not {size}")
    return X25519PublicKey.from_public_bytes(raw)


def _check_index(index: object) -> int:
    if not is_element(index) or index == 0:
        raise SecureAggregationError(
            f"a node index is an integer in 1..2**255 - 20, not {index!r:.40}"
        )
    assert isinstance(index, int)
    return index


def agreed_key(
    private: X25519PrivateKey,
    peer_public_raw: bytes,
    session_id: bytes,
    purpose: str,
    me: int,
    peer: int,
) -> bytes:
    """The 32-byte key nodes ``me`` and ``peer`` share for ``purpose`` in this session.

    HKDF-SHA256 over their X25519 shared secret, salted with the session id
    and with info ``tiaki/secagg/v1/<purpose>/<lower index>/<higher index>``:
    both ends compute the same key, and a key of one session, purpose or pair
    says nothing about another. A peer key of low order (all-zero shared
    secret, which a hostile coordinator could substitute to fix the key) is
    refused.
    """
    low, high = sorted((_check_index(me), _check_index(peer)))
    if low == high:
        raise SecureAggregationError(f"node {me} agrees no key with itself")
    if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
        raise SecureAggregationError(
            f"a key purpose is a short lowercase name such as 'mask', not {purpose!r:.40}"
        )
    if not isinstance(session_id, bytes) or not session_id:
        raise SecureAggregationError("a session id is non-empty bytes")
    peer_public = load_public(peer_public_raw)
    try:
        shared = private.exchange(peer_public)
    except ValueError:  # OpenSSL refuses an all-zero result itself
        shared = bytes(KEY_BYTES)
    if shared == bytes(KEY_BYTES):
        raise SecureAggregationError(
            f"node {peer}'s public key is of low order: it gives no shared secret"
        )
    info = f"{LABEL}/{purpose}/{low}/{high}".encode("ascii")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=session_id, info=info).derive(
        shared
    )


def _check_key(key: object) -> ChaCha20Poly1305:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise SecureAggregationError(f"a sealing key is {KEY_BYTES} bytes")
    return ChaCha20Poly1305(key)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``nonce || ciphertext || tag``: ChaCha20-Poly1305 under ``key``, authenticating ``aad``.

    The 12-byte nonce is random. Each agreed key seals a handful of messages
    (one per round of one session), so a repeated nonce, which would break
    ChaCha20-Poly1305, has probability far below 2**-80.
    """
    cipher = _check_key(key)
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + cipher.encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output, only if it and ``aad`` are untouched."""
    cipher = _check_key(key)
    if not isinstance(sealed, bytes) or len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SecureAggregationError("a sealed message is shorter than its nonce and tag")
    try:
        return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise SecureAggregationError(
            "a sealed message failed authentication: altered, misdirected or under another key"
        ) from None


def message_aad(session_id: bytes, sender: int, recipient: int, round_name: str) -> bytes:
    """The associated data that binds a sealed message to its session, pair and round.

    Each field is a 4-byte big-endian length and its bytes (the label, the
    session id, each index as 32 bytes big-endian, the round name in UTF-8),
    so no two different messages have the same encoding and a message cannot
    be replayed into another session or round, nor turned back to its sender.
    """
    if not isinstance(session_id, bytes) or not session_id:
        raise SecureAggregationError("a session id is non-empty bytes")
    if _check_index(sender) == _check_index(recipient):
        raise SecureAggregationError(f"node {sender} sends no sealed message to itself")
    if not isinstance(round_name, str) or not round_name:
        raise SecureAggregationError("a round name is a non-empty string")
    fields = (
        f"{LABEL}/aad".encode("ascii"),
        session_id,
        sender.to_bytes(32, "big"),
        recipient.to_bytes(32, "big"),
        round_name.encode("utf-8"),
    )
    return b"".join(len(field).to_bytes(4, "big") + field for field in fields)
