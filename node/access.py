"""Who is asking, and may they? Decided before any work is done, on every call.

Under TLS the caller's identity comes from the certificate the handshake
verified and from nothing else: its subject common name, else its first DNS or
URI subject alternative name (:func:`tiaki.certs.identity_of`, the same rule a
coordinator applies to its own certificate), with its SHA-256 fingerprint. A
verified certificate that names no identity is refused, whatever the request
claims. A name a coordinator writes into a request (the ``tiaki-coordinator``
metadata) is only ever recorded as a claim, except in ``--insecure``
development mode, where there is no certificate and the claim stands in (the
node says so in its log).

The allowed coordinators are read from the policy in force at each call, so a
grant withdrawn by a policy reload is refused on connections already open.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import grpc

from node.config import AuditorGrant, CoordinatorGrant, Policy
from tiaki.certs import CertError, identity_of
from tiaki.errors import BusyError, PolicyViolationError
from tiaki.metadata import IDENTITY_METADATA_KEY

log = logging.getLogger("tiaki.node.access")


ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    identity: str
    fingerprint: str | None  # sha256 of the verified certificate, hex
    verified: bool  # True when the identity comes from a verified certificate
    # Set for work relayed by a hub: the key whose signature on the envelope checked.
    # Such a caller is admitted only by a grant naming that key.
    signing_key: str | None = None


def _first(auth: dict[str, list[bytes]], key: str) -> str | None:
    values = auth.get(key)
    return values[0].decode("utf-8", "replace") if values else None


@lru_cache(maxsize=1024)
def _certificate_identity(pem: str) -> tuple[str | None, str]:
    """(identity or None, fingerprint) of a verified peer certificate; cached per certificate."""
    der = ssl.PEM_cert_to_DER_cert(pem)
    fingerprint = hashlib.sha256(der).hexdigest()
    try:
        return identity_of(pem.encode("ascii")), fingerprint
    except (CertError, ValueError):
        return None, fingerprint


def caller_of(context: grpc.ServicerContext) -> Caller:
    """The caller of this call; refuses (PERMISSION_DENIED) a TLS peer that names nobody.

    Work relayed by a hub carries its caller already: the signer of its envelope
    (``node.hub_link``), never the hub.
    """
    relayed = getattr(context, "relayed_caller", None)
    if isinstance(relayed, Caller):
        return relayed
    auth = context.auth_context()
    if _first(auth, "transport_security_type") == "ssl":
        pem = _first(auth, "x509_pem_cert")
        identity, fingerprint = _certificate_identity(pem) if pem else (None, None)
        if identity is None:
            log.warning(
                "refused a caller whose verified certificate (fingerprint %s) has no common "
                "name and no DNS or URI name",
                fingerprint or "-",
                extra={"verified": True, "fingerprint": fingerprint, "outcome": "refused"},
            )
            raise PolicyViolationError(
                "your certificate names no identity (no subject common name and no DNS or URI "
                "subject alternative name); this node identifies callers by their certificate "
                "alone, so ask your CA for one that names you"
            )
        return Caller(identity, fingerprint, verified=True)
    # Plaintext: only ever on loopback, for --insecure development runs.
    for key, value in context.invocation_metadata():
        if key == IDENTITY_METADATA_KEY and isinstance(value, str):
            claim = value.strip()
            if 0 < len(claim) <= 128 and claim.isprintable():
                return Caller(claim, None, verified=False)
    return Caller(ANONYMOUS, None, verified=False)


def _names(grant: CoordinatorGrant | AuditorGrant, caller: Caller) -> bool:
    """Does the policy entry name this caller, by certificate identity or fingerprint?

    A caller relayed by a hub is named only by the signing key in a coordinator's grant.
    """
    if caller.signing_key is not None:
        return isinstance(grant, CoordinatorGrant) and grant.signing_key == caller.signing_key
    by_name = grant.identity is not None and grant.identity == caller.identity
    by_print = (
        grant.normalised_fingerprint is not None
        and caller.fingerprint == grant.normalised_fingerprint
    )
    return by_name or by_print


class Gatekeeper:
    """Applies the policy's allowed coordinators and auditors, and per-identity concurrency.

    ``policy`` is called on every admission, so the grants are always those of
    the policy in force (a reload takes effect at the next call).
    """

    def __init__(self, policy: Callable[[], Policy], max_concurrent_per_identity: int) -> None:
        self._policy = policy
        self._limit = max_concurrent_per_identity
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}

    def admit(
        self, caller: Caller, what: str, *, auditors: bool = False, kind: str | None = None
    ) -> CoordinatorGrant | None:
        """The caller's grant, or PERMISSION_DENIED (logged, nothing spent).

        With ``auditors``, the policy's auditors are let in too (with no grant:
        they may read the node's info, budget and ledger, never ask a query).
        """
        policy = self._policy()
        if not policy.coordinators and not caller.verified:
            return None  # --insecure development without a list: every claim is let in
        for grant in policy.coordinators:
            if _names(grant, caller):
                return grant
        if auditors and any(_names(auditor, caller) for auditor in policy.auditors):
            return None
        log.warning(
            "refused %s from %s (%s, fingerprint %s): not an allowed coordinator",
            what,
            caller.identity,
            "verified certificate" if caller.verified else "unverified claim",
            caller.fingerprint or "-",
            extra={
                "identity": caller.identity,
                "verified": caller.verified,
                "fingerprint": caller.fingerprint,
                "kind": kind,
                "outcome": "refused",
            },
        )
        raise PolicyViolationError(
            f"this node does not accept requests from {caller.identity!r}; ask the NGO to add "
            "your coordinator identity to its policy"
        )

    @contextmanager
    def slot(self, caller: Caller) -> Iterator[None]:
        """Hold one of the caller's concurrent-query slots for the duration."""
        with self._lock:
            current = self._in_flight.get(caller.identity, 0)
            if current >= self._limit:
                raise BusyError(caller.identity, current)
            self._in_flight[caller.identity] = current + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[caller.identity] -= 1
