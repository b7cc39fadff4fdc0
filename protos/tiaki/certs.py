"""Certificates made easy: a small CA, node and coordinator certificates for mutual TLS.

Every key is ECDSA P-256 (what gRPC's TLS stack, BoringSSL, handles everywhere).
Key files are created mode 0600 from the first byte; certificate files are 0644.
Nothing secret is ever printed, returned or put in an error message.

Roles come from the extended key usage: a **node** certificate is a server
certificate (serverAuth), a **coordinator** certificate a client certificate
(clientAuth). Both carry CN = name and a DNS subjectAltName = name.

**Identity.** A node knows a peer by the subject common name of its verified
certificate, or, in SAN-only PKI, by its first DNS or URI subject alternative
name (:func:`identity_of`); a certificate naming neither is refused.
:func:`renew` keeps subject,
SANs, key usage and the key itself, so anything keyed by *name* keeps working;
the certificate's SHA-256 *fingerprint* changes on every issue, so fingerprint
pins must be updated after a renewal.

Nothing here assumes the tiaki CA beyond the ``ca.crt``/``ca.key`` pair in the
``ca_dir`` passed to the issuing functions: an NGO with its own CA gives its
node a certificate, key and the CA bundle it trusts for clients
(:func:`tls_files`), and every inspecting function works on any certificate.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tiaki.files import write_atomic
from tiaki.pem import CertError as CertError  # raised by every function here
from tiaki.pem import (
    check_key_matches,
    load_certificate,
    load_private_key,
    parse_certificate,
    parse_private_key,
    private_key_pem,
    read_pem_file,
)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CLOCK_SKEW = timedelta(minutes=5)
"""not_before is set this far in the past, so slightly slow peer clocks accept a new cert."""

Role = Literal["ca", "node", "coordinator", "unknown"]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DNS_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True)
class CertInfo:
    subject_cn: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    issuer_cn: str
    not_before: datetime
    not_after: datetime
    sha256: str
    """SHA-256 of the DER certificate, lowercase hex without colons."""
    is_ca: bool
    role: Role
    """"ca" if a CA; else "node" with serverAuth, "coordinator" with clientAuth only."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes ready for ``grpc.ssl_server_credentials`` / ``ssl_channel_credentials``."""

    cert_chain: bytes
    private_key: bytes = field(repr=False)
    root_certificates: bytes


# ---------------------------------------------------------------- public API


def create_ca(
    directory: Path, name: str, *, days: int = 3650, force: bool = False
) -> tuple[Path, Path]:
    """Create a CA (CN = ``name``): writes ``ca.crt`` (0644) and ``ca.key`` (0600)."""
    name = _check_ca_name(name)
    _check_days(days)
    directory = Path(directory)
    crt_path, key_path = directory / CA_CERT, directory / CA_KEY
    _refuse_existing((crt_path, key_path), force)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _make_dir(directory, 0o700)
    write_atomic(key_path, private_key_pem(key), 0o600)
    write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt_path, key_path


