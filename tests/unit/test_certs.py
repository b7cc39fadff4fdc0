"""tiaki.certs: a CA, node and coordinator certificates, checked by a real gRPC mTLS handshake."""

from __future__ import annotations

import hashlib
import os
import ssl
import stat
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tiaki.certs import (
    CertError,
    create_ca,
    describe,
    expires_within,
    fingerprint,
    identity_of,
    issue_coordinator,
    issue_node,
    renew,
    tls_files,
)

NODE = "ngo-a.tiaki.test"
COORD = "msd-coordinator"


@dataclass(frozen=True)
class Pki:
    root: Path
    ca_dir: Path
    node_crt: Path
    node_key: Path
    coord_crt: Path
    coord_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_dir = root / "ca"
    create_ca(ca_dir, "tiaki test CA")
    node_crt, node_key = issue_node(
        ca_dir, root / "node", NODE, dns=["localhost", NODE.upper()], ips=["127.0.0.1", "::1"]
    )
    coord_crt, coord_key = issue_coordinator(ca_dir, root / "coord", COORD)
    return Pki(root, ca_dir, node_crt, node_key, coord_crt, coord_key)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- issuing and describing


def test_ca_files_modes_and_description(pki: Pki) -> None:
    crt, key = pki.ca_dir / "ca.crt", pki.ca_dir / "ca.key"
    assert _mode(key) == 0o600
    assert _mode(crt) == 0o644
    info = describe(crt)
    assert (info.subject_cn, info.issuer_cn) == ("tiaki test CA", "tiaki test CA")
    assert info.is_ca and info.role == "ca"
    assert info.not_after - info.not_before > timedelta(days=3649)
    cert = _cert(crt)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()


def test_node_certificate(pki: Pki) -> None:
    info = describe(pki.node_crt)
    assert info.subject_cn == NODE
    assert info.issuer_cn == "tiaki test CA"
    assert info.dns_names == (NODE, "localhost")  # name first; case-duplicate dropped
    assert info.ip_addresses == ("127.0.0.1", "::1")
    assert info.role == "node" and not info.is_ca
    now = datetime.now(UTC)
    assert now - timedelta(minutes=10) < info.not_before < now - timedelta(minutes=4)
    assert abs(info.not_after - (info.not_before + timedelta(days=397))) < timedelta(seconds=1)
    assert _mode(pki.node_key) == 0o600
    assert _mode(pki.node_crt) == 0o644

    cert, ca = _cert(pki.node_crt), _cert(pki.ca_dir / "ca.crt")
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    cert.verify_directly_issued_by(ca)


def test_coordinator_certificate(pki: Pki) -> None:
    info = describe(pki.coord_crt)
    assert (info.subject_cn, info.dns_names, info.ip_addresses) == (COORD, (COORD,), ())
    assert info.role == "coordinator"
    eku = _cert(pki.coord_crt).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _cert(pki.coord_crt).serial_number != _cert(pki.node_crt).serial_number
    assert identity_of(pki.coord_crt.read_bytes()) == COORD


def test_fingerprint_matches_independent_computation(pki: Pki) -> None:
    pem = pki.node_crt.read_bytes()
    der = ssl.PEM_cert_to_DER_cert(pem.decode())  # stdlib, independent of tiaki
    expected = hashlib.sha256(der).hexdigest()
    assert fingerprint(pem) == expected
    assert describe(pki.node_crt).sha256 == expected
    assert expected == _cert(pki.node_crt).fingerprint(hashes.SHA256()).hex()


def test_exact_modes_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        crt, key = create_ca(tmp_path / "ca", "loose umask CA")
    finally:
        os.umask(old)
    assert (_mode(crt), _mode(key)) == (0o644, 0o600)


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    create_ca(ca_dir, "CA one")
    with pytest.raises(CertError, match="already exists"):
        create_ca(ca_dir, "CA two")
    assert describe(ca_dir / "ca.crt").subject_cn == "CA one"
    crt, _ = issue_node(ca_dir, tmp_path, "n1")
    first = describe(crt).sha256
    with pytest.raises(CertError, match=r"n1\.crt already exists"):
        issue_node(ca_dir, tmp_path, "n1")
    assert describe(crt).sha256 == first
    issue_node(ca_dir, tmp_path, "n1", force=True)
    assert describe(crt).sha256 != first
    with pytest.raises(CertError, match="overwrite the CA"):
        issue_coordinator(ca_dir, ca_dir, "ca", force=True)
    create_ca(ca_dir, "CA two", force=True)
    assert describe(ca_dir / "ca.crt").subject_cn == "CA two"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("name", ["", "../evil", "a b", "a/b", "-x", "x_y", "é", "a" * 65])
