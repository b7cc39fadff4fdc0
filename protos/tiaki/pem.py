"""Reading PEM certificates and private keys, with errors that never quote secrets.

The file-level half of :mod:`tiaki.certs`: a missing, unreadable, encrypted or
malformed file is a :class:`CertError` naming the file and what is wrong with
it; the text of an underlying parser exception is never echoed, since it could
quote key material.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


class CertError(Exception):
    """A certificate operation failed; the message says what and where, never secrets."""


def read_pem_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise CertError(f"{what} path is a directory, not a file: {path}") from None
    except PermissionError:
        raise CertError(f"cannot read {what} file {path}: permission denied") from None


def load_certificate(path: Path) -> x509.Certificate:
    return parse_certificate(read_pem_file(path, "certificate"), str(path))


def parse_certificate(data: bytes, where: str) -> x509.Certificate:
    if b"PRIVATE KEY-----" in data and b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertError(f"{where} holds a private key, not a certificate")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertError(f"{where} is not a PEM certificate (no BEGIN CERTIFICATE block)")
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError):
        raise CertError(f"{where} is not a valid PEM certificate (it does not parse)") from None


def load_private_key(path: Path) -> PrivateKeyTypes:
    return parse_private_key(read_pem_file(path, "private key"), path)


def parse_private_key(data: bytes, path: Path) -> PrivateKeyTypes:
    # Never echo the underlying exception: its text could quote key material.
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertError(
            f"{path} is an encrypted private key; tiaki needs an unencrypted key "
            "protected by file permissions (0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{path} is not a PEM private key (it does not parse)") from None


def check_key_matches(
    cert: x509.Certificate, cert_path: Path, key: PrivateKeyTypes, key_path: Path
) -> None:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise CertError(f"key {key_path} does not match certificate {cert_path}")


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
