"""Ledger signing keys: Ed25519, one per node and one per coordinator.

A signing key vouches for a ledger export (its checkpoint, see
:mod:`tiaki.ledger_export`). It is separate from the TLS key on purpose: the
TLS certificate is renewed every year and may come from the NGO's own CA,
whereas an auditor pins a ledger key once and follows it for the life of the
ledger. The private key is a PKCS#8 PEM file written with mode 0600 and never
printed; the public key travels as text, ``ed25519:<base64 of 32 bytes>``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tiaki.files import write_atomic

PREFIX = "ed25519:"


class SigningKeyError(Exception):
    """A signing key or public key cannot be read or used."""


def _raw_public(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: ed25519.Ed25519PublicKey) -> str:
    return PREFIX + base64.b64encode(_raw_public(key)).decode("ascii")


@functools.lru_cache(maxsize=4096)  # a coordinator checks the same nodes' keys all day
def parse_public_key(text: str) -> ed25519.Ed25519PublicKey:
    """Read ``ed25519:<base64>``; :class:`SigningKeyError` says what is wrong with it."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise SigningKeyError(f"a public key is written 'ed25519:<base64>', not {text!r:.80}")
    try:
        raw = base64.b64decode(text[len(PREFIX) :], validate=True)
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{text!r:.80} is not a valid Ed25519 public key") from None


def checked_public_key(text: str) -> str:
    """``text`` if it is an ``ed25519:<base64>`` public key; ValueError (for config
    validators, which report it beside the key's name) if not."""
    try:
        parse_public_key(text)
    except SigningKeyError as exc:
        raise ValueError(str(exc)) from None
    return text


def key_id(public_text: str) -> str:
    """A short, stable name for a public key, for people to compare by eye."""
    return hashlib.sha256(public_text.encode("ascii", "replace")).hexdigest()[:16]


def verify_signature(public_text: str, message: bytes, signature: str) -> bool:
    """True only if ``signature`` (base64) is ``public_text``'s signature of ``message``."""
    try:
        key = parse_public_key(public_text)
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message)
    except (SigningKeyError, binascii.Error, ValueError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class SigningKey:
    """A loaded private signing key and where it lives."""

    path: Path
    private: ed25519.Ed25519PrivateKey

    @functools.cached_property
    def public_text(self) -> str:
        return public_key_text(self.private.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.public_text)

    def sign(self, message: bytes) -> str:
        """Base64 Ed25519 signature of ``message``."""
        return base64.b64encode(self.private.sign(message)).decode("ascii")


def create_signing_key(path: Path) -> SigningKey:
    """Write a new key to ``path`` (0600); refuses to replace an existing file."""
    path = Path(path)
    if path.exists():
        raise SigningKeyError(
            f"{path} already exists; a ledger key is never replaced silently (auditors pin it)"
        )
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, pem, 0o600)
    except OSError as exc:
        raise SigningKeyError(
            f"cannot write the signing key {path}: {exc.strerror or exc}"
        ) from None
    return SigningKey(path, private)


def load_signing_key(path: Path) -> SigningKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"{path}: no such signing key file") from None
    except OSError as exc:
        raise SigningKeyError(
            f"cannot read the signing key {path}: {exc.strerror or exc}"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: a ledger signing key must be Ed25519")
    return SigningKey(path, key)


def load_or_create_signing_key(path: Path) -> tuple[SigningKey, bool]:
    """The key at ``path``, creating it first if there is none; ``(key, created)``."""
    if Path(path).exists():
        return load_signing_key(path), False
    return create_signing_key(path), True