def test_invalid_names_refused(tmp_path: Path, name: str) -> None:
    create_ca(tmp_path, "CA")
    with pytest.raises(CertError, match="invalid name"):
        issue_node(tmp_path, tmp_path / "out", name)
    assert not (tmp_path / "out").exists()


def test_invalid_sans_and_parameters(tmp_path: Path) -> None:
    create_ca(tmp_path, "CA")
    with pytest.raises(CertError, match="invalid IP address"):
        issue_node(tmp_path, tmp_path, "n", ips=["300.1.1.1"])
    with pytest.raises(CertError, match="invalid DNS name"):
        issue_node(tmp_path, tmp_path, "n", dns=["bad name"])
    with pytest.raises(CertError, match="days"):
        issue_coordinator(tmp_path, tmp_path, "c", days=0)
    with pytest.raises(CertError, match="timezone-aware"):
        issue_coordinator(tmp_path, tmp_path, "c", not_before=datetime(2020, 1, 1))
    with pytest.raises(CertError, match="invalid CA name"):
        create_ca(tmp_path / "ca2", " padded ")
    crt, _ = issue_node(tmp_path, tmp_path, "n", dns=["*.ngo.test"], ips=["10.0.0.1"])
    assert describe(crt).dns_names == ("n", "*.ngo.test")


# ---------------------------------------------------------------- renew and expiry


def test_renew_keeps_name_sans_and_key(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    create_ca(ca_dir, "CA")
    crt, key = issue_node(ca_dir, tmp_path, "n1", dns=["alt.test"], ips=["10.1.2.3"], days=10)
    before, key_bytes, old_cert = describe(crt), key.read_bytes(), _cert(crt)
    assert renew(ca_dir, crt, key) == crt
    after, new_cert = describe(crt), _cert(crt)
    assert (after.subject_cn, after.dns_names, after.ip_addresses, after.role) == (
        before.subject_cn,
        before.dns_names,
        before.ip_addresses,
        before.role,
    )
    assert after.not_after > before.not_after + timedelta(days=300)
    assert after.sha256 != before.sha256
    assert key.read_bytes() == key_bytes
    assert new_cert.public_key() == old_cert.public_key()
    assert new_cert.serial_number != old_cert.serial_number
    assert identity_of(crt.read_bytes()) == "n1"
    assert _mode(crt) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca", "n1.crt", "n1.key"]


def test_renew_refusals(tmp_path: Path) -> None:
    create_ca(tmp_path / "ca", "CA")
    create_ca(tmp_path / "other", "Other CA")
    crt, key = issue_coordinator(tmp_path / "ca", tmp_path, "c1")
    _, other_key = issue_coordinator(tmp_path / "ca", tmp_path, "c2")
    with pytest.raises(CertError, match=r"key .*c2\.key does not match certificate .*c1\.crt"):
        renew(tmp_path / "ca", crt, other_key)
    with pytest.raises(CertError, match="was issued by CN='CA', not by the CA"):
        renew(tmp_path / "other", crt, key)
    with pytest.raises(CertError, match="is a CA certificate"):
        renew(tmp_path / "ca", tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key")


def test_expires_within_and_expired_issue(tmp_path: Path) -> None:
    create_ca(tmp_path, "CA")
    crt, _ = issue_node(tmp_path, tmp_path / "o", "soon", days=10)
    assert expires_within(crt, 30)
    assert not expires_within(crt, 5)
    old, _ = issue_coordinator(
        tmp_path, tmp_path / "o", "old", not_before=datetime.now(UTC) - timedelta(days=30), days=1
    )
    info = describe(old)
    assert info.not_after < datetime.now(UTC)
    assert expires_within(old, 0)


def test_leaf_never_outlives_its_ca(tmp_path: Path) -> None:
    create_ca(tmp_path, "short CA", days=30)
    crt, _ = issue_node(tmp_path, tmp_path, "n")
    assert describe(crt).not_after == describe(tmp_path / "ca.crt").not_after


# ---------------------------------------------------------------- errors


def test_missing_ca_key(tmp_path: Path) -> None:
    create_ca(tmp_path, "CA")
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CertError, match=r"CA key missing: .*ca\.key not found"):
        issue_node(tmp_path, tmp_path / "out", "n")
    with pytest.raises(CertError, match="CA directory not found"):
        issue_node(tmp_path / "nope", tmp_path / "out", "n")


def test_ca_key_that_does_not_match(tmp_path: Path) -> None:
    create_ca(tmp_path / "a", "A")
    create_ca(tmp_path / "b", "B")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(CertError, match="does not match") as err:
        issue_coordinator(tmp_path / "a", tmp_path, "c")
    assert "PRIVATE" not in str(err.value)


def test_garbage_and_missing_files(tmp_path: Path, pki: Pki) -> None:
    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"hello, not a certificate\n")
    with pytest.raises(CertError, match="not a PEM certificate"):
        describe(garbage)
    broken = tmp_path / "broken.crt"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertError, match="does not parse"):
        describe(broken)
    with pytest.raises(CertError, match="holds a private key, not a certificate") as err:
        describe(pki.coord_key)
    key_body = pki.coord_key.read_text().splitlines()[1]
    assert key_body not in str(err.value)
    with pytest.raises(CertError, match="certificate file not found"):
        describe(tmp_path / "missing.crt")
    with pytest.raises(CertError, match="not a PEM certificate"):
        fingerprint(b"\x00\x01")
    with pytest.raises(CertError, match="not a PEM private key"):
        renew(pki.ca_dir, pki.coord_crt, garbage)