def issue_node(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = 397,
    not_before: datetime | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Issue a node (server, serverAuth) certificate → ``out_dir/name.crt`` and ``name.key``.

    SANs: DNS ``name`` first, then ``dns`` and ``ips``. ``not_before`` (timezone-aware)
    defaults to a few minutes ago; not_after = not_before + ``days``, capped at the CA's
    own expiry. A past ``not_before`` with few ``days`` gives an expired cert (for tests).
    """
    sans = _sans(name, dns, ips)
    return _issue(
        ca_dir, out_dir, name, sans, ExtendedKeyUsageOID.SERVER_AUTH, days, not_before, force
    )


def issue_coordinator(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    *,
    days: int = 397,
    not_before: datetime | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Issue a coordinator (client, clientAuth) certificate; CN and DNS SAN = ``name``."""
    sans = _sans(name, (), ())
    return _issue(
        ca_dir, out_dir, name, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days, not_before, force
    )


def describe(cert_path: Path) -> CertInfo:
    """What a certificate file says (the first certificate if the file holds a chain)."""
    cert = load_certificate(Path(cert_path))
    is_ca = _basic_constraints_ca(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
        ip_addresses = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns_names, ip_addresses = (), ()
    return CertInfo(
        subject_cn=_cn(cert.subject),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        issuer_cn=_cn(cert.issuer),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=_fingerprint(cert),
        is_ca=is_ca,
        role=_role(cert, is_ca),
    )


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the (first) certificate's DER encoding, lowercase hex without colons."""
    return _fingerprint(parse_certificate(cert_pem, "the given data"))


def identity_of(cert_pem: bytes) -> str:
    """The identity a node gives a peer: the certificate's subject CN, else its first DNS
    or URI subject alternative name.

    The node applies exactly this to the certificate the TLS handshake verified, and a
    coordinator to its own certificate, so both sides name a party the same way. It
    survives :func:`renew`; the fingerprint does not. A certificate with neither (an empty
    subject, or one with only ``O=``, and no DNS or URI name) names nobody:
    :class:`CertError`.
    """
    cert = parse_certificate(cert_pem, "the given data")
    cn = _cn(cert.subject)
    if cn:
        return cn
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    for general in san:
        if isinstance(general, x509.DNSName | x509.UniformResourceIdentifier) and general.value:
            return str(general.value)
    raise CertError(
        "the certificate has no subject common name (CN) and no DNS or URI subject "
        "alternative name, so it names no identity"
    )


def renew(ca_dir: Path, cert_path: Path, key_path: Path, *, days: int = 397) -> Path:
    """Re-issue ``cert_path`` from the CA in ``ca_dir``, replacing it atomically.

    Keeps subject, SANs, extended key usage and the key (``key_path`` is only read and
    must match the certificate). The new certificate has a new serial, a new validity
    window and therefore a new fingerprint. CA certificates are not renewed here.
    """
    _check_days(days)
    cert_path, key_path = Path(cert_path), Path(key_path)
    old = load_certificate(cert_path)
    if _basic_constraints_ca(old):
        raise CertError(
            f"{cert_path} is a CA certificate; renew() only re-issues leaf certificates"
        )
    key = load_private_key(key_path)
    check_key_matches(old, cert_path, key, key_path)
    ca_cert, ca_key, ca_crt_path = _load_ca(Path(ca_dir))
    if old.issuer != ca_cert.subject:
        raise CertError(
            f"{cert_path} was issued by CN={_cn(old.issuer)!r}, not by the CA in {ca_crt_path} "
            f"(CN={_cn(ca_cert.subject)!r})"
        )
    try:
        eku = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertError(
            f"{cert_path} has no extended key usage or subjectAltName to keep; "
            "issue a new certificate instead"
        ) from None
    cert = _build_leaf(old.subject, old.public_key(), ca_cert, ca_key, san, eku, days, None)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def expires_within(cert_path: Path, days: int) -> bool:
    """True if the certificate is expired or expires within ``days`` days from now."""
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 36_500:
        raise CertError(f"days must be a whole number from 0 to 36500, not {days!r}")
    return load_certificate(Path(cert_path)).not_valid_after_utc <= _now() + timedelta(days=days)


def tls_files(cert_path: Path, key_path: Path, ca_path: Path) -> TlsFiles:
    """Read and check one party's TLS material for gRPC, with clear errors instead of
    gRPC's opaque ones: the cert parses, the key matches it, and the CA file holds at
    least one certificate (a bundle of several trusted CAs is fine).
    """
    cert_path, key_path, ca_path = Path(cert_path), Path(key_path), Path(ca_path)
    cert_pem = read_pem_file(cert_path, "certificate")
    cert = parse_certificate(cert_pem, str(cert_path))
    key_pem = read_pem_file(key_path, "private key")
    check_key_matches(cert, cert_path, parse_private_key(key_pem, key_path), key_path)
    ca_pem = read_pem_file(ca_path, "CA certificate")
    parse_certificate(ca_pem, str(ca_path))
    return TlsFiles(cert_chain=cert_pem, private_key=key_pem, root_certificates=ca_pem)


# ---------------------------------------------------------------- internals


def _now() -> datetime:
    return datetime.now(UTC)


def _issue(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    sans: x509.SubjectAlternativeName,
    usage: x509.ObjectIdentifier,
    days: int,
    not_before: datetime | None,
    force: bool,
) -> tuple[Path, Path]:
    _check_days(days)
    if not_before is not None and not_before.tzinfo is None:
        raise CertError("not_before must be timezone-aware (e.g. datetime.now(UTC))")
    ca_cert, ca_key, ca_crt_path = _load_ca(Path(ca_dir))
    out_dir = Path(out_dir)
    crt_path, key_path = out_dir / f"{name}.crt", out_dir / f"{name}.key"
    ca_files = {ca_crt_path.resolve(), (ca_crt_path.parent / CA_KEY).resolve()}
    if {crt_path.resolve(), key_path.resolve()} & ca_files:
        raise CertError(f"name {name!r} would overwrite the CA's own files in {out_dir}")
    _refuse_existing((crt_path, key_path), force)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    eku = x509.ExtendedKeyUsage([usage])
    cert = _build_leaf(subject, key.public_key(), ca_cert, ca_key, sans, eku, days, not_before)
    _make_dir(out_dir, 0o755)
    write_atomic(key_path, private_key_pem(key), 0o600)
    write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt_path, key_path


def _build_leaf(
    subject: x509.Name,
    public: CertificatePublicKeyTypes,
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    sans: x509.SubjectAlternativeName,
    eku: x509.ExtendedKeyUsage,
    days: int,
    not_before: datetime | None,
) -> x509.Certificate:
    start = (_now() - CLOCK_SKEW) if not_before is None else not_before.astimezone(UTC)
    end = min(start + timedelta(days=days), ca_cert.not_valid_after_utc)
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(eku, critical=False)
        .add_extension(sans, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, _sign_hash(ca_key))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _sign_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()  # P-256 and RSA (the only other CA keys _load_ca accepts)


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes, Path]:
    if not ca_dir.is_dir():
        raise CertError(f"CA directory not found: {ca_dir}")
    crt_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    cert = load_certificate(crt_path)
    if not key_path.exists():
        raise CertError(
            f"CA key missing: {key_path} not found; issuing needs the CA's private key "
            "(run this where the CA key is kept)"
        )
    if not _basic_constraints_ca(cert):
        raise CertError(f"{crt_path} is not a CA certificate (basicConstraints CA is not set)")
    if cert.not_valid_after_utc <= _now():
        raise CertError(f"the CA certificate {crt_path} expired on {cert.not_valid_after_utc}")
    key = load_private_key(key_path)
    check_key_matches(cert, crt_path, key, key_path)
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise CertError(f"{key_path}: unsupported CA key type; use ECDSA, RSA or Ed25519")
    return cert, key, crt_path


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    if force:
        return
    for path in paths:
        if path.exists():
            raise CertError(f"{path} already exists; use force=True (--force) to replace it")


def _make_dir(directory: Path, mode: int) -> None:
    try:
        directory.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"cannot create the folder {directory}: {exc.strerror or exc}") from None


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36_500:
        raise CertError(f"days must be a whole number from 1 to 36500, not {days!r}")


