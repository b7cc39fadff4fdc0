"""The node's mutual-TLS credentials, reloaded when the files on disk change.

Replacing the certificate, key or client CA file is enough: the next TLS
handshake picks them up, with no restart and no dropped queries. A half-written
or mismatched set is refused (and logged) and the previous one stays in use.
"""

from __future__ import annotations

import logging
import threading

import grpc

from node.config import TlsSettings
from tiaki.certs import CertError, tls_files

log = logging.getLogger("tiaki.node.tls")


class TlsError(Exception):
    """The node's certificate material is missing or unreadable."""


def _configuration(tls: TlsSettings) -> object:
    try:
        files = tls_files(tls.cert, tls.key, tls.client_ca)
    except CertError as exc:
        raise TlsError(str(exc)) from None
    return grpc.ssl_server_certificate_configuration(
        [(files.private_key, files.cert_chain)], root_certificates=files.root_certificates
    )


def _stamp(tls: TlsSettings) -> tuple[int, ...]:
    stamps: list[int] = []
    for path in (tls.cert, tls.key, tls.client_ca):
        try:
            st = path.stat()
        except OSError:
            return ()
        stamps += [st.st_ino, st.st_mtime_ns, st.st_size]
    return tuple(stamps)


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Credentials that require a client certificate signed by ``client_ca``."""
    lock = threading.Lock()
    current = {"stamp": _stamp(tls)}
    initial = _configuration(tls)

    def fetch() -> object | None:
        stamp = _stamp(tls)
        with lock:
            if stamp == current["stamp"] or not stamp:
                return None
            try:
                configuration = _configuration(tls)
            except TlsError as exc:
                log.warning("certificate files changed but cannot be used yet: %s", exc)
                return None
            current["stamp"] = stamp
        log.info("certificates reloaded from %s", tls.cert.parent)
        return configuration

    return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=True)