def test_encrypted_key_refused(tmp_path: Path) -> None:
    create_ca(tmp_path, "CA")
    crt, key = issue_coordinator(tmp_path, tmp_path, "c")
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret-pass"),
        )
    )
    with pytest.raises(CertError, match="encrypted private key") as err:
        tls_files(crt, key, tmp_path / "ca.crt")
    assert "secret-pass" not in str(err.value)


def test_tls_files(pki: Pki) -> None:
    files = tls_files(pki.node_crt, pki.node_key, pki.ca_dir / "ca.crt")
    assert files.private_key == pki.node_key.read_bytes()
    assert "PRIVATE" not in repr(files)
    with pytest.raises(CertError, match="does not match"):
        tls_files(pki.node_crt, pki.coord_key, pki.ca_dir / "ca.crt")


# ---------------------------------------------------------------- a real gRPC mTLS handshake


class RecordingHealth(health.HealthServicer):  # type: ignore[misc]
    """The standard health service, remembering what TLS told the server about each caller."""

    def __init__(self) -> None:
        super().__init__()
        self.auth: list[dict[str, list[bytes]]] = []

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.auth.append(dict(context.auth_context()))
        return super().Check(request, context)


@contextmanager
def serving(cert: Path, key: Path, client_ca: Path) -> Iterator[tuple[int, RecordingHealth]]:
    files = tls_files(cert, key, client_ca)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = RecordingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [(files.private_key, files.cert_chain)],
        root_certificates=files.root_certificates,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None)


def check(
    port: int,
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    target: str | None = NODE,
) -> int:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
    if target is not None:
        options.append(("grpc.ssl_target_name_override", target))
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(response.status)


def refused(**kwargs: Any) -> None:
    """The TLS handshake fails: the call never connects (the server logs why)."""
    with pytest.raises(grpc.RpcError) as err:
        check(**kwargs)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def node_server(pki: Pki) -> Iterator[tuple[int, RecordingHealth]]:
    with serving(pki.node_crt, pki.node_key, pki.ca_dir / "ca.crt") as running:
        yield running