def _check_ca_name(name: str) -> str:
    if not (0 < len(name) <= 64) or not name.isprintable() or name != name.strip():
        raise CertError(
            f"invalid CA name {name!r}: use 1 to 64 printable characters, "
            "without leading or trailing spaces"
        )
    return name


def _sans(name: str, dns: Sequence[str], ips: Sequence[str]) -> x509.SubjectAlternativeName:
    if len(name) > 64 or not _NAME_RE.fullmatch(name):
        raise CertError(
            f"invalid name {name!r}: use a host name of letters, digits, '-' and '.' "
            "(at most 64 characters); it becomes the CN, a DNS name and a file name"
        )
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for d in (name, *dns):
        if len(d) > 253 or not _DNS_RE.fullmatch(d):
            raise CertError(f"invalid DNS name {d!r}")
        if d.lower() not in seen:
            seen.add(d.lower())
            names.append(x509.DNSName(d))
    for ip in ips:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise CertError(f"invalid IP address {ip!r}") from None
        if str(address) not in seen:
            seen.add(str(address))
            names.append(x509.IPAddress(address))
    return x509.SubjectAlternativeName(names)


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _basic_constraints_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _role(cert: x509.Certificate, is_ca: bool) -> Role:
    if is_ca:
        return "ca"
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return "unknown"
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:
        return "node"
    if ExtendedKeyUsageOID.CLIENT_AUTH in usages:
        return "coordinator"
    return "unknown"