def test_mutual_tls_handshake(pki: Pki, node_server: tuple[int, RecordingHealth]) -> None:
    port, servicer = node_server
    ca = pki.ca_dir / "ca.crt"
    status = check(port, ca, cert=pki.coord_crt, key=pki.coord_key)
    assert status == health_pb2.HealthCheckResponse.SERVING
    auth = servicer.auth[-1]
    assert auth["x509_common_name"] == [COORD.encode()]
    assert auth["transport_security_type"] == [b"ssl"]
    # What the node sees of the peer pins to the same fingerprint and identity tiaki reports.
    (peer_pem,) = auth["x509_pem_cert"]
    assert fingerprint(peer_pem) == describe(pki.coord_crt).sha256
    assert identity_of(peer_pem) == COORD
    # The node's own cert carries its IP SAN, so no override is needed for 127.0.0.1.
    assert check(port, ca, cert=pki.coord_crt, key=pki.coord_key, target=None) == status


def test_renewed_client_keeps_its_identity(
    pki: Pki, tmp_path: Path, node_server: tuple[int, RecordingHealth]
) -> None:
    port, servicer = node_server
    crt, key = issue_coordinator(pki.ca_dir, tmp_path, "renewed-coordinator", days=2)
    renew(pki.ca_dir, crt, key)
    check(port, pki.ca_dir / "ca.crt", cert=crt, key=key)
    assert servicer.auth[-1]["x509_common_name"] == [b"renewed-coordinator"]


def test_handshake_refusals(
    pki: Pki, tmp_path: Path, node_server: tuple[int, RecordingHealth]
) -> None:
    port, servicer = node_server
    ca = pki.ca_dir / "ca.crt"
    calls = len(servicer.auth)
    # no client certificate at all
    refused(port=port, ca=ca)
    # a client certificate from another CA, with the very same name
    create_ca(tmp_path / "rogue", "rogue CA")
    rogue_crt, rogue_key = issue_coordinator(tmp_path / "rogue", tmp_path, COORD)
    refused(port=port, ca=ca, cert=rogue_crt, key=rogue_key)
    # an expired client certificate from the right CA
    expired_crt, expired_key = issue_coordinator(
        pki.ca_dir,
        tmp_path / "x",
        "expired",
        not_before=datetime.now(UTC) - timedelta(days=9),
        days=2,
    )
    refused(port=port, ca=ca, cert=expired_crt, key=expired_key)
    # the server is not the node the client expected
    refused(port=port, ca=ca, cert=pki.coord_crt, key=pki.coord_key, target="ngo-b.tiaki.test")
    # the client does not trust the node's CA
    refused(port=port, ca=tmp_path / "rogue" / "ca.crt", cert=pki.coord_crt, key=pki.coord_key)
    assert len(servicer.auth) == calls  # no refused caller ever reached the servicer


def test_expired_server_certificate_refused(pki: Pki, tmp_path: Path) -> None:
    crt, key = issue_node(
        pki.ca_dir, tmp_path, NODE, not_before=datetime.now(UTC) - timedelta(days=9), days=2
    )
    with serving(crt, key, pki.ca_dir / "ca.crt") as (port, _):
        refused(port=port, ca=pki.ca_dir / "ca.crt", cert=pki.coord_crt, key=pki.coord_key)


def _foreign_rsa_ca(directory: Path) -> None:
    """An NGO's own CA made elsewhere: RSA, no key identifiers, only ca.crt and ca.key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NGO A own CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir()
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_node_with_its_own_ca(pki: Pki, tmp_path: Path) -> None:
    """The node's server cert comes from the NGO's own CA; clients come from the ministry's."""
    own = tmp_path / "own-ca"
    _foreign_rsa_ca(own)
    crt, key = issue_node(own, tmp_path, NODE)
    assert describe(crt).issuer_cn == "NGO A own CA"
    with serving(crt, key, pki.ca_dir / "ca.crt") as (port, servicer):
        check(port, own / "ca.crt", cert=pki.coord_crt, key=pki.coord_key)
        assert servicer.auth[-1]["x509_common_name"] == [COORD.encode()]
        # a coordinator trusting only the ministry CA does not trust this node
        refused(port=port, ca=pki.ca_dir / "ca.crt", cert=pki.coord_crt, key=pki.coord_key)
